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

import fnmatch
import os
import threading
import time
from typing import Any

from tutela.datapath import delete_streams, open_stream, save_stream
from tutela.errors import ObjectNotFound, ResourceError, TutelaError
from tutela.plugin import Operation, Protectable, ProtectionPlugin
from tutela.plugins.dbutil import (
    OutputStream,
    feed_process,
    format_keyvalue,
    parse_keyvalue,
    redact,
    tool_version,
)
from tutela.resource import Resource

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

SERVER_OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "globals": {
            "type": "boolean",
            "default": True,
            "description": "Save roles and tablespaces (pg_dumpall --globals-only).",
        },
    },
    "additionalProperties": False,
}
SERVER_RESTORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "restore_roles": {
            "type": "boolean",
            "default": False,
            "description": "Replay the saved roles and tablespaces first; objects that already "
            "exist are kept (and reported).",
        },
    },
    "additionalProperties": False,
}
DATABASE_OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "compress": {
            "type": "integer",
            "minimum": 0,
            "maximum": 9,
            "description": "pg_dump -Z level (default: pg_dump's own).",
        },
        "exclude_table_data": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Table patterns whose rows are not dumped (their definition is).",
        },
    },
    "additionalProperties": False,
}
DATABASE_RESTORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "target": {
            "type": "string",
            "minLength": 1,
            "maxLength": 63,
            "description": "Name of the database to restore into (default: the original).",
        },
        "overwrite": {
            "type": "boolean",
            "default": False,
            "description": "Drop and recreate a non-empty target database.",
        },
        "no_owner": {
            "type": "boolean",
            "default": False,
            "description": "Do not restore ownership and grants (pg_restore --no-owner "
            "--no-privileges), e.g. when the roles do not exist on this server.",
        },
        "analyze": {
            "type": "boolean",
            "default": True,
            "description": "Run ANALYZE on the restored database in on_complete.",
        },
    },
    "additionalProperties": False,
}
SERVER_SAVED_INFO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "server": {"type": "string"},
        "server_version": {"type": "string"},
        "pg_dumpall_version": {"type": "string"},
        "window_opened_at": {"type": "number"},
        "window_closed_at": {"type": "number"},
        "databases": {"type": "array", "items": {"type": "string"}},
        "globals": {"type": ["object", "null"]},
    },
    "required": ["server", "server_version"],
}
DATABASE_SAVED_INFO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "server": {"type": "string"},
        "database": {"type": "string"},
        "server_version": {"type": "string"},
        "pg_dump_version": {"type": "string"},
        "size_bytes": {"type": "integer"},
        "encoding": {"type": "string"},
        "collate": {"type": "string"},
        "ctype": {"type": "string"},
        "owner": {"type": "string"},
        "snapshot_id": {"type": "string"},
        "snapshot_at": {"type": "number"},
        "dump_seconds": {"type": "number"},
        "stream": {"type": "object"},
    },
    "required": ["server", "database", "snapshot_at", "stream"],
}


def _psycopg():
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the installation
        raise TutelaError(
            "the PostgreSQL plugin needs psycopg (pip install 'psycopg[binary]')"
        ) from None
    return psycopg


def split_database_id(resource_id: str) -> tuple[str, str]:
    server, sep, name = resource_id.partition("/")
    if not sep or not name or ":" not in server:
        raise ResourceError(f"{DATABASE} ids are HOST:PORT/DBNAME, not {resource_id!r}")
    return server, name


class ServerConf:
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

    def tool(self, name: str) -> str:
        return os.path.join(self.bin_dir, name) if self.bin_dir else name


