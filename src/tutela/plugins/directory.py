"""`Tutela::Directory`: a directory tree on the local filesystem.

Resources are named by absolute path.  Protect streams every regular file's bytes into the
resource's bank section with a SHA-256 per file, and records the tree (files, folders, symlinks,
empty files, modes and mtimes) in a manifest.  Restore writes the tree to its original path or
to a `target`, refusing a non-empty target unless `overwrite: true`, and verifies every file's
checksum on the way back.  Delete removes the checkpoint's data.

Config section `[directory]` (optional): `paths` — directories `tutela resources` lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tutela.errors import ObjectNotFound, ResourceError, TutelaError
from tutela.plugin import Operation, Protectable, ProtectionPlugin
from tutela.resource import Resource

TYPE = "Tutela::Directory"
BLOCK = 1 << 20

OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "exclude": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Paths relative to the directory to leave out (a folder excludes its tree).",
        },
    },
    "additionalProperties": False,
}
RESTORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "target": {
            "type": "string",
            "minLength": 1,
            "description": "Where to restore (default: the original path).",
        },
        "overwrite": {
            "type": "boolean",
            "default": False,
            "description": "Restore into a non-empty target.",
        },
    },
    "additionalProperties": False,
}
SAVED_INFO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "host": {"type": "string"},
        "files": {"type": "integer", "minimum": 0},
        "directories": {"type": "integer", "minimum": 0},
        "symlinks": {"type": "integer", "minimum": 0},
        "bytes": {"type": "integer", "minimum": 0},
        "skipped": {"type": "array", "items": {"type": "string"}},
        "changed_while_read": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["path", "files", "bytes"],
}


def normalise(path: str) -> str:
    if not os.path.isabs(path):
        raise ResourceError(f"{TYPE} ids are absolute paths (or HOST:/path), not {path!r}")
    return os.path.normpath(path)


def split_host(resource_id: str) -> tuple[str | None, str]:
    """`HOST:/path` names a folder on another host (its hooks run there, see the dask
    executor); a plain `/path` is on this host."""
    head, sep, tail = resource_id.partition(":")
    if sep and tail.startswith("/") and "/" not in head and head:
        return head, tail
    return None, resource_id


def local_path(resource: Resource) -> str:
    return split_host(resource.id)[1]


class DirectoryProtectable(Protectable):
    def get_resource_type(self) -> str:
        return TYPE

    def get_parent_resource_types(self) -> list[str]:
        return []

    def list_resources(self, context, parameters=None) -> list[Resource]:
        paths = self.config.get_list("directory", "paths") if self.config else []
        return [self.show_resource(context, p) for p in paths]

    def show_resource(self, context, resource_id: str) -> Resource:
        host, path = split_host(resource_id)
        path = normalise(path)
        here = socket.gethostname()
        if (host is None or host == here) and not os.path.isdir(path):
            raise ResourceError(f"{TYPE} {path!r}: no such directory")
        rid = path if host is None else f"{host}:{path}"
        return Resource(
            TYPE, rid, name=os.path.basename(path) or path, extra_info={"host": host or here}
        )


def _walk(root: str, exclude: set[str]) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every entry below root, parents before children, sorted."""
    stack = [""]
    while stack:
        rel = stack.pop()
        folder = os.path.join(root, rel) if rel else root
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            if child in exclude:
                continue
            st = entry.stat(follow_symlinks=False)
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(child)
        stack.extend(reversed(subdirs))


