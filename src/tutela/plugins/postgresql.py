"""`PostgreSQL::Server` and `PostgreSQL::Database`: logical dumps with `pg_dump -Fc`, taken
from a snapshot exported inside the prepare window and streamed into the bank.

How the four hooks are used (protect), and why:

- Server `on_prepare_begin`: check that the client tools are at least the server's major
  version, before any database's hook runs, so a mismatch fails before anything is dumped.
  It opens the server's window (`window_opened_at`).
- Database `on_prepare_finish`: open a connection, start a REPEATABLE READ transaction and
  `SELECT pg_export_snapshot()`.  The connection (and so the snapshot) is kept on the
  operation object.  All databases of a server do this after the server's prepare_begin and
  before its prepare_finish, so their snapshots fall in one window (a snapshot cannot cross
  databases, but a parent's quiesce window can hold them all), and the moment is cheap.
- Server `on_prepare_finish`: closes the window (`window_closed_at`); if a parent (e.g. a
  group) quiesced the application, it releases it after this, and every snapshot is inside.
- Database `on_main`: `pg_dump -Fc --snapshot=ID`, its stdout streamed through `save_stream`
  (no temporary copy).  Once pg_dump has written its first bytes it has imported the
  snapshot, so the exporting transaction is ended right then (holding it longer would only
  hold back vacuum).  Server `on_main`: `pg_dumpall --globals-only` (roles, tablespaces).
- `on_abort`: stops a running pg_dump and ends the held transaction.

Restore: the server's `on_prepare_begin` restores roles first when asked
(`restore_roles: true`; "already exists" errors are reported and ignored, any other error
fails), because databases' owners and grants need them; a database's `on_prepare_begin`
refuses a non-empty target early (before bytes move), `on_main` (re)creates the database and
streams the dump into `pg_restore --single-transaction` stdin, and `on_complete` runs ANALYZE
(statistics are not part of a dump).

Config section `[postgresql]`:
  servers            libpq connection strings, one per line (`host=... port=... user=...`)
  password_file      a libpq pass file (default: PGPASSFILE / ~/.pgpass / the environment)
  pg_bin_dir         folder of pg_dump, pg_dumpall, pg_restore, psql (default: PATH)
  include_databases  glob patterns: a server's dependents are the matching databases only
  exclude_databases  glob patterns of databases a server leaves out
Resource ids: a server is `HOST:PORT`, a database `HOST:PORT/DBNAME`.
"""

from __future__ import annotations

import time
from typing import Any

from tutela.datapath import open_stream, save_stream
from tutela.errors import TutelaError
from tutela.plugins import dbutil
from tutela.plugins.dbutil import (
    OutputStream,
    feed_process,
    format_keyvalue,
    parse_keyvalue,
    redact,
    save_dump,
    tool_version,
)

SERVER = "PostgreSQL::Server"
DATABASE = "PostgreSQL::Database"
SECTION = "postgresql"

#: libpq keywords -> the environment variables client tools read (so no secret is on argv).
_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}

SERVER_OPTIONS_SCHEMA = dbutil.object_schema(
    globals={
        "type": "boolean",
        "default": True,
        "description": "Save roles and tablespaces (pg_dumpall --globals-only).",
    },
)
SERVER_RESTORE_SCHEMA = dbutil.restore_roles_schema(
    "Replay the saved roles and tablespaces first; objects that already exist are kept "
    "(and reported)."
)
DATABASE_OPTIONS_SCHEMA = dbutil.object_schema(
    compress={
        "type": "integer",
        "minimum": 0,
        "maximum": 9,
        "description": "pg_dump -Z level (default: pg_dump's own).",
    },
    exclude_table_data={
        "type": "array",
        "items": {"type": "string"},
        "description": "Table patterns whose rows are not dumped (their definition is).",
    },
)
DATABASE_RESTORE_SCHEMA = dbutil.database_restore_schema(
    63,
    no_owner={
        "type": "boolean",
        "default": False,
        "description": "Do not restore ownership and grants (pg_restore --no-owner "
        "--no-privileges), e.g. when the roles do not exist on this server.",
    },
    analyze={
        "type": "boolean",
        "default": True,
        "description": "Run ANALYZE on the restored database in on_complete.",
    },
)
SERVER_SAVED_INFO_SCHEMA = dbutil.server_saved_info_schema(
    pg_dumpall_version={"type": "string"},
    globals={"type": ["object", "null"]},
)
DATABASE_SAVED_INFO_SCHEMA = dbutil.database_saved_info_schema(
    pg_dump_version={"type": "string"},
    encoding={"type": "string"},
    collate={"type": "string"},
    ctype={"type": "string"},
    owner={"type": "string"},
    snapshot_id={"type": "string"},
    dump_seconds={"type": "number"},
)


