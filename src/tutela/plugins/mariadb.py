"""`MariaDB::Server` and `MariaDB::Database`: logical dumps with `mariadb-dump
--single-transaction`, started inside the prepare window and streamed into the bank.

MariaDB cannot hand a snapshot from one connection to another (PostgreSQL can), so the dump
tool's own transaction is the snapshot.  The hooks place that transaction where it belongs:

- Server `on_prepare_begin`: check the client tools against the server version (before any
  database's hook runs, so a mismatch fails before anything is dumped) and open the window.
  With `global_read_lock: true` it also takes `FLUSH TABLES WITH READ LOCK` on a connection
  kept on the operation object: writers wait from here on.
- Database `on_prepare_finish`: start `mariadb-dump --single-transaction` and wait for its
  first bytes.  mariadb-dump writes nothing to its (pipe) stdout before it has run
  `START TRANSACTION WITH CONSISTENT SNAPSHOT`, so when the first block arrives the
  snapshot exists (`snapshot_at`).  The process then waits on the full pipe, transaction open.
- Server `on_prepare_finish`: every database's snapshot exists now: `UNLOCK TABLES` (when
  locked) and close the window.  With the global read lock, all databases of the server are
  consistent with each other, and writers waited only for the dumps to start, not to finish.
- Database `on_main`: stream the rest of the dump through `save_stream`.  Server `on_main`:
  users and grants (`mariadb-dump --system=users --insert-ignore`).
- `on_abort`: kill a dump still running; release the global read lock if it is still held.

Restore: the server's `on_prepare_begin` replays users and grants first when asked
(`restore_roles: true`; users that exist are kept: `CREATE USER IF NOT EXISTS`); a
database's `on_prepare_begin` refuses a non-empty target early, and `on_main` (re)creates the
database with its saved character set and collation and streams the dump into the `mariadb`
client's stdin.

Config section `[mariadb]`:
  servers            one per line: `host=127.0.0.1 port=3306 user=root` (also `socket=`,
                     `password=`)
  password_file      a file whose first line is the password (never on a command line: the
                     client tools get it through a private option file)
  bin_dir            folder of mariadb-dump and mariadb (default: PATH)
  include_databases, exclude_databases   glob patterns filtering a server's databases
Resource ids: a server is `HOST:PORT`, a database `HOST:PORT/DBNAME`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from tutela.datapath import open_stream, save_stream
from tutela.errors import ResourceError, TutelaError
from tutela.plugins import dbutil
from tutela.plugins.dbutil import (
    OutputStream,
    feed_process,
    parse_keyvalue,
    read_password_file,
    redact,
    run_tool,
    save_dump,
)

SERVER = "MariaDB::Server"
DATABASE = "MariaDB::Database"
SECTION = "mariadb"
LOCK_WAIT_SECONDS = 60
SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})

SERVER_OPTIONS_SCHEMA = dbutil.object_schema(
    users={
        "type": "boolean",
        "default": True,
        "description": "Save users and grants (mariadb-dump --system=users).",
    },
    global_read_lock={
        "type": "boolean",
        "default": False,
        "description": "Hold FLUSH TABLES WITH READ LOCK from prepare_begin to "
        "prepare_finish so every database's dump starts from the same point.",
    },
)
SERVER_RESTORE_SCHEMA = dbutil.restore_roles_schema(
    "Replay saved users and grants first (existing users are kept)."
)
DATABASE_OPTIONS_SCHEMA = dbutil.object_schema(
    ignore_tables={
        "type": "array",
        "items": {"type": "string"},
        "description": "Tables (names within the database) left out of the dump.",
    },
)
DATABASE_RESTORE_SCHEMA = dbutil.database_restore_schema(64)
SERVER_SAVED_INFO_SCHEMA = dbutil.server_saved_info_schema(
    global_read_lock={"type": "boolean"},
    users={"type": ["object", "null"]},
)
DATABASE_SAVED_INFO_SCHEMA = dbutil.database_saved_info_schema(
    dump_version={"type": "string"},
    character_set={"type": "string"},
    collation={"type": "string"},
    tables={"type": "integer"},
)


def _pymysql():
    return dbutil.import_driver("pymysql", "MariaDB", "PyMySQL (pip install PyMySQL)")


def split_database_id(resource_id: str) -> tuple[str, str]:
    return dbutil.split_database_id(resource_id, DATABASE)


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def version_of(text: str) -> tuple[int, int]:
    """(major, minor) of `10.11.19-MariaDB...` or of `mariadb-dump Ver 10.19 Distrib 10.11.19`."""
    m = re.search(r"Distrib (\d+)\.(\d+)", text) or re.search(r"(\d+)\.(\d+)", text)
    if not m:
        raise TutelaError(f"cannot read a version number from {text.strip()!r}")
    return int(m.group(1)), int(m.group(2))


class ServerConf(dbutil.DatabaseServer):
    def __init__(self, line: str, password_file: str | None, bin_dir: str | None):
        try:
            params = parse_keyvalue(line)
        except ValueError as exc:
            raise TutelaError(str(exc)) from None
        unknown = set(params) - {"host", "port", "user", "password", "socket"}
        if unknown:
            raise TutelaError(f"{redact(line)!r}: unknown key(s) {', '.join(sorted(unknown))}")
        self.host = params.get("host") or "localhost"
        self.port = int(params.get("port") or 3306)
        self.user = params.get("user") or "root"
        self.socket = params.get("socket")
        self._password = params.get("password")
        self.password_file = password_file
        self.bin_dir = bin_dir
        self.id = f"{self.host}:{self.port}"
        self.shown = redact(line)

    @property
    def password(self) -> str | None:
        if self._password is not None:
            return self._password
        if self.password_file:
            return read_password_file(self.password_file)
        return None

    def connect(self, database: str | None = None, autocommit: bool = True):
        pymysql = _pymysql()
        kwargs: dict[str, Any] = {
            "user": self.user,
            "password": self.password or "",
            "database": database,
            "autocommit": autocommit,
            "connect_timeout": 10,
            "charset": "utf8mb4",
        }
        if self.socket:
            kwargs["unix_socket"] = self.socket
        else:
            kwargs.update(host=self.host, port=self.port)
        try:
            return pymysql.connect(**kwargs)
        except pymysql.Error as exc:
            raise TutelaError(
                f"cannot connect to MariaDB {self.id} (database {database!r}, {self.shown}): "
                f"{redact(str(exc))}"
            ) from None

    def query(self, sql: str, args: Any = None, database: str | None = None) -> list[tuple]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    @contextlib.contextmanager
    def client_args(self) -> Iterator[list[str]]:
        """Connection arguments for a client tool; a password goes into a private option
        file (mode 0600, removed afterwards), never onto the command line."""
        password = self.password
        path = None
        args: list[str] = []
        if password is not None:
            fd, path = tempfile.mkstemp(prefix="tutela-my-", suffix=".cnf")
            with os.fdopen(fd, "w") as fh:
                escaped = password.replace("\\", "\\\\").replace('"', '\\"')
                fh.write(f'[client]\npassword="{escaped}"\n')
            args.append(f"--defaults-extra-file={path}")
        if self.socket:
            args += [f"--socket={self.socket}"]
        else:
            args += [f"--host={self.host}", f"--port={self.port}", "--protocol=TCP"]
        args.append(f"--user={self.user}")
        try:
            yield args
        finally:
            if path and os.path.exists(path):
                os.unlink(path)


class MariaDBConfig(dbutil.DatabaseConfig):
    product = "MariaDB"
    section = SECTION
    bin_dir_option = "bin_dir"
    server_type = SERVER
    database_type = DATABASE
    server_class = ServerConf
    system_databases = SYSTEM_SCHEMAS

    def _check_tool(self, server: ServerConf, tool: str) -> tuple[str, str]:
        """Refuse client tools older (major.minor) than the server."""
        version = server.query("SELECT VERSION()")[0][0]
        banner = run_tool([server.tool(tool), "--version"], what=tool).strip()
        client = version_of(banner)
        if client < version_of(version):
            raise TutelaError(
                f"{tool} is from MariaDB {client[0]}.{client[1]} but {server.id} runs "
                f"{version}: the client tools must be of the server's version or newer; "
                f"set [{SECTION}] bin_dir to a newer client's folder"
            )
        return version, banner


class MariaDBServerProtectable(dbutil.ServerProtectable):
    config_class = MariaDBConfig


class MariaDBDatabaseProtectable(dbutil.DatabaseProtectable):
    """A server's databases, system schemas and filtered-out names left out."""

    config_class = MariaDBConfig

    @staticmethod
    def _names(server: ServerConf) -> list[str]:
        return sorted(r[0] for r in server.query("SHOW DATABASES"))