class PostgreSQLConfig:
    """The `[postgresql]` section, parsed once per plugin or protectable."""

    def __init__(self, config):
        self.config = config
        self.path = config.path if config else "<none>"
        self.servers: dict[str, ServerConf] = {}
        if config is None:
            return
        password_file = config.get_path(SECTION, "password_file")
        bin_dir = config.get_path(SECTION, "pg_bin_dir")
        for line in config.get_list(SECTION, "servers"):
            try:
                server = ServerConf(
                    line,
                    str(password_file) if password_file else None,
                    str(bin_dir) if bin_dir else None,
                )
            except TutelaError as exc:
                raise config.error(str(exc), f"{SECTION}.servers") from None
            if server.id in self.servers:
                raise config.error(f"server {server.id} is listed twice", f"{SECTION}.servers")
            self.servers[server.id] = server
        self.include = config.get_list(SECTION, "include_databases")
        self.exclude = config.get_list(SECTION, "exclude_databases")
        self._checked: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()

    def server(self, server_id: str) -> ServerConf:
        try:
            return self.servers[server_id]
        except KeyError:
            known = ", ".join(sorted(self.servers)) or "none"
            raise ResourceError(
                f"PostgreSQL server {server_id!r} is not in [{SECTION}] servers of "
                f"{self.path} (configured: {known})"
            ) from None

    def wanted(self, dbname: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(dbname, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(dbname, p) for p in self.exclude)

    def check_tools(self, server: ServerConf, *tools: str) -> tuple[str, dict[str, str]]:
        """Refuse client tools older than the server (major version); cached per server.

        Within one major version the dump format is the same, so only the major is compared;
        an older pg_dump cannot read a newer server's catalogs at all.
        """
        found: dict[str, str] = {}
        server_version = ""
        for tool in tools:
            key = (server.id, tool)
            with self._lock:
                cached = self._checked.get(key)
            if cached is None:
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
                cached = (server_version, banner)
                with self._lock:
                    self._checked[key] = cached
            server_version, found[tool] = cached
        return server_version, found


class PostgreSQLServerProtectable(Protectable):
    def __init__(self, config=None):
        super().__init__(config)
        self.pg = PostgreSQLConfig(config)

    def get_resource_type(self) -> str:
        return SERVER

    def list_resources(self, context, parameters=None) -> list[Resource]:
        return [self.show_resource(context, sid) for sid in self.pg.servers]

    def show_resource(self, context, resource_id: str) -> Resource:
        server = self.pg.server(resource_id)
        return Resource(SERVER, server.id, name=server.id, extra_info={"address": server.host})


class PostgreSQLDatabaseProtectable(Protectable):
    def __init__(self, config=None):
        super().__init__(config)
        self.pg = PostgreSQLConfig(config)

    def get_resource_type(self) -> str:
        return DATABASE

    def get_parent_resource_types(self) -> list[str]:
        return [SERVER]

    def _names(self, server: ServerConf) -> list[str]:
        with server.connect() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
                "ORDER BY datname"
            ).fetchall()
        return [r[0] for r in rows]

    def list_resources(self, context, parameters=None) -> list[Resource]:
        out = []
        for server in self.pg.servers.values():
            out.extend(
                Resource(DATABASE, f"{server.id}/{n}", name=n)
                for n in self._names(server)
                if self.pg.wanted(n)
            )
        return out

    def show_resource(self, context, resource_id: str) -> Resource:
        server_id, name = split_database_id(resource_id)
        server = self.pg.server(server_id)
        if name not in self._names(server):
            raise ResourceError(f"{DATABASE} {resource_id!r}: no such database on {server_id}")
        return Resource(DATABASE, f"{server.id}/{name}", name=name)

    def get_dependent_resources(self, context, parent_resource: Resource) -> list[Resource]:
        """A server's databases: templates, databases that refuse connections and those
        filtered out by include/exclude_databases are left out."""
        server = self.pg.server(parent_resource.id)
        return [
            Resource(DATABASE, f"{server.id}/{n}", name=n)
            for n in self._names(server)
            if self.pg.wanted(n)
        ]


# -- protect ------------------------------------------------------------------------------


class ProtectServer(Operation):
    def __init__(self, pg: PostgreSQLConfig):
        self.pg = pg
        self.info: dict[str, Any] = {}

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        server = self.pg.server(resource.id)
        tools = ["pg_dump"] + (["pg_dumpall"] if parameters.get("globals", True) else [])
        version, banners = self.pg.check_tools(server, *tools)
        self.info = {
            "server": server.id,
            "server_version": version,
            "pg_dumpall_version": banners.get("pg_dumpall", ""),
            "window_opened_at": time.time(),
            "databases": [d.id for d in checkpoint.dependents() if d.type == DATABASE],
        }

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs):
        # Every dependent database exported its snapshot before this hook runs.
        self.info["window_closed_at"] = time.time()

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        server = self.pg.server(resource.id)
        ref = None
        if parameters.get("globals", True):
            dump = OutputStream(
                [server.tool("pg_dumpall"), "--globals-only", "--no-password"],
                env=server.env("postgres"),
                what=f"pg_dumpall --globals-only of {server.id}",
            )
            try:
                ref = save_stream(checkpoint, context, "globals", dump)
            finally:
                dump.kill()
        checkpoint.bank_section.put_json("metadata", {**self.info, "globals": ref})


class ProtectDatabase(Operation):
    def __init__(self, pg: PostgreSQLConfig):
        self.pg = pg
        self.conn: Any = None
        self.dump: OutputStream | None = None
        self.info: dict[str, Any] = {}

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        server_id, _ = split_database_id(resource.id)
        self.pg.check_tools(self.pg.server(server_id), "pg_dump")

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs):
        server_id, name = split_database_id(resource.id)
        server = self.pg.server(server_id)
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
        server_id, name = split_database_id(resource.id)
        server = self.pg.server(server_id)
        _, banners = self.pg.check_tools(server, "pg_dump")
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