def _psycopg():
    return dbutil.import_driver("psycopg", "PostgreSQL", "psycopg (pip install 'psycopg[binary]')")


def split_database_id(resource_id: str) -> tuple[str, str]:
    return dbutil.split_database_id(resource_id, DATABASE)


class ServerConf(dbutil.DatabaseServer):
    """One configured server: its id and how to reach it (password kept out of sight)."""

    def __init__(self, conninfo: str, password_file: str | None, bin_dir: str | None):
        try:
            self.params = parse_keyvalue(conninfo)
        except ValueError as exc:
            raise TutelaError(str(exc)) from None
        self.params.pop("dbname", None)
        host = self.params.get("host") or self.params.get("hostaddr") or "localhost"
        self.host = host
        self.port = int(self.params.get("port") or 5432)
        self.id = f"{host}:{self.port}"
        self.password_file = password_file
        self.bin_dir = bin_dir
        self.shown = redact(conninfo)

    def connect(self, dbname: str = "postgres", autocommit: bool = True):
        psycopg = _psycopg()
        kwargs: dict[str, Any] = {**self.params, "dbname": dbname}
        kwargs.setdefault("connect_timeout", "10")
        kwargs.setdefault("application_name", "tutela")
        if self.password_file:
            kwargs.setdefault("passfile", self.password_file)
        try:
            return psycopg.connect(autocommit=autocommit, **kwargs)
        except psycopg.Error as exc:
            raise TutelaError(
                f"cannot connect to PostgreSQL {self.id} (database {dbname!r}, "
                f"{self.shown}): {redact(str(exc).strip())}"
            ) from None

    def env(self, dbname: str | None = None) -> dict[str, str]:
        """Environment for client tools: every parameter as a PG* variable."""
        env = {_ENV[k]: str(v) for k, v in self.params.items() if k in _ENV}
        if self.password_file and "PGPASSWORD" not in env:
            env["PGPASSFILE"] = self.password_file
        env.setdefault("PGCONNECT_TIMEOUT", "10")
        if dbname is not None:
            env["PGDATABASE"] = dbname
        return env


class PostgreSQLConfig(dbutil.DatabaseConfig):
    """The `[postgresql]` section, parsed once per plugin or protectable."""

    product = "PostgreSQL"
    section = SECTION
    bin_dir_option = "pg_bin_dir"
    server_type = SERVER
    database_type = DATABASE
    server_class = ServerConf

    def _check_tool(self, server: ServerConf, tool: str) -> tuple[str, str]:
        """Refuse client tools older than the server (major version).

        Within one major version the dump format is the same, so only the major is compared;
        an older pg_dump cannot read a newer server's catalogs at all.
        """
        with server.connect() as conn:
            num = conn.info.server_version
            server_version = conn.execute("SHOW server_version").fetchone()[0]
        client, banner = tool_version(server.tool(tool))
        server_major = num // 10000 if num >= 100000 else num // 100
        if client[0] < server_major:
            raise TutelaError(
                f"{tool} is version {'.'.join(map(str, client))} but PostgreSQL "
                f"{server.id} runs {server_version}: the client tools must be of the "
                f"server's major version ({server_major}) or newer; set [{SECTION}] "
                "pg_bin_dir to a newer client's bin folder"
            )
        return server_version, banner


class PostgreSQLServerProtectable(dbutil.ServerProtectable):
    config_class = PostgreSQLConfig