class ProtectDirectory(Operation):
    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        root = local_path(resource)
        if not os.path.isdir(root):
            raise ResourceError(f"{TYPE} {root!r} no longer exists")
        section = checkpoint.bank_section
        exclude = {p.strip("/") for p in parameters.get("exclude", [])}
        # Files that are resources of their own in this graph (e.g. a SQLite database under
        # the folder) are protected by their own plugin, consistently; not copied raw here.
        for dep in checkpoint.dependents():
            dep_path = split_host(dep.id)[1]
            if dep_path.startswith(root.rstrip("/") + "/"):
                exclude.add(os.path.relpath(dep_path, root))
        st = os.stat(root)
        manifest: list[dict[str, Any]] = [
            {
                "path": ".",
                "type": "dir",
                "mode": stat.S_IMODE(st.st_mode),
                "mtime_ns": st.st_mtime_ns,
            }
        ]
        counts = {"files": 0, "directories": 0, "symlinks": 0, "bytes": 0}
        skipped: list[str] = []
        changed: list[str] = []
        for rel, st in _walk(root, exclude):
            full = os.path.join(root, rel)
            mode = st.st_mode
            entry: dict[str, Any] = {
                "path": rel,
                "mode": stat.S_IMODE(mode),
                "mtime_ns": st.st_mtime_ns,
            }
            if stat.S_ISDIR(mode):
                entry["type"] = "dir"
                counts["directories"] += 1
            elif stat.S_ISLNK(mode):
                entry["type"] = "symlink"
                entry["target"] = os.readlink(full)
                counts["symlinks"] += 1
            elif stat.S_ISREG(mode):
                key = f"files/{counts['files']:08d}"
                digest, size, torn = self._store_file(section, key, full, st, context)
                if torn:
                    changed.append(rel)
                entry.update(type="file", size=size, sha256=digest, object=key)
                counts["files"] += 1
                counts["bytes"] += size
            else:
                skipped.append(rel)
                continue
            manifest.append(entry)
        section.update_object_stream(
            "manifest.jsonl", (json.dumps(e).encode() + b"\n" for e in manifest)
        )
        info = {
            "path": root,
            "host": resource.extra_info.get("host", socket.gethostname()),
            **counts,
        }
        if skipped:
            info["skipped"] = skipped
        if changed:
            info["changed_while_read"] = changed
            context.progress.message(
                f"{resource.key}: files changed while read: {', '.join(changed[:5])}"
            )
        section.put_json("metadata", info)

    @staticmethod
    def _store_file(
        section, key: str, path: str, before: os.stat_result, context
    ) -> tuple[str, int, bool]:
        """Stream one file; re-read once if it changed while read, then report it as torn."""
        for attempt in range(2):
            digest = hashlib.sha256()
            size = 0

            def blocks(fh, digest=digest):
                nonlocal size
                while block := fh.read(BLOCK):
                    digest.update(block)
                    size += len(block)
                    context.report_bytes(len(block))
                    yield block

            with open(path, "rb") as fh:
                section.update_object_stream(key, blocks(fh))
            after = os.stat(path, follow_symlinks=False)
            if after.st_size == size == before.st_size and after.st_mtime_ns == before.st_mtime_ns:
                return digest.hexdigest(), size, False
            before = after
            if attempt == 0:
                continue
        return digest.hexdigest(), size, True


def _safe_rel(rel: str) -> str:
    parts = rel.split("/")
    if rel == "." or (
        rel and not os.path.isabs(rel) and all(p not in ("", ".", "..") for p in parts)
    ):
        return rel
    raise TutelaError(f"manifest entry {rel!r} is not a safe relative path; refusing to restore it")


