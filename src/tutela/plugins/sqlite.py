"""`Tutela::SQLite`: a SQLite database file, protected consistently while it is in use.

Copying a live SQLite file byte by byte can capture half a transaction (and misses what sits
in its `-wal`).  SQLite's online backup API copies a consistent image instead, so:

- `on_prepare_finish` takes the backup into a temporary snapshot file.  This is the only
  moment the database is held (a read lock for the copy, which is fast and local); it runs
  inside the prepare window of the parents (e.g. after a group's quiesce command and before
  its release), which is exactly what that window is for.
- `on_main` streams the snapshot into the bank through `save_stream` (the slow part, run in
  parallel with other resources and outside the window).
- `on_complete` removes the snapshot; `on_abort` removes it too if the operation failed.

Resources are files named by absolute path.  The protectable's parent type is
`Tutela::Directory`: a directory's dependents are the SQLite files found under it (by their
16-byte header), so a folder and its databases form one graph; the directory leaves those
files to this plugin.

Restore writes the database to its original path, to `target`, or - when its parent
directory was restored elsewhere - to the same relative path under the new directory.  It
writes a temporary file in the destination folder, checks `PRAGMA integrity_check`, then
renames it into place; an existing file is replaced only with `overwrite: true`.

Config section `[sqlite]` (optional): `paths` (files `tutela resources` lists),
`snapshot_dir` (where snapshots are kept between prepare and complete; default the system
temporary folder — never inside a protected directory).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import tempfile
import time
from typing import Any

from tutela.datapath import delete_streams, open_stream, save_stream
from tutela.errors import ObjectNotFound, ResourceError, TutelaError
from tutela.plugin import Operation, Protectable, ProtectionPlugin
from tutela.resource import Resource

TYPE = "Tutela::SQLite"
SECTION = "sqlite"
#: The keys of `[sqlite]`, declared by the plugin and its protectable.
CONFIG_KEYS = {SECTION: frozenset({"paths", "snapshot_dir"})}
DIRECTORY_TYPE = "Tutela::Directory"
HEADER = b"SQLite format 3\x00"
#: Files SQLite keeps next to a database; never databases themselves.
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
BUSY_TIMEOUT = 60.0

OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {},
    "additionalProperties": False,
}
RESTORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "target": {
            "type": "string",
            "minLength": 1,
            "description": "File to restore to (default: the original path, or the same "
            "relative path under the restored parent directory).",
        },
        "overwrite": {
            "type": "boolean",
            "default": False,
            "description": "Replace an existing file at the destination.",
        },
    },
    "additionalProperties": False,
}
SAVED_INFO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "host": {"type": "string"},
        "size": {"type": "integer", "minimum": 0},
        "page_size": {"type": "integer"},
        "page_count": {"type": "integer"},
        "journal_mode": {"type": "string"},
        "sqlite_version": {"type": "string"},
        "mode": {"type": "integer"},
        "snapshot_started_at": {"type": "number"},
        "snapshot_at": {"type": "number"},
        "stream": {"type": "object"},
    },
    "required": ["path", "size", "page_count", "sqlite_version", "snapshot_at", "stream"],
}


def is_sqlite_file(path: str) -> bool:
    if path.endswith(COMPANION_SUFFIXES):
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(len(HEADER)) == HEADER
    except OSError:
        return False


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open an existing database only (never create one by mistake)."""
    mode = "ro" if readonly else "rw"
    uri = "file:" + _quote_path(path) + f"?mode={mode}"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)