class PostgreSQLDatabaseProtectable(dbutil.DatabaseProtectable):
    """A server's databases: templates, databases that refuse connections and those
    filtered out by include/exclude_databases are left out."""

    config_class = PostgreSQLConfig

    def _names(self, server: ServerConf) -> list[str]:
        with server.connect() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
                "ORDER BY datname"
            ).fetchall()
        return [r[0] for r in rows]


# -- protect ------------------------------------------------------------------------------


class ProtectServer(dbutil.ProtectServerBase):
    """Its inherited prepare_finish closes the window: every dependent database exported
    its snapshot before that hook runs."""

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        server = self.db.server(resource.id)
        tools = ["pg_dump"] + (["pg_dumpall"] if parameters.get("globals", True) else [])
        version, banners = self.db.check_tools(server, *tools)
        self.open_window(
            checkpoint, server, version, pg_dumpall_version=banners.get("pg_dumpall", "")
        )

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        server = self.db.server(resource.id)
        ref = None
        if parameters.get("globals", True):
            dump = OutputStream(
                [server.tool("pg_dumpall"), "--globals-only", "--no-password"],
                env=server.env("postgres"),
                what=f"pg_dumpall --globals-only of {server.id}",
            )
            ref = save_dump(checkpoint, context, "globals", dump)
        checkpoint.bank_section.put_json("metadata", {**self.info, "globals": ref})


class ProtectDatabase(dbutil.ProtectDatabaseBase):
    dump_tool = "pg_dump"

    def __init__(self, db: PostgreSQLConfig):
        super().__init__(db)
        self.conn: Any = None

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs):
        server, name = self.db.locate(resource.id)
        self.conn = server.connect(name, autocommit=False)
        try:
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot_id = self.conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            snapshot_at = time.time()
            row = self.conn.execute(
                "SELECT pg_database_size(d.oid), pg_encoding_to_char(d.encoding), "
                "d.datcollate, d.datctype, pg_get_userbyid(d.datdba), "
                "current_setting('server_version') "
                "FROM pg_database d WHERE d.datname = current_database()"
            ).fetchone()
        except Exception as exc:
            self._release()
            raise TutelaError(
                f"{resource.key}: cannot export a snapshot: {redact(str(exc).strip())}"
            ) from None
        size, encoding, collate, ctype, owner, version = row
        self.info = {
            "server": server.id,
            "database": name,
            "server_version": version,
            "size_bytes": int(size),
            "encoding": encoding,
            "collate": collate,
            "ctype": ctype,
            "owner": owner,
            "snapshot_id": snapshot_id,
            "snapshot_at": snapshot_at,
        }

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        server, name = self.db.locate(resource.id)
        _, banners = self.db.check_tools(server, "pg_dump")
        args = [
            server.tool("pg_dump"),
            "--format=custom",
            "--no-password",
            f"--snapshot={self.info['snapshot_id']}",
        ]
        if "compress" in parameters:
            args.append(f"--compress={int(parameters['compress'])}")
        args.extend(f"--exclude-table-data={p}" for p in parameters.get("exclude_table_data", []))
        started = time.time()
        self.dump = OutputStream(args, env=server.env(name), what=f"pg_dump of {resource.id}")
        try:
            # pg_dump writes nothing before it has imported the snapshot; from then on the
            # exporting transaction is no longer needed.
            self.dump.first_block()
            self._release()
            ref = save_stream(checkpoint, context, "dump", self.dump)
        finally:
            self.dump.kill()
            self.dump = None
            self._release()
        info = {
            **self.info,
            "pg_dump_version": banners["pg_dump"],
            "dump_seconds": round(time.time() - started, 3),
            "stream": ref,
        }
        checkpoint.bank_section.put_json("metadata", info)

    def on_abort(self, checkpoint, context, resource, parameters, error=None, **kwargs):
        if self.dump is not None:
            self.dump.kill()
        self._release()

    def _release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.rollback()
            except Exception:
                pass
            finally:
                conn.close()


# -- restore -------------------------------------------------------------------------------


def _ignorable(line: str) -> bool:
    return "already exists" in line