class RestoreDirectory(Operation):
    """prepare_begin claims the target (before any dependent, e.g. a database file inside it,
    writes there); main writes the tree."""

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        target = os.path.abspath(parameters.get("target") or local_path(resource))
        overwrite = bool(parameters.get("overwrite", False))
        if os.path.lexists(target) and not os.path.isdir(target):
            raise TutelaError(f"restore target {target!r} exists and is not a directory")
        if os.path.isdir(target) and os.listdir(target) and not overwrite:
            raise TutelaError(
                f"restore target {target!r} is not empty; set overwrite: true to restore into it"
            )
        os.makedirs(target, exist_ok=True)
        if target != local_path(resource):
            host = split_host(resource.id)[0]
            new_id = target if host is None else f"{host}:{target}"
            context.set_new_resource(
                resource, Resource(TYPE, new_id, name=os.path.basename(target))
            )

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        section = checkpoint.bank_section
        target = os.path.abspath(parameters.get("target") or local_path(resource))
        os.makedirs(target, exist_ok=True)
        real_target = os.path.realpath(target)
        try:
            lines = b"".join(section.get_object_stream("manifest.jsonl")).splitlines()
        except ObjectNotFound:
            raise TutelaError(
                f"{resource.key}: checkpoint {checkpoint.id} has no manifest for it"
            ) from None
        dirs: list[tuple[str, dict[str, Any]]] = []
        checked: set[str] = set()

        def confined(path: str) -> str:
            parent = os.path.dirname(path)
            if parent not in checked:
                real = os.path.realpath(parent)
                if real != real_target and not real.startswith(real_target + os.sep):
                    raise TutelaError(
                        f"refusing to restore {path!r}: a parent is a link out of {target!r}"
                    )
                checked.add(parent)
            return path

        for line in lines:
            entry = json.loads(line)
            rel = _safe_rel(entry["path"])
            dest = target if rel == "." else confined(os.path.join(target, rel))
            kind = entry["type"]
            if kind == "dir":
                if os.path.islink(dest) or (os.path.lexists(dest) and not os.path.isdir(dest)):
                    os.unlink(dest)
                os.makedirs(dest, exist_ok=True)
                dirs.append((dest, entry))
            elif kind == "symlink":
                if os.path.lexists(dest):
                    _remove(dest)
                os.symlink(entry["target"], dest)
                os.utime(dest, ns=(entry["mtime_ns"], entry["mtime_ns"]), follow_symlinks=False)
            elif kind == "file":
                self._restore_file(section, entry, dest, context)
        for dest, entry in reversed(dirs):
            os.chmod(dest, entry["mode"])
            os.utime(dest, ns=(entry["mtime_ns"], entry["mtime_ns"]))

    @staticmethod
    def _restore_file(section, entry: dict[str, Any], dest: str, context) -> None:
        folder = os.path.dirname(dest)
        fd, tmp = tempfile.mkstemp(prefix=".tutela-restore-", dir=folder)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as fh:
                for block in section.get_object_stream(entry["object"]):
                    digest.update(block)
                    fh.write(block)
                    context.report_bytes(len(block))
            if digest.hexdigest() != entry["sha256"]:
                raise TutelaError(
                    f"checksum mismatch restoring {entry['path']!r}: the bank's copy is damaged"
                )
            os.chmod(tmp, entry["mode"])
            os.utime(tmp, ns=(entry["mtime_ns"], entry["mtime_ns"]))
            if os.path.isdir(dest) and not os.path.islink(dest):
                _remove(dest)
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        import shutil

        shutil.rmtree(path)
    else:
        os.unlink(path)


class DeleteDirectory(Operation):
    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        checkpoint.bank_section.delete_all()


class DirectoryProtectionPlugin(ProtectionPlugin):
    def get_supported_resources_types(self) -> list[str]:
        return [TYPE]

    def get_options_schema(self, resource_type: str) -> dict[str, Any]:
        return OPTIONS_SCHEMA

    def get_restore_schema(self, resource_type: str) -> dict[str, Any]:
        return RESTORE_SCHEMA

    def get_saved_info_schema(self, resource_type: str) -> dict[str, Any]:
        return SAVED_INFO_SCHEMA

    def get_protect_operation(self, resource: Resource) -> Operation:
        return ProtectDirectory()

    def get_restore_operation(self, resource: Resource) -> Operation:
        return RestoreDirectory()

    def get_delete_operation(self, resource: Resource) -> Operation:
        return DeleteDirectory()


__all__ = ["TYPE", "DirectoryProtectable", "DirectoryProtectionPlugin", "Path"]