# -- protect ------------------------------------------------------------------------------


class ProtectServer(dbutil.ProtectServerBase):
    def __init__(self, db: MariaDBConfig):
        super().__init__(db)
        self.lock_conn: Any = None

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        server = self.db.server(resource.id)
        version, _ = self.db.check_tools(server, "mariadb-dump")
        lock = bool(parameters.get("global_read_lock", False))
        if lock:
            self.lock_conn = server.connect()
            try:
                with self.lock_conn.cursor() as cur:
                    # FTWRL waits for running statements; never let it (and every writer
                    # queued behind it) wait longer than this.
                    cur.execute("SET SESSION lock_wait_timeout = %s", (LOCK_WAIT_SECONDS,))
                    cur.execute("FLUSH TABLES WITH READ LOCK")
            except Exception as exc:
                self.lock_conn.close()
                self.lock_conn = None
                raise TutelaError(
                    f"{resource.key}: FLUSH TABLES WITH READ LOCK failed (a long statement "
                    f"may hold tables for more than {LOCK_WAIT_SECONDS} s): {exc}"
                ) from None
        self.open_window(checkpoint, server, version, global_read_lock=lock)

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs):
        # Every database's dump has its snapshot by now: let writers go.
        self._unlock()
        super().on_prepare_finish(checkpoint, context, resource, parameters, **kwargs)

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        server = self.db.server(resource.id)
        ref = None
        if parameters.get("users", True):
            with server.client_args() as conn_args:
                dump = OutputStream(
                    [server.tool("mariadb-dump"), *conn_args, "--system=users", "--insert-ignore"],
                    what=f"mariadb-dump --system=users of {server.id}",
                )
                ref = save_dump(checkpoint, context, "users", dump)
        checkpoint.bank_section.put_json("metadata", {**self.info, "users": ref})

    def on_abort(self, checkpoint, context, resource, parameters, error=None, **kwargs):
        self._unlock()

    def _unlock(self) -> None:
        conn, self.lock_conn = self.lock_conn, None
        if conn is not None:
            try:
                with conn.cursor() as cur:
                    cur.execute("UNLOCK TABLES")
            finally:
                conn.close()