class RestoreServer(dbutil.RestoreServerBase):
    """Roles before databases: the parent's prepare_begin runs before any child's hook."""

    tool = "psql"
    saved_key = "globals"
    what = "roles"

    def replay(self, checkpoint, context, resource, server: ServerConf, ref) -> None:
        lines = feed_process(
            [server.tool("psql"), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=0", "-f", "-"],
            open_stream(checkpoint, context, ref),
            env=server.env("postgres"),
            what=f"psql (roles of {resource.id})",
        )
        errors = [line for line in lines if "ERROR:" in line]
        fatal = [line for line in errors if not _ignorable(line)]
        if fatal:
            raise TutelaError(f"{resource.key}: restoring roles failed: " + " | ".join(fatal[:5]))
        if errors:
            kept = [e.split("ERROR:", 1)[1].strip() for e in errors]
            context.progress.message(
                f"{resource.key}: {len(kept)} global object(s) already existed and were kept: "
                + "; ".join(kept[:5])
            )


class RestoreDatabase(dbutil.RestoreDatabaseBase):
    tool = "pg_restore"

    @staticmethod
    def _state(server: ServerConf, target: str) -> str:
        """ "missing", "empty" or "used" (any relation, function or large object)."""
        with server.connect() as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,))
            if found.fetchone() is None:
                return "missing"
        with server.connect(target) as conn:
            used = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname NOT IN "
                "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%' "
                "AND n.nspname NOT LIKE 'pg_temp%%') "
                "OR EXISTS (SELECT 1 FROM pg_largeobject_metadata) "
                "OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n "
                "ON n.oid = p.pronamespace WHERE n.nspname NOT IN "
                "('pg_catalog', 'information_schema'))"
            ).fetchone()[0]
        return "used" if used else "empty"

    def _create(self, server: ServerConf, target: str, info, drop: bool) -> None:
        psycopg = _psycopg()
        from psycopg import sql

        with server.connect() as conn:
            try:
                if drop:
                    conn.execute(
                        sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(target))
                    )
                conn.execute(
                    sql.SQL(
                        "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}"
                    ).format(
                        sql.Identifier(target),
                        sql.Literal(info.get("encoding", "UTF8")),
                        sql.Literal(info.get("collate", "C")),
                        sql.Literal(info.get("ctype", "C")),
                    )
                )
            except psycopg.Error as exc:
                raise TutelaError(
                    f"cannot prepare database {target!r} on {server.id}: {str(exc).strip()}"
                ) from None

    def _drop(self, server: ServerConf, target: str) -> None:
        from psycopg import sql

        with server.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target))
            )

    def _load(self, checkpoint, context, server: ServerConf, target, info, parameters) -> None:
        args = [
            server.tool("pg_restore"),
            "--single-transaction",
            "--exit-on-error",
            "--no-password",
            "-d",
            format_keyvalue({"dbname": target}),
        ]
        if parameters.get("no_owner", False):
            args += ["--no-owner", "--no-privileges"]
        feed_process(
            args,
            open_stream(checkpoint, context, info["stream"]),
            env=server.env(target),
            what=f"pg_restore into {server.id}/{target}",
        )

    def on_complete(self, checkpoint, context, resource, parameters, **kwargs):
        if not parameters.get("analyze", True):
            return
        server, _, target = self._where(resource, parameters)
        with server.connect(target) as conn:
            conn.execute("ANALYZE")


DeletePostgreSQL = dbutil.DeleteDumps


class PostgreSQLProtectionPlugin(dbutil.ServerDatabasePlugin):
    config_class = PostgreSQLConfig
    protectable_classes = (PostgreSQLServerProtectable, PostgreSQLDatabaseProtectable)
    options_schemas = (SERVER_OPTIONS_SCHEMA, DATABASE_OPTIONS_SCHEMA)
    restore_schemas = (SERVER_RESTORE_SCHEMA, DATABASE_RESTORE_SCHEMA)
    saved_info_schemas = (SERVER_SAVED_INFO_SCHEMA, DATABASE_SAVED_INFO_SCHEMA)
    protect_operations = (ProtectServer, ProtectDatabase)
    restore_operations = (RestoreServer, RestoreDatabase)


__all__ = [
    "DATABASE",
    "SERVER",
    "PostgreSQLDatabaseProtectable",
    "PostgreSQLProtectionPlugin",
    "PostgreSQLServerProtectable",
]