def _quote_path(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


class SQLiteProtectable(Protectable):
    config_keys = CONFIG_KEYS

    def get_resource_type(self) -> str:
        return TYPE

    def get_parent_resource_types(self) -> list[str]:
        return [DIRECTORY_TYPE]

    def list_resources(self, context, parameters=None) -> list[Resource]:
        paths = self.config.get_list(SECTION, "paths") if self.config else []
        return [self.show_resource(context, p) for p in paths]

    def show_resource(self, context, resource_id: str) -> Resource:
        if not os.path.isabs(resource_id):
            raise ResourceError(f"{TYPE} ids are absolute paths, not {resource_id!r}")
        path = os.path.normpath(resource_id)
        if not os.path.isfile(path):
            raise ResourceError(f"{TYPE} {path!r}: no such file")
        if not is_sqlite_file(path):
            raise ResourceError(f"{TYPE} {path!r}: not a SQLite 3 database (header differs)")
        return Resource(
            TYPE,
            path,
            name=os.path.basename(path),
            extra_info={
                "host": socket.gethostname(),
                # Files a folder copy must leave alone too: they belong to this database.
                "companions": [path + s for s in COMPANION_SUFFIXES],
            },
        )

    def get_dependent_resources(self, context, parent_resource: Resource) -> list[Resource]:
        """The SQLite files under a directory (sorted, symlinks not followed)."""
        if parent_resource.type != DIRECTORY_TYPE:
            return []
        found: list[Resource] = []
        for dirpath, dirnames, filenames in os.walk(parent_resource.id):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                if os.path.islink(full) or not is_sqlite_file(full):
                    continue
                found.append(self.show_resource(context, full))
        return found


class ProtectSQLite(Operation):
    """Snapshot in prepare_finish (short, inside the parents' window), stream in main."""

    def __init__(self, snapshot_dir: str | None):
        self.snapshot_dir = snapshot_dir
        self.snapshot: str | None = None
        self.info: dict[str, Any] = {}

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs):
        path = resource.id
        if not os.path.isfile(path):
            raise ResourceError(f"{TYPE} {path!r} no longer exists")
        fd, snapshot = tempfile.mkstemp(
            prefix=".tutela-sqlite-", suffix=".snapshot", dir=self.snapshot_dir
        )
        os.close(fd)
        self.snapshot = snapshot
        started = time.time()
        src = _connect(path, readonly=False)
        try:
            dst = sqlite3.connect(snapshot, isolation_level=None)
            try:
                # One step (pages=-1): the copy holds a read lock for its whole duration, so it
                # is one consistent image; writers wait at most that long (or not at all in WAL).
                src.backup(dst)
                journal_mode = src.execute("PRAGMA journal_mode").fetchone()[0]
                page_size = dst.execute("PRAGMA page_size").fetchone()[0]
                page_count = dst.execute("PRAGMA page_count").fetchone()[0]
            finally:
                dst.close()
        except sqlite3.Error as exc:
            raise TutelaError(f"{TYPE} {path!r}: online backup failed: {exc}") from None
        finally:
            src.close()
        done = time.time()
        st = os.stat(path)
        self.info = {
            "path": path,
            "host": resource.extra_info.get("host", socket.gethostname()),
            "size": os.path.getsize(snapshot),
            "page_size": page_size,
            "page_count": page_count,
            "journal_mode": journal_mode,
            "sqlite_version": sqlite3.sqlite_version,
            "mode": stat.S_IMODE(st.st_mode),
            "snapshot_started_at": started,
            "snapshot_at": done,
        }

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        if self.snapshot is None:
            raise TutelaError(f"{TYPE} {resource.id!r}: no snapshot was taken in prepare_finish")
        with open(self.snapshot, "rb") as fh:
            ref = save_stream(checkpoint, context, "database", fh)
        checkpoint.bank_section.put_json("metadata", {**self.info, "stream": ref})

    def on_complete(self, checkpoint, context, resource, parameters, **kwargs):
        self._drop_snapshot()

    def on_abort(self, checkpoint, context, resource, parameters, error=None, **kwargs):
        self._drop_snapshot()

    def _drop_snapshot(self) -> None:
        if self.snapshot and os.path.exists(self.snapshot):
            os.unlink(self.snapshot)
        self.snapshot = None