class ProtectDatabase(dbutil.ProtectDatabaseBase):
    dump_tool = "mariadb-dump"

    def __init__(self, db: MariaDBConfig):
        super().__init__(db)
        self._options: contextlib.ExitStack | None = None

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs):
        server, name = self.db.locate(resource.id)
        version, banners = self.db.check_tools(server, "mariadb-dump")
        rows = server.query(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME, "
            "(SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
            " WHERE TABLE_SCHEMA = %s), "
            "(SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s) "
            "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            (name, name, name),
        )
        if not rows:
            raise ResourceError(f"{resource.key}: the database no longer exists")
        charset, collation, size, tables = rows[0]
        self._options = contextlib.ExitStack()
        conn_args = self._options.enter_context(server.client_args())
        args = [
            server.tool("mariadb-dump"),
            *conn_args,
            "--single-transaction",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--quick",
        ]
        args += [f"--ignore-table={name}.{t}" for t in parameters.get("ignore_tables", [])]
        args += ["--", name]
        self.dump = OutputStream(args, what=f"mariadb-dump of {resource.id}")
        # Its first output comes after START TRANSACTION WITH CONSISTENT SNAPSHOT.
        self.dump.first_block()
        self.info = {
            "server": server.id,
            "database": name,
            "server_version": version,
            "dump_version": banners["mariadb-dump"],
            "character_set": charset,
            "collation": collation,
            "size_bytes": int(size),
            "tables": int(tables),
            "snapshot_at": time.time(),
        }

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        if self.dump is None:
            raise TutelaError(f"{resource.key}: no dump was started in prepare_finish")
        try:
            ref = save_stream(checkpoint, context, "dump", self.dump)
        finally:
            self._stop()
        checkpoint.bank_section.put_json("metadata", {**self.info, "stream": ref})

    def on_abort(self, checkpoint, context, resource, parameters, error=None, **kwargs):
        self._stop()

    def _stop(self) -> None:
        if self.dump is not None:
            self.dump.kill()
            self.dump = None
        if self._options is not None:
            self._options.close()
            self._options = None


# -- restore -------------------------------------------------------------------------------