class RestoreServer(Operation):
    """Roles before databases: the parent's prepare_begin runs before any child's hook."""

    def __init__(self, pg: PostgreSQLConfig):
        self.pg = pg

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        if not parameters.get("restore_roles", False):
            return
        server = self.pg.server(resource.id)
        self.pg.check_tools(server, "psql")
        info = checkpoint.bank_section.get_json("metadata")
        if not info.get("globals"):
            raise TutelaError(f"{resource.key}: the checkpoint holds no roles (globals: false)")
        lines = feed_process(
            [server.tool("psql"), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=0", "-f", "-"],
            open_stream(checkpoint, context, info["globals"]),
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


class RestoreDatabase(Operation):
    def __init__(self, pg: PostgreSQLConfig):
        self.pg = pg
        self.created = False

    def _where(self, resource, parameters) -> tuple[ServerConf, str, str]:
        server_id, name = split_database_id(resource.id)
        return self.pg.server(server_id), name, parameters.get("target") or name

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

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        """Fail before any byte moves: tools too old, or a target we must not touch."""
        server, _, target = self._where(resource, parameters)
        self.pg.check_tools(server, "pg_restore")
        if self._state(server, target) == "used" and not parameters.get("overwrite", False):
            raise TutelaError(
                f"restore target database {target!r} on {server.id} is not empty; "
                "set overwrite: true to drop and recreate it"
            )

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        psycopg = _psycopg()
        from psycopg import sql

        server, name, target = self._where(resource, parameters)
        try:
            info = checkpoint.bank_section.get_json("metadata")
        except ObjectNotFound:
            raise TutelaError(f"{resource.key}: checkpoint {checkpoint.id} holds no dump") from None
        state = self._state(server, target)
        with server.connect() as conn:
            try:
                if state == "used":
                    if not parameters.get("overwrite", False):
                        raise TutelaError(
                            f"restore target database {target!r} on {server.id} is not empty"
                        )
                    conn.execute(
                        sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(target))
                    )
                    state = "missing"
                if state == "missing":
                    conn.execute(
                        sql.SQL(
                            "CREATE DATABASE {} TEMPLATE template0 ENCODING {} "
                            "LC_COLLATE {} LC_CTYPE {}"
                        ).format(
                            sql.Identifier(target),
                            sql.Literal(info.get("encoding", "UTF8")),
                            sql.Literal(info.get("collate", "C")),
                            sql.Literal(info.get("ctype", "C")),
                        )
                    )
                    self.created = True
            except psycopg.Error as exc:
                raise TutelaError(
                    f"cannot prepare database {target!r} on {server.id}: {str(exc).strip()}"
                ) from None
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
        try:
            feed_process(
                args,
                open_stream(checkpoint, context, info["stream"]),
                env=server.env(target),
                what=f"pg_restore into {server.id}/{target}",
            )
        except BaseException:
            self._drop_created(server, target)
            raise
        self.created = False  # restored: from now on it is the user's database
        if target != name:
            context.set_new_resource(
                resource, Resource(DATABASE, f"{server.id}/{target}", name=target)
            )

    def on_complete(self, checkpoint, context, resource, parameters, **kwargs):
        if not parameters.get("analyze", True):
            return
        server, _, target = self._where(resource, parameters)
        with server.connect(target) as conn:
            conn.execute("ANALYZE")

    def on_abort(self, checkpoint, context, resource, parameters, error=None, **kwargs):
        if self.created:
            server, _, target = self._where(resource, parameters)
            self._drop_created(server, target)

    def _drop_created(self, server: ServerConf, target: str) -> None:
        """Leave no half-restored database we created ourselves."""
        if not self.created:
            return
        from psycopg import sql

        try:
            with server.connect() as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(target)
                    )
                )
        except Exception:
            pass
        self.created = False


class DeletePostgreSQL(Operation):
    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        delete_streams(checkpoint)


class PostgreSQLProtectionPlugin(ProtectionPlugin):
    def __init__(self, config=None):
        super().__init__(config)
        self.pg = PostgreSQLConfig(config)

    def get_supported_resources_types(self) -> list[str]:
        return [SERVER, DATABASE]

    def get_protectables(self) -> list[Protectable]:
        """Both protectables come with the plugin (one entry point cannot name two)."""
        return [
            PostgreSQLServerProtectable(self.config),
            PostgreSQLDatabaseProtectable(self.config),
        ]

    def get_options_schema(self, resource_type: str) -> dict[str, Any]:
        return SERVER_OPTIONS_SCHEMA if resource_type == SERVER else DATABASE_OPTIONS_SCHEMA

    def get_restore_schema(self, resource_type: str) -> dict[str, Any]:
        return SERVER_RESTORE_SCHEMA if resource_type == SERVER else DATABASE_RESTORE_SCHEMA

    def get_saved_info_schema(self, resource_type: str) -> dict[str, Any]:
        return SERVER_SAVED_INFO_SCHEMA if resource_type == SERVER else DATABASE_SAVED_INFO_SCHEMA

    def get_protect_operation(self, resource: Resource) -> Operation:
        return ProtectServer(self.pg) if resource.type == SERVER else ProtectDatabase(self.pg)

    def get_restore_operation(self, resource: Resource) -> Operation:
        return RestoreServer(self.pg) if resource.type == SERVER else RestoreDatabase(self.pg)

    def get_delete_operation(self, resource: Resource) -> Operation:
        return DeletePostgreSQL()


__all__ = [
    "DATABASE",
    "SERVER",
    "PostgreSQLDatabaseProtectable",
    "PostgreSQLProtectionPlugin",
    "PostgreSQLServerProtectable",
]