def restore_destination(checkpoint, context, resource: Resource, parameters) -> str:
    """`target`, else the same relative path under a relocated parent directory, else the
    original path.  The parent directory's prepare_begin has run before any of our hooks, so
    its new location is already in `context.new_resources`."""
    if parameters.get("target"):
        return os.path.abspath(parameters["target"])
    graph = checkpoint.resource_graph
    index = graph.index(resource)
    for parent_index in graph.parents[index]:
        parent = graph.nodes[parent_index]
        if parent.type != DIRECTORY_TYPE:
            continue
        new = context.new_resources.get(parent.key)
        if new is None:
            continue
        new_id = new.id if isinstance(new, Resource) else str(new.get("id"))
        rel = os.path.relpath(resource.id, parent.id)
        if not rel.startswith(".."):
            return os.path.join(new_id, rel)
    return resource.id


class RestoreSQLite(Operation):
    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        try:
            info = checkpoint.bank_section.get_json("metadata")
        except ObjectNotFound:
            raise TutelaError(
                f"{resource.key}: checkpoint {checkpoint.id} holds no data for it"
            ) from None
        dest = restore_destination(checkpoint, context, resource, parameters)
        overwrite = bool(parameters.get("overwrite", False))
        if os.path.lexists(dest):
            if not overwrite:
                raise TutelaError(
                    f"restore destination {dest!r} exists; set overwrite: true to replace it"
                )
            if os.path.isdir(dest) and not os.path.islink(dest):
                raise TutelaError(f"restore destination {dest!r} is a directory")
        folder = os.path.dirname(dest)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tutela-restore-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                for block in open_stream(checkpoint, context, info["stream"]):
                    fh.write(block)
                fh.flush()
                os.fsync(fh.fileno())
            self._check(tmp, dest)
            if "mode" in info:
                os.chmod(tmp, info["mode"])
            # A stale -wal/-journal left next to the old file would be replayed onto ours.
            for suffix in COMPANION_SUFFIXES:
                companion = dest + suffix
                if os.path.lexists(companion):
                    os.unlink(companion)
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if dest != resource.id:
            context.set_new_resource(resource, Resource(TYPE, dest, name=os.path.basename(dest)))

    @staticmethod
    def _check(path: str, dest: str) -> None:
        try:
            conn = _connect(path, readonly=False)
            try:
                rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise TutelaError(f"restored database for {dest!r} cannot be opened: {exc}") from None
        finally:
            for suffix in COMPANION_SUFFIXES:
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
        if rows != ["ok"]:
            raise TutelaError(
                f"restored database for {dest!r} fails PRAGMA integrity_check: "
                + "; ".join(rows[:5])
            )


class DeleteSQLite(Operation):
    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        delete_streams(checkpoint)


class SQLiteProtectionPlugin(ProtectionPlugin):
    config_keys = CONFIG_KEYS

    def get_supported_resources_types(self) -> list[str]:
        return [TYPE]

    def get_protectables(self) -> list[Protectable]:
        """The provider takes the protectable from here: `plugin = ...` alone is enough."""
        return [SQLiteProtectable(self.config)]

    def get_options_schema(self, resource_type: str) -> dict[str, Any]:
        return OPTIONS_SCHEMA

    def get_restore_schema(self, resource_type: str) -> dict[str, Any]:
        return RESTORE_SCHEMA

    def get_saved_info_schema(self, resource_type: str) -> dict[str, Any]:
        return SAVED_INFO_SCHEMA

    def get_protect_operation(self, resource: Resource) -> Operation:
        folder = self.config.get_path(SECTION, "snapshot_dir") if self.config else None
        return ProtectSQLite(str(folder) if folder else None)

    def get_restore_operation(self, resource: Resource) -> Operation:
        return RestoreSQLite()

    def get_delete_operation(self, resource: Resource) -> Operation:
        return DeleteSQLite()


__all__ = ["TYPE", "SQLiteProtectable", "SQLiteProtectionPlugin", "is_sqlite_file"]
