"""Helpers shared by the database plugins: client subprocesses whose output is streamed (never
copied to a temporary file), connection strings that never show a password, version checks,
and the skeleton of a "servers and their databases" plugin (PostgreSQL, MariaDB).

Why subprocesses: the vendors' dump tools (`pg_dump`, `mariadb-dump`) are the only
supported way to get a dump that their restore tools accept across versions; we stream
their stdout straight into `save_stream` and feed `open_stream` straight into their stdin.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import os
import re
import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from tutela.datapath import delete_streams, save_stream
from tutela.errors import ObjectNotFound, ResourceError, TutelaError
from tutela.plugin import Operation, Protectable, ProtectionPlugin
from tutela.resource import Resource

CHUNK = 1 << 20
_SECRET_KEYS = ("password", "passwd", "pwd")
_SECRET_RE = re.compile(
    r"""(?ix)
    \b(password|passwd|pwd)            # the key
    (\s*=\s*)                          # '=' with optional blanks
    ('(?:[^'\\]|\\.)*'|\S+)            # a quoted or a plain value
    """
)


def redact(text: str) -> str:
    """Hide the value of every `password=` (libpq or key=value form) in a text."""
    return _SECRET_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def parse_keyvalue(conninfo: str) -> dict[str, str]:
    """A `key=value key='quoted value'` string (libpq style) as a dict."""
    out: dict[str, str] = {}
    lexer = shlex.shlex(conninfo, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise ValueError(f"cannot parse connection string {redact(conninfo)!r}: {exc}") from None
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ValueError(
                f"connection string {redact(conninfo)!r}: {redact(token)!r} is not key=value"
            )
        out[key.strip()] = value
    return out


def format_keyvalue(values: Mapping[str, Any], *, hide_password: bool = True) -> str:
    parts = []
    for key, value in values.items():
        if value is None:
            continue
        if hide_password and key.lower() in _SECRET_KEYS:
            parts.append(f"{key}=***")
            continue
        text = str(value)
        if text == "" or re.search(r"[\s'\\]", text):
            text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def read_password_file(path: str) -> str:
    """The first line of a file that holds one password (for clients without a pass file)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise TutelaError(f"cannot read password file {path!r}: {exc.strerror}") from None


def version_tuple(text: str) -> tuple[int, ...]:
    """(major, minor) from a version banner such as `pg_dump (PostgreSQL) 15.20 (Debian)`."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise TutelaError(f"cannot read a version number from {text.strip()!r}")
    return tuple(int(g) for g in m.groups() if g is not None)


def tool_version(executable: str) -> tuple[tuple[int, ...], str]:
    try:
        proc = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise TutelaError(f"client tool {executable!r} is not installed (or not on PATH)") from None
    banner = (proc.stdout or proc.stderr).strip()
    return version_tuple(banner), banner


def _tail(lines: Iterable[str], limit: int = 6) -> str:
    kept = [redact(line.strip()) for line in lines if line.strip()]
    return " | ".join(kept[-limit:])


class _StderrCollector(threading.Thread):
    """Drains a subprocess's stderr so it can never block on a full pipe; keeps the tail."""

    def __init__(self, pipe):
        super().__init__(daemon=True, name="tutela-stderr")
        self.pipe = pipe
        self.lines: deque[str] = deque(maxlen=200)
        self.start()

    def run(self) -> None:
        for raw in iter(self.pipe.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
        self.pipe.close()


class OutputStream:
    """A running client whose stdout is read as a stream of blocks.

    Iterate it (e.g. hand it to `save_stream`); after the last block it waits for the process
    and raises TutelaError with the redacted stderr tail if the exit status is not 0.  Nothing
    is buffered beyond one block, so a dump of any size never lands on local disk.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        what: str | None = None,
    ):
        self.args = list(args)
        self.what = what or os.path.basename(self.args[0])
        self._pushed: list[bytes] = []
        try:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        except FileNotFoundError:
            raise TutelaError(f"client tool {self.args[0]!r} is not installed") from None
        self.stderr = _StderrCollector(self.proc.stderr)

    def first_block(self) -> bytes:
        """Block until the tool wrote something (or ended); the block is kept for iteration."""
        block = self.proc.stdout.read1(CHUNK)  # type: ignore[union-attr]
        if block:
            self._pushed.append(block)
        return block

    def __iter__(self) -> Iterator[bytes]:
        while self._pushed:
            yield self._pushed.pop(0)
        read = self.proc.stdout.read1  # type: ignore[union-attr]
        while block := read(CHUNK):
            yield block
        self.wait()

    def wait(self) -> None:
        code = self.proc.wait()
        self.stderr.join(timeout=10)
        if code != 0:
            detail = _tail(self.stderr.lines)
            raise TutelaError(
                f"{self.what} failed (exit status {code})" + (f": {detail}" if detail else "")
            )

    def warnings(self) -> list[str]:
        return [redact(line) for line in self.stderr.lines if line.strip()]

    def kill(self) -> None:
        """Stop the tool (used when the operation fails before the stream was consumed)."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def feed_process(
    args: Sequence[str],
    blocks: Iterable[bytes],
    env: Mapping[str, str] | None = None,
    what: str | None = None,
) -> list[str]:
    """Run a client that reads `blocks` on its stdin; returns its stderr lines (redacted).

    Raises TutelaError with the stderr tail when it exits non-zero.  If producing the blocks
    fails (e.g. a damaged stream), the client is killed and that error is raised.
    """
    what = what or os.path.basename(args[0])
    try:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    except FileNotFoundError:
        raise TutelaError(f"client tool {args[0]!r} is not installed") from None
    collector = _StderrCollector(proc.stderr)
    assert proc.stdin is not None
    broken = False
    try:
        for block in blocks:
            try:
                proc.stdin.write(block)
            except BrokenPipeError:
                broken = True  # the client stopped reading: its exit status says why
                break
        try:
            proc.stdin.close()
        except BrokenPipeError:
            broken = True
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    code = proc.wait()
    collector.join(timeout=10)
    lines = [redact(line) for line in collector.lines if line.strip()]
    if code != 0 or broken:
        detail = _tail(lines)
        raise TutelaError(f"{what} failed (exit status {code})" + (f": {detail}" if detail else ""))
    return lines