class RestoreServer(dbutil.RestoreServerBase):
    """Users and grants before databases: the parent's prepare_begin runs first."""

    tool = "mariadb"
    saved_key = "users"
    what = "users"

    def replay(self, checkpoint, context, resource, server: ServerConf, ref) -> None:
        existing = {(u, h) for u, h in server.query("SELECT User, Host FROM mysql.user")}
        kept: set[str] = set()
        with server.client_args() as conn_args:
            lines = feed_process(
                [server.tool("mariadb"), *conn_args],
                _new_users_only(open_stream(checkpoint, context, ref), existing, kept),
                what=f"mariadb (users of {resource.id})",
            )
        errors = [line for line in lines if line.startswith("ERROR")]
        if errors:
            raise TutelaError(f"{resource.key}: restoring users failed: " + " | ".join(errors[:5]))
        if kept:
            context.progress.message(
                f"{resource.key}: {len(kept)} user(s) already existed and were kept as they "
                "are: " + ", ".join(sorted(kept)[:10])
            )


_USER_RE = re.compile(
    r"(?:\bTO|\bFOR|^/\*!\d+ ALTER USER|^ALTER USER)\s+[`']((?:[^`']|``)*)[`']@[`']([^`']*)[`']"
)


def _new_users_only(
    blocks: Iterator[bytes], existing: set[tuple[str, str]], kept: set[str]
) -> Iterator[bytes]:
    """The users dump without the grants of users that already exist here: their
    `CREATE USER IF NOT EXISTS` is a no-op, and their grants and defaults stay as they are
    (replaying them could change a live account, and needs rights the restorer may lack)."""
    pending = b""
    for block in blocks:
        pending += block
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield _filter_line(line, existing, kept) + b"\n"
    if pending:
        yield _filter_line(pending, existing, kept)


def _filter_line(line: bytes, existing: set[tuple[str, str]], kept: set[str]) -> bytes:
    text = line.decode("utf-8", errors="replace")
    if text.startswith("CREATE USER") or text.startswith("CREATE ROLE"):
        return line
    m = _USER_RE.search(text)
    if m and (m.group(1).replace("``", "`"), m.group(2)) in existing:
        kept.add(f"{m.group(1)}@{m.group(2)}")
        return b"-- (kept: this user exists)"
    return line


class RestoreDatabase(dbutil.RestoreDatabaseBase):
    tool = "mariadb"

    @staticmethod
    def _state(server: ServerConf, target: str) -> str:
        """ "missing", "empty" or "used" (tables, views, routines or events)."""
        if not server.query(
            "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (target,)
        ):
            return "missing"
        used = server.query(
            "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s)"
            " + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s)"
            " + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s)",
            (target, target, target),
        )[0][0]
        return "used" if used else "empty"

    def _create(self, server: ServerConf, target: str, info, drop: bool) -> None:
        if drop:
            server.query(f"DROP DATABASE {quote_ident(target)}")
        create = f"CREATE DATABASE {quote_ident(target)}"
        if info.get("character_set"):
            create += f" CHARACTER SET {info['character_set']}"
        if info.get("collation"):
            create += f" COLLATE {info['collation']}"
        server.query(create)

    def _drop(self, server: ServerConf, target: str) -> None:
        server.query(f"DROP DATABASE IF EXISTS {quote_ident(target)}")

    def _load(self, checkpoint, context, server: ServerConf, target, info, parameters) -> None:
        with server.client_args() as conn_args:
            feed_process(
                [server.tool("mariadb"), *conn_args, f"--database={target}"],
                open_stream(checkpoint, context, info["stream"]),
                what=f"mariadb (restore into {server.id}/{target})",
            )


DeleteMariaDB = dbutil.DeleteDumps


class MariaDBProtectionPlugin(dbutil.ServerDatabasePlugin):
    config_class = MariaDBConfig
    protectable_classes = (MariaDBServerProtectable, MariaDBDatabaseProtectable)
    options_schemas = (SERVER_OPTIONS_SCHEMA, DATABASE_OPTIONS_SCHEMA)
    restore_schemas = (SERVER_RESTORE_SCHEMA, DATABASE_RESTORE_SCHEMA)
    saved_info_schemas = (SERVER_SAVED_INFO_SCHEMA, DATABASE_SAVED_INFO_SCHEMA)
    protect_operations = (ProtectServer, ProtectDatabase)
    restore_operations = (RestoreServer, RestoreDatabase)


__all__ = [
    "DATABASE",
    "SERVER",
    "MariaDBDatabaseProtectable",
    "MariaDBProtectionPlugin",
    "MariaDBServerProtectable",
]