def run_tool(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    what: str | None = None,
    timeout: float = 600,
) -> str:
    """Run a short client command; return its stdout, raise with the stderr tail on failure."""
    what = what or os.path.basename(args[0])
    try:
        proc = subprocess.run(
            list(args),
            env={**os.environ, **(env or {})},
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise TutelaError(f"client tool {args[0]!r} is not installed") from None
    except subprocess.TimeoutExpired:
        raise TutelaError(f"{what} timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        detail = _tail(proc.stderr.decode(errors="replace").splitlines())
        raise TutelaError(
            f"{what} failed (exit status {proc.returncode})" + (f": {detail}" if detail else "")
        )
    return proc.stdout.decode(errors="replace")


# -- servers from a config section, and their databases ----------------------------------


def import_driver(module: str, plugin: str, install: str) -> Any:
    """The database's Python driver, or a TutelaError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - depends on the installation
        raise TutelaError(f"the {plugin} plugin needs {install}") from None


def object_schema(**properties: dict[str, Any]) -> dict[str, Any]:
    """A closed JSON schema object (options and restore parameters)."""
    return {"type": "object", "properties": properties, "additionalProperties": False}


def restore_roles_schema(description: str) -> dict[str, Any]:
    """A server's restore parameters: `restore_roles` (see `RestoreServerBase`)."""
    return object_schema(
        restore_roles={"type": "boolean", "default": False, "description": description}
    )


def database_restore_schema(max_name_length: int, **more: dict[str, Any]) -> dict[str, Any]:
    """A database's restore parameters: `target` and `overwrite` (see `RestoreDatabaseBase`)."""
    return object_schema(
        target={
            "type": "string",
            "minLength": 1,
            "maxLength": max_name_length,
            "description": "Name of the database to restore into (default: the original).",
        },
        overwrite={
            "type": "boolean",
            "default": False,
            "description": "Drop and recreate a non-empty target database.",
        },
        **more,
    )


def server_saved_info_schema(**more: dict[str, Any]) -> dict[str, Any]:
    """A server's metadata: what `ProtectServerBase` records, and `more`."""
    return {
        "type": "object",
        "properties": {
            "server": {"type": "string"},
            "server_version": {"type": "string"},
            "window_opened_at": {"type": "number"},
            "window_closed_at": {"type": "number"},
            "databases": {"type": "array", "items": {"type": "string"}},
            **more,
        },
        "required": ["server", "server_version"],
    }


def database_saved_info_schema(**more: dict[str, Any]) -> dict[str, Any]:
    """A database's metadata: its place, snapshot time and dump stream, and `more`."""
    return {
        "type": "object",
        "properties": {
            "server": {"type": "string"},
            "database": {"type": "string"},
            "server_version": {"type": "string"},
            "size_bytes": {"type": "integer"},
            "snapshot_at": {"type": "number"},
            "stream": {"type": "object"},
            **more,
        },
        "required": ["server", "database", "snapshot_at", "stream"],
    }


def split_database_id(resource_id: str, database_type: str) -> tuple[str, str]:
    """`HOST:PORT/DBNAME` as (`HOST:PORT`, `DBNAME`)."""
    server, sep, name = resource_id.partition("/")
    if not sep or not name or ":" not in server:
        raise ResourceError(f"{database_type} ids are HOST:PORT/DBNAME, not {resource_id!r}")
    return server, name


class DatabaseServer:
    """Base of a configured server: `id` (`HOST:PORT`), `host`, `bin_dir` for its tools."""

    id: str
    host: str
    bin_dir: str | None

    def tool(self, name: str) -> str:
        return os.path.join(self.bin_dir, name) if self.bin_dir else name


class DatabaseConfig:
    """A config section listing servers (one per line) and glob filters of their databases.

    A subclass names its section and types, the server class, and how one client tool is
    checked against a server (`_check_tool`); `check_tools` caches that per server and tool.
    """

    product: ClassVar[str]  # e.g. "PostgreSQL", in messages
    section: ClassVar[str]
    bin_dir_option: ClassVar[str]
    server_type: ClassVar[str]
    database_type: ClassVar[str]
    server_class: ClassVar[type[DatabaseServer]]
    system_databases: ClassVar[frozenset[str]] = frozenset()
    #: The keys of the section that `__init__` reads, besides `bin_dir_option`.
    keys: ClassVar[tuple[str, ...]] = (
        "servers",
        "password_file",
        "include_databases",
        "exclude_databases",
    )

    @classmethod
    def declared_keys(cls) -> dict[str, frozenset[str]]:
        """The section and its keys, as the plugin and its protectables declare them."""
        return {cls.section: frozenset({*cls.keys, cls.bin_dir_option})}

    def __init__(self, config):
        self.config = config
        self.path = config.path if config else "<none>"
        self.servers: dict[str, Any] = {}
        self.include: list[str] = []
        self.exclude: list[str] = []
        self._checked: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()
        if config is None:
            return
        section = self.section
        password_file = config.get_path(section, "password_file")
        bin_dir = config.get_path(section, self.bin_dir_option)
        for line in config.get_list(section, "servers"):
            try:
                server = self.server_class(  # type: ignore[call-arg]
                    line,
                    str(password_file) if password_file else None,
                    str(bin_dir) if bin_dir else None,
                )
            except TutelaError as exc:
                raise config.error(str(exc), f"{section}.servers") from None
            if server.id in self.servers:
                raise config.error(f"server {server.id} is listed twice", f"{section}.servers")
            self.servers[server.id] = server
        self.include = config.get_list(section, "include_databases")
        self.exclude = config.get_list(section, "exclude_databases")

    def server(self, server_id: str) -> Any:
        try:
            return self.servers[server_id]
        except KeyError:
            known = ", ".join(sorted(self.servers)) or "none"
            raise ResourceError(
                f"{self.product} server {server_id!r} is not in [{self.section}] servers of "
                f"{self.path} (configured: {known})"
            ) from None

    def locate(self, database_id: str) -> tuple[Any, str]:
        """The server and the name of a database id `HOST:PORT/DBNAME`."""
        server_id, name = split_database_id(database_id, self.database_type)
        return self.server(server_id), name

    def wanted(self, name: str) -> bool:
        if name in self.system_databases:
            return False
        if self.include and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)

    def check_tools(self, server, *tools: str) -> tuple[str, dict[str, str]]:
        """(server version, {tool: version banner}); each tool is checked once per server."""
        banners: dict[str, str] = {}
        version = ""
        for tool in tools:
            key = (server.id, tool)
            with self._lock:
                cached = self._checked.get(key)
            if cached is None:
                cached = self._check_tool(server, tool)
                with self._lock:
                    self._checked[key] = cached
            version, banners[tool] = cached
        return version, banners

    def _check_tool(self, server, tool: str) -> tuple[str, str]:
        """(server version, tool banner); raises TutelaError if the tool is too old."""
        raise NotImplementedError


class _ConfigProtectable(Protectable):
    config_class: ClassVar[type[DatabaseConfig]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:
            cls.config_keys = cls.config_class.declared_keys()

    def __init__(self, config=None):
        super().__init__(config)
        self.db = self.config_class(config)


class ServerProtectable(_ConfigProtectable):
    """The servers of a `DatabaseConfig` section."""

    def get_resource_type(self) -> str:
        return self.db.server_type

    def list_resources(self, context, parameters=None) -> list[Resource]:
        return [self.show_resource(context, sid) for sid in self.db.servers]

    def show_resource(self, context, resource_id: str) -> Resource:
        server = self.db.server(resource_id)
        return Resource(
            self.db.server_type, server.id, name=server.id, extra_info={"address": server.host}
        )


class DatabaseProtectable(_ConfigProtectable):
    """The databases of those servers; a subclass lists a server's database names."""

    def get_resource_type(self) -> str:
        return self.db.database_type

    def get_parent_resource_types(self) -> list[str]:
        return [self.db.server_type]

    def _names(self, server) -> list[str]:
        raise NotImplementedError

    def _databases(self, server) -> list[Resource]:
        return [
            Resource(self.db.database_type, f"{server.id}/{n}", name=n)
            for n in self._names(server)
            if self.db.wanted(n)
        ]

    def list_resources(self, context, parameters=None) -> list[Resource]:
        out = []
        for server in self.db.servers.values():
            out.extend(self._databases(server))
        return out

    def show_resource(self, context, resource_id: str) -> Resource:
        server, name = self.db.locate(resource_id)
        if name not in self._names(server):
            raise ResourceError(
                f"{self.db.database_type} {resource_id!r}: no such database on {server.id}"
            )
        return Resource(self.db.database_type, f"{server.id}/{name}", name=name)

    def get_dependent_resources(self, context, parent_resource: Resource) -> list[Resource]:
        """A server's databases, without those `wanted` leaves out."""
        return self._databases(self.db.server(parent_resource.id))


# -- operations ---------------------------------------------------------------------------


def save_dump(checkpoint, context, name: str, dump: OutputStream) -> dict[str, Any]:
    """Stream a running dump into the bank; the tool is stopped however that ends."""
    try:
        return save_stream(checkpoint, context, name, dump)
    finally:
        dump.kill()


class ProtectServerBase(Operation):
    """A server's window: `open_window` in prepare_begin, closed in prepare_finish."""

    def __init__(self, db: DatabaseConfig):
        self.db = db
        self.info: dict[str, Any] = {}

    def open_window(self, checkpoint, server, version: str, **extra: Any) -> None:
        self.info = {
            "server": server.id,
            "server_version": version,
            **extra,
            "window_opened_at": time.time(),
            "databases": [d.id for d in checkpoint.dependents() if d.type == self.db.database_type],
        }

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs):
        self.info["window_closed_at"] = time.time()


class ProtectDatabaseBase(Operation):
    """Checks the dump tool before any database's snapshot is taken."""

    dump_tool: ClassVar[str]

    def __init__(self, db: DatabaseConfig):
        self.db = db
        self.dump: OutputStream | None = None
        self.info: dict[str, Any] = {}

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        server, _ = self.db.locate(resource.id)
        self.db.check_tools(server, self.dump_tool)


class RestoreServerBase(Operation):
    """With `restore_roles: true`, replays the server's saved `saved_key` stream in
    prepare_begin, before any database's hook (owners and grants need them)."""

    tool: ClassVar[str]
    saved_key: ClassVar[str]  # the metadata key of the stream, e.g. "globals"
    what: ClassVar[str]  # what it holds, e.g. "roles"

    def __init__(self, db: DatabaseConfig):
        self.db = db

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        if not parameters.get("restore_roles", False):
            return
        server = self.db.server(resource.id)
        self.db.check_tools(server, self.tool)
        info = checkpoint.bank_section.get_json("metadata")
        if not info.get(self.saved_key):
            raise TutelaError(
                f"{resource.key}: the checkpoint holds no {self.what} ({self.saved_key}: false)"
            )
        self.replay(checkpoint, context, resource, server, info[self.saved_key])

    def replay(self, checkpoint, context, resource, server, ref: dict[str, Any]) -> None:
        raise NotImplementedError


class RestoreDatabaseBase(Operation):
    """Refuse a non-empty target early, (re)create it, load the dump, drop what we created
    if loading fails.  A subclass gives `_state`, `_create`, `_drop` and `_load`."""

    tool: ClassVar[str]

    def __init__(self, db: DatabaseConfig):
        self.db = db
        self.created = False

    def _where(self, resource, parameters) -> tuple[Any, str, str]:
        server, name = self.db.locate(resource.id)
        return server, name, parameters.get("target") or name

    def _state(self, server, target: str) -> str:
        """ "missing", "empty" or "used"."""
        raise NotImplementedError

    def _create(self, server, target: str, info: dict[str, Any], drop: bool) -> None:
        """Create the target database (dropping it first if `drop`)."""
        raise NotImplementedError

    def _drop(self, server, target: str) -> None:
        raise NotImplementedError

    def _load(self, checkpoint, context, server, target: str, info, parameters) -> None:
        raise NotImplementedError

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        """Fail before any byte moves: tools too old, or a target we must not touch."""
        server, _, target = self._where(resource, parameters)
        self.db.check_tools(server, self.tool)
        if self._state(server, target) == "used" and not parameters.get("overwrite", False):
            raise TutelaError(
                f"restore target database {target!r} on {server.id} is not empty; "
                "set overwrite: true to drop and recreate it"
            )

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        server, name, target = self._where(resource, parameters)
        try:
            info = checkpoint.bank_section.get_json("metadata")
        except ObjectNotFound:
            raise TutelaError(f"{resource.key}: checkpoint {checkpoint.id} holds no dump") from None
        state = self._state(server, target)
        if state == "used" and not parameters.get("overwrite", False):
            raise TutelaError(f"restore target database {target!r} on {server.id} is not empty")
        if state != "empty":
            self._create(server, target, info, drop=state == "used")
            self.created = True
        try:
            self._load(checkpoint, context, server, target, info, parameters)
        except BaseException:
            self._drop_created(server, target)
            raise
        self.created = False  # restored: from now on it is the user's database
        if target != name:
            context.set_new_resource(
                resource, Resource(self.db.database_type, f"{server.id}/{target}", name=target)
            )

    def on_abort(self, checkpoint, context, resource, parameters, error=None, **kwargs):
        if self.created:
            server, _, target = self._where(resource, parameters)
            self._drop_created(server, target)

    def _drop_created(self, server, target: str) -> None:
        """Leave no half-restored database we created ourselves."""
        if self.created:
            with contextlib.suppress(Exception):
                self._drop(server, target)
            self.created = False


class DeleteDumps(Operation):
    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        delete_streams(checkpoint)


class ServerDatabasePlugin(ProtectionPlugin):
    """Protects the servers and databases of a `DatabaseConfig`: each pair below is
    (for the server type, for the database type)."""

    config_class: ClassVar[type[DatabaseConfig]]
    protectable_classes: ClassVar[tuple[type[Protectable], ...]]
    options_schemas: ClassVar[tuple[dict[str, Any], dict[str, Any]]]
    restore_schemas: ClassVar[tuple[dict[str, Any], dict[str, Any]]]
    saved_info_schemas: ClassVar[tuple[dict[str, Any], dict[str, Any]]]
    protect_operations: ClassVar[tuple[type[Operation], type[Operation]]]
    restore_operations: ClassVar[tuple[type[Operation], type[Operation]]]
    delete_operation: ClassVar[type[Operation]] = DeleteDumps

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:
            cls.config_keys = cls.config_class.declared_keys()

    def __init__(self, config=None):
        super().__init__(config)
        self.db = self.config_class(config)

    def _pick(self, resource_type: str, pair: tuple[Any, Any]) -> Any:
        return pair[0] if resource_type == self.db.server_type else pair[1]

    def get_supported_resources_types(self) -> list[str]:
        return [self.db.server_type, self.db.database_type]

    def get_protectables(self) -> list[Protectable]:
        """Both protectables come with the plugin (one entry point cannot name two)."""
        return [cls(self.config) for cls in self.protectable_classes]

    def get_options_schema(self, resource_type: str) -> dict[str, Any]:
        return self._pick(resource_type, self.options_schemas)

    def get_restore_schema(self, resource_type: str) -> dict[str, Any]:
        return self._pick(resource_type, self.restore_schemas)

    def get_saved_info_schema(self, resource_type: str) -> dict[str, Any]:
        return self._pick(resource_type, self.saved_info_schemas)

    def get_protect_operation(self, resource: Resource) -> Operation:
        return self._pick(resource.type, self.protect_operations)(self.db)

    def get_restore_operation(self, resource: Resource) -> Operation:
        return self._pick(resource.type, self.restore_operations)(self.db)

    def get_delete_operation(self, resource: Resource) -> Operation:
        return self.delete_operation()
