"""`Tutela::Directory`: a directory tree on the local filesystem (or, as `HOST:/path`, on the
host whose Dask worker runs its hooks).

Protect stores every regular file's bytes in the bank's content store (deduplicated across
files, resources and checkpoints, compressed, optionally encrypted) and records the tree —
files, folders, symlinks, empty files, FIFOs and device nodes (their major and minor numbers;
no data is read from them), modes, mtimes — in a manifest.  Sockets are left out (`skipped`),
as GNU tar does: one means nothing without its server.  It is incremental forever: a file
whose path, size, mtime and inode match the previous available checkpoint of the same
resource is not read again; its chunk list is taken over.  A file that changes while it is
read is read once more and, if it changes again, recorded as `changed_while_read`.  The
names of a hard-linked file (or FIFO, or device) are read once: later names carry `link`, the
first one's path.
Files left out (unreadable, deleted while read) or saved mid-change make the protect report a
warning (`context.warn`, counts only): the checkpoint is available but incomplete.

Restore writes the tree (or only `paths` inside it) to its original path or to a `target`,
refusing a non-empty target unless `overwrite: true`; every chunk is verified on the way back.
As root it gives entries their recorded owner (`owner: false` does not); a file whose owner
is not restored loses its setuid and setgid bits.  Holes stay holes.  Hard links are made
again among the names restored (a name that cannot be linked is written as a file).  Where the
restored tree differs from the checkpoint (a name written as a file, an owner root could not
give, or any owner when `owner: true` was asked for) the restore warns (`context.warn`, counts
only; `tutela restore` exits 3).  Files whose data is damaged are not written; the rest of
the tree is, and the restore then fails naming them.  FIFOs and device nodes are made again;
one the restore may not create (EPERM: a device needs root, CAP_MKNOD) is left out with a
warning.
Delete removes the checkpoint's data; the provider then frees chunks nobody refers to.

Config section `[directory]` (optional): `paths` — directories `tutela resources` lists.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tutela.contentstore import (
    ContentStoreError,
    CorruptDataError,
    FileRef,
    LocalFile,
    MissingChunkError,
)
from tutela.errors import ObjectNotFound, ResourceError, TutelaError
from tutela.plugin import Operation, Protectable, ProtectionPlugin
from tutela.resource import Resource

TYPE = "Tutela::Directory"
SECTION = "directory"
#: The keys of `[directory]`, declared by the plugin and its protectable.
CONFIG_KEYS = {SECTION: frozenset({"paths"})}
#: Files restored at once.
RESTORE_THREADS = 2
#: Small files are handed to the restore threads in batches of up to this many files / bytes.
RESTORE_BATCH_FILES = 32
RESTORE_BATCH_BYTES = 2 << 20
#: Aligned blocks of this many zero bytes are left as holes in restored files (sparse files
#: stay sparse).  Space is not allocated ahead (posix_fallocate): that filled every hole.
HOLE_BLOCK = 4096
ZERO_BLOCK = bytes(HOLE_BLOCK)
#: Files restored with damaged data are named in the error, this many of them at most.
DAMAGED_SHOWN = 5

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
        "paths": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Restore only these paths (relative to the directory; a folder "
            "brings its tree; `.`, `/` or an empty string: the whole tree).",
        },
        "owner": {
            "type": "boolean",
            "default": True,
            "description": "Give files, folders, symlinks, FIFOs and devices their recorded "
            "owner and group "
            "(when running as root).  A setuid or setgid file whose owner is not restored "
            "loses those bits.  As root, or when given as true, an entry left without its "
            "owner is counted in a warning; by default another user keeps its own uid.",
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
        "reused_files": {"type": "integer", "minimum": 0},
        "read_bytes": {"type": "integer", "minimum": 0},
        "hard_links": {
            "type": "integer",
            "minimum": 1,
            "description": "Files recorded as a hard link to another name in the tree (its "
            "data, not read again; counted in `files` too), and FIFOs and devices recorded as "
            "a hard link to another (counted in `special_files` too).",
        },
        "special_files": {
            "type": "integer",
            "minimum": 1,
            "description": "FIFOs and character and block devices recorded (type, mode, "
            "owner, mtime and a device's numbers; they hold no data to read).",
        },
        "previous_checkpoint": {"type": ["string", "null"]},
        "ignored_previous_checkpoint": {
            "type": "string",
            "description": "The previous checkpoint whose manifest could not be read: every "
            "file was read again.",
        },
        # Only counts here: this object is in the bank in the clear.  The names are in the
        # encrypted details object (DETAILS_SCHEMA, `details.ref`; see saved_details).
        "skipped_count": {
            "type": "integer",
            "minimum": 1,
            "description": "Entries left out by design: sockets (meaningless without their "
            "server, as GNU tar has it).  Checkpoints made before FIFOs and devices were "
            "recorded count those here too.",
        },
        "changed_while_read_count": {"type": "integer", "minimum": 1},
        "vanished_count": {"type": "integer", "minimum": 1},
        "unreadable_count": {
            "type": "integer",
            "minimum": 1,
            "description": "Files and folders left out: permission denied.",
        },
    },
    "required": ["path", "files", "bytes"],
}
#: The lists behind the `*_count`s, stored encrypted in the content store (`details.ref`).
DETAILS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "skipped": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Sockets left out (and, in older checkpoints, FIFOs and devices).",
        },
        "changed_while_read": {"type": "array", "items": {"type": "string"}},
        "vanished": {"type": "array", "items": {"type": "string"}},
        "unreadable": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "error": {"type": "string"}},
                "required": ["path", "error"],
            },
        },
    },
    "additionalProperties": False,
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
    config_keys = CONFIG_KEYS

    def get_resource_type(self) -> str:
        return TYPE

    def get_parent_resource_types(self) -> list[str]:
        return []

    def list_resources(self, context, parameters=None) -> list[Resource]:
        paths = self.config.get_list(SECTION, "paths") if self.config else []
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


class _Unreadable:
    """What `_walk` yields in place of an lstat for an entry it may not read (EACCES): with
    no file-type bits it takes the protect loop's rare branch, so readable entries pay no
    check.  A folder that cannot be listed is yielded a second time, as this."""

    __slots__ = ("error",)
    st_mode = 0
    st_mtime_ns = 0
    st_uid = 0
    st_gid = 0

    def __init__(self, error: OSError):
        self.error = error


def _walk(root: str, exclude: set[str]) -> Iterator[tuple[str, os.stat_result | _Unreadable]]:
    """(relative path, lstat) of every entry below root, parents before children, sorted.
    An entry below root that permission keeps from being read (lstat, or listing a folder)
    comes as an `_Unreadable`; root itself must be listable.  An entry deleted while the tree
    is listed (between a folder's listing and its lstat, or a folder before it is listed) is
    left out, as if it had been deleted just before."""
    stack = [""]
    while stack:
        rel = stack.pop()
        folder = os.path.join(root, rel) if rel else root
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError as exc:
            if not rel:
                raise
            yield rel, _Unreadable(exc)
            continue
        except (FileNotFoundError, NotADirectoryError):
            if not rel:
                raise
            continue  # (its entry, already yielded, is written as an empty folder)
        subdirs = []
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            if child in exclude:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except PermissionError as exc:
                yield child, _Unreadable(exc)
                continue
            except FileNotFoundError:
                continue  # deleted since the folder was listed
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(child)
        stack.extend(reversed(subdirs))


def read_manifest(section, store) -> list[dict[str, Any]]:
    """The tree's entries.  The manifest itself lives in the content store (compressed,
    deduplicated across checkpoints, and encrypted when the store is), so file names and
    sizes are never in the bank in the clear; the section keeps only its reference."""
    try:
        ref = FileRef.from_json(section.get_json("manifest.ref"))
    except ObjectNotFound:
        return []
    data = b"".join(store.read(ref)).strip(b"\n")
    if not data:
        return []
    try:  # one JSON array: parsed in one C call, about twice as fast as line by line
        return json.loads(b"[" + data.replace(b"\n", b",") + b"]")
    except ValueError:
        return [json.loads(line) for line in data.splitlines() if line.strip()]


def _previous_entries(section, store) -> dict[str, dict[str, Any]]:
    """The previous checkpoint's entries by path; raises whatever makes them unusable."""
    old = {}
    for e in read_manifest(section, store):
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            raise ValueError(f"a manifest entry is a {type(e).__name__}, not an object with a path")
        old[e["path"]] = e
    return old


#: Why a previous checkpoint's manifest may be unusable: damaged or missing chunks or packs
#: (content-store and bank errors are TutelaErrors), or wrong data in it.
_UNUSABLE_MANIFEST = (TutelaError, OSError, ValueError, KeyError, TypeError)


def read_details(section, store) -> dict[str, Any]:
    """The name lists of a protect (DETAILS_SCHEMA: skipped, changed_while_read, vanished,
    unreadable), from the encrypted object the section refers to; {} if it has none."""
    try:
        ref = FileRef.from_json(section.get_json("details.ref"))
    except ObjectNotFound:
        return {}
    return json.loads(store.read_bytes(ref))


def _same_file(old: dict[str, Any] | None, st: os.stat_result) -> bool:
    return bool(
        old
        and old.get("type") == "file"
        and "ref" in old
        and not old.get("changed_while_read")
        and old.get("size") == st.st_size
        and old.get("mtime_ns") == st.st_mtime_ns
        and old.get("ino") == st.st_ino
    )


def _unchanged(before: os.stat_result, after: os.stat_result) -> bool:
    return before.st_size == after.st_size and before.st_mtime_ns == after.st_mtime_ns


class ProtectDirectory(Operation):
    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        root = local_path(resource)
        if not os.path.isdir(root):
            raise ResourceError(f"{TYPE} {root!r} no longer exists")
        section = checkpoint.bank_section
        # Opening the store derives its key (scrypt: tens of ms, without the interpreter
        # lock): on a first protect it runs while the tree is listed.
        opener = ThreadPoolExecutor(1, thread_name_prefix="tutela-open-store")
        opening = opener.submit(lambda: context.content_store)
        opener.shutdown(wait=False)
        exclude = {p.strip("/") for p in parameters.get("exclude", [])}
        # Files that are resources of their own in this graph (e.g. a SQLite database under
        # the folder) are protected by their own plugin, consistently; not copied raw here.
        # Their companion files (a SQLite -wal, -shm or -journal) are theirs too: a stale copy
        # next to the consistent restored database would be replayed into it.
        for dep in checkpoint.dependents():
            for dep_path in (split_host(dep.id)[1], *dep.extra_info.get("companions", ())):
                if dep_path.startswith(root.rstrip("/") + "/"):
                    exclude.add(os.path.relpath(dep_path, root))
        previous = context.previous_checkpoint(resource)
        ignored_previous = None
        old: dict[str, dict[str, Any]] = {}
        if previous is not None:
            store = opening.result()
            store.hold()  # before taking over chunks of an earlier checkpoint
            try:
                old = _previous_entries(previous.resource_section(resource, writable=False), store)
            except _UNUSABLE_MANIFEST as exc:
                # A damaged previous checkpoint must not block every later protect: this
                # one reads every file, as if there were none.
                context.progress.message(
                    f"{resource.key}: the manifest of the previous checkpoint {previous.id} "
                    f"cannot be read ({type(exc).__name__}: {exc}); reading every file again"
                )
                ignored_previous, previous = previous.id, None
            damaged = store.damaged_chunks()
            if damaged:  # found by a verify or restore: read those files again, to heal
                stale = [
                    e
                    for e in old.values()
                    if any(c in damaged for c, _ in e.get("ref", {}).get("chunks", ()))
                ]
                for e in stale:
                    del e["ref"]
                if stale:
                    context.progress.message(
                        f"{resource.key}: {len(stale)} file(s) of the previous checkpoint have "
                        "damaged data in the bank; reading them again"
                    )
        st = os.stat(root)
        entries: list[dict[str, Any]] = [
            {
                "path": ".",
                "type": "dir",
                "mode": stat.S_IMODE(st.st_mode),
                "mtime_ns": st.st_mtime_ns,
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
        ]
        counts = {
            "files": 0,
            "directories": 0,
            "symlinks": 0,
            "bytes": 0,
            "reused_files": 0,
            "read_bytes": 0,
            "hard_links": 0,
            "special_files": 0,
        }
        skipped: list[str] = []
        unreadable: list[tuple[str, OSError]] = []
        dir_at: dict[str, int] = {}  # folder -> its entry, to drop it if it cannot be listed
        dropped: set[int] = set()
        todo: dict[int, tuple[LocalFile, os.stat_result]] = {}
        # Hard links: the entry of each inode's first name, the entries of its later names
        # (by the first's), and their lstat.
        first_name: dict[tuple[int, int], int] = {}
        later_names: dict[int, list[int]] = {}
        walked: dict[int, tuple[str, os.stat_result]] = {}
        special_first: dict[tuple[int, int], str] = {}  # ... and of FIFOs and devices: path

        # Files are read while the tree is still being listed: the store's workers read, hash,
        # compress and encrypt small files in C without the interpreter lock (native.py), so
        # the walk's Python work overlaps theirs.  (With the Python path it was slower: each
        # of the walk's lstat calls waited for the lock held by the workers.)
        read: set[int] = set()  # the entries whose file this protect reads

        prefix = root.rstrip("/") + "/"  # os.path.join(root, rel), cheaper per entry

        def listed() -> Iterator[tuple[int, LocalFile]]:
            """Walk the tree into `entries`; yield the files to read as they are listed."""
            for rel, st in _walk(root, exclude):
                if not len(entries) & 4095:  # a tree of unchanged files reads no data
                    context.check_cancelled()
                full = prefix + rel
                mode = st.st_mode
                entry: dict[str, Any] = {
                    "path": rel,
                    "mode": stat.S_IMODE(mode),
                    "mtime_ns": st.st_mtime_ns,
                    "uid": st.st_uid,
                    "gid": st.st_gid,
                }
                if stat.S_ISDIR(mode):
                    entry["type"] = "dir"
                    counts["directories"] += 1
                    dir_at[rel] = len(entries)
                elif stat.S_ISLNK(mode):
                    entry["type"] = "symlink"
                    entry["target"] = os.readlink(full)
                    counts["symlinks"] += 1
                elif stat.S_ISREG(mode):
                    entry.update(type="file", size=st.st_size, ino=st.st_ino)
                    counts["files"] += 1
                    counts["bytes"] += st.st_size
                    if st.st_nlink > 1:  # a hard link: its data is the first name's, read once
                        inode = (st.st_dev, st.st_ino)
                        first = first_name.setdefault(inode, len(entries))
                        if first != len(entries):
                            later_names.setdefault(first, []).append(len(entries))
                            walked[len(entries)] = (full, st)
                            entries.append(entry)
                            continue
                    prior = old.get(rel)
                    if _same_file(prior, st):
                        entry["ref"] = prior["ref"]  # type: ignore[index]
                        counts["reused_files"] += 1
                    else:
                        index = len(entries)
                        todo[index] = (LocalFile(full, st.st_size), st)
                        read.add(index)
                        entries.append(entry)
                        yield index, todo[index][0]
                        continue
                elif type(st) is _Unreadable:  # permission denied: left out, reported
                    at = dir_at.pop(rel, None)
                    if at is not None:  # a folder listed in its parent that cannot be listed
                        dropped.add(at)
                        counts["directories"] -= 1
                    unreadable.append((rel, st.error))
                    continue
                elif stat.S_ISFIFO(mode):  # recorded, never opened: opening a FIFO would block
                    entry["type"] = "fifo"
                    counts["special_files"] += 1
                    _link_special(entry, st, special_first, counts)
                elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    entry["type"] = "chardev" if stat.S_ISCHR(mode) else "blockdev"
                    entry["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
                    counts["special_files"] += 1
                    _link_special(entry, st, special_first, counts)
                else:  # a socket (or a type Linux does not have): left out by design
                    skipped.append(rel)
                    continue
                entries.append(entry)

        listing = listed()
        ahead: list[tuple[int, LocalFile]] = []
        for item in listing:  # listed while the store opens (its key derivation)
            ahead.append(item)
            if not len(ahead) % 16 and opening.done():  # (done() takes a lock: not each time)
                break
        store = opening.result()
        store.hold()
        sources = itertools.chain(ahead, listing)
        outcome = self._store_files(store, entries, sources, todo, counts, context)
        if later_names:
            self._link_names(store, entries, later_names, walked, read, counts, context, outcome)
        changed, vanished, denied = outcome
        gone = [entries[i] for i in sorted(vanished)]
        for i, error in denied.items():
            unreadable.append((entries[i]["path"], error))
        left_out = [entries[i] for i in sorted(vanished | set(denied))]
        if left_out or dropped:
            dropped.update(vanished, denied)
            entries = [e for i, e in enumerate(entries) if i not in dropped]
            counts["files"] -= len(left_out)
            counts["bytes"] -= sum(e["size"] for e in left_out)
        # The name lists go to the content store (encrypted when it is), like the manifest:
        # the section's `metadata` is in the clear, so it keeps only their counts.
        details: dict[str, Any] = {}
        if skipped:
            details["skipped"] = skipped
        if changed:
            details["changed_while_read"] = changed
        if gone:
            details["vanished"] = [e["path"] for e in gone]
        if unreadable:
            unreadable.sort(key=lambda item: item[0])
            details["unreadable"] = [
                {"path": rel, "error": error.strerror or str(error)} for rel, error in unreadable
            ]
        # One line of JSON per entry, as json.dumps writes it (one encoder for all: 20% less
        # time than a json.dumps call per entry, at the serial end of a protect).
        encode = json.JSONEncoder(check_circular=False).encode
        manifest = store.write_bytes(("\n".join(map(encode, entries)) + "\n").encode())
        details_ref = store.write_bytes(json.dumps(details).encode()) if details else None
        store.flush()  # the chunks are durable before anything refers to them
        chunk_ids = {c[0] for e in entries if "ref" in e for c in e["ref"]["chunks"]}
        chunk_ids.update(manifest.chunk_ids())
        if details_ref is not None:
            chunk_ids.update(details_ref.chunk_ids())
        section.update_object("content-chunks/tree", "\n".join(sorted(chunk_ids)))
        section.put_json("manifest.ref", manifest.to_json())
        if details_ref is not None:
            section.put_json("details.ref", details_ref.to_json())
        info = {
            "path": root,
            "host": resource.extra_info.get("host", socket.gethostname()),
            "previous_checkpoint": previous.id if previous is not None else None,
            **counts,
        }
        if ignored_previous is not None:
            info["ignored_previous_checkpoint"] = ignored_previous
        for key in ("hard_links", "special_files"):  # rare: only when there are some
            if not info[key]:
                del info[key]
        for key, names in details.items():
            info[f"{key}_count"] = len(names)
        if skipped:
            context.progress.message(
                f"{resource.key}: {len(skipped)} socket(s) left out (meaningless without their "
                "server): " + ", ".join(skipped[:5])
            )
        if unreadable:
            context.progress.message(
                f"{resource.key}: {len(unreadable)} file(s) or folder(s) could not be read, "
                "left out: "
                + ", ".join(f"{rel} ({error.strerror or error})" for rel, error in unreadable[:5])
            )
        if gone:
            context.progress.message(
                f"{resource.key}: {len(gone)} file(s) were deleted while the tree was read, "
                "left out: " + ", ".join(e["path"] for e in gone[:5])
            )
        if changed:
            context.progress.message(
                f"{resource.key}: {len(changed)} file(s) kept changing while read, recorded as such: "
                + ", ".join(changed[:5])
            )
        section.put_json("metadata", info)
        incomplete = {
            "unreadable": len(unreadable),
            "vanished": len(gone),
            "changed_while_read": len(changed),
        }
        if any(incomplete.values()):
            context.warn(
                resource, incomplete_message(incomplete), {k: n for k, n in incomplete.items() if n}
            )

    @classmethod
    def _link_names(
        cls, store, entries, later_names, walked, read, counts, context, outcome
    ) -> None:
        """Record the later names of each hard-linked file as links to its first name
        (`link`: the first name's path), with its data and metadata: one inode, read once.
        When the first name was left out (deleted or denied meanwhile) or is another file
        now (replaced while read), its later names are read on their own, the first of them
        becoming the first name of the rest.  `outcome` is `_store_files`'s (changed,
        vanished, denied), updated in place."""
        changed, vanished, denied = outcome
        groups = later_names
        while groups:
            again: dict[int, tuple[LocalFile, os.stat_result]] = {}
            retry: dict[int, list[int]] = {}
            for first, names in groups.items():
                head = entries[first]
                if first in vanished or first in denied or head["ino"] != entries[names[0]]["ino"]:
                    full, st = walked[names[0]]
                    again[names[0]] = (LocalFile(full, st.st_size), st)
                    if names[1:]:
                        retry[names[0]] = names[1:]
                    continue
                for i in names:
                    entries[i] = {**head, "path": entries[i]["path"], "link": head["path"]}
                counts["hard_links"] += len(names)
                if first not in read:  # taken over from the previous checkpoint
                    counts["reused_files"] += len(names)
                if head.get("changed_while_read"):
                    changed.extend(entries[i]["path"] for i in names)
            if not again:
                return
            read.update(again)
            sources = ((index, again[index][0]) for index in list(again))
            more, gone, refused = cls._store_files(store, entries, sources, again, counts, context)
            changed.extend(more)
            vanished.update(gone)
            denied.update(refused)
            groups = retry

    @staticmethod
    def _store_files(
        store, entries, sources, todo, counts, context
    ) -> tuple[list[str], set[int], dict[int, OSError]]:
        """Store new and changed files (pipelined); re-read once any file that changed while
        it was read.  Returns the files that changed on both reads, the entries of files
        deleted since the walk listed them (left out, like files deleted just before it), and
        those of files permission kept from being read, with the error (left out and
        reported); any other error reading a file fails the protect."""
        vanished: set[int] = set()
        denied: dict[int, OSError] = {}

        def gone(index: int, error: OSError) -> bool:
            if isinstance(error, FileNotFoundError):
                vanished.add(index)
            elif isinstance(error, PermissionError):
                denied[index] = error
            else:
                return False
            todo.pop(index, None)
            return True

        again: dict[int, tuple[str, os.stat_result]] = {}
        for index, ref in store.write_many(sources, on_error=gone, check=context.check_cancelled):
            source, before = todo.pop(index)
            full = source.path
            entries[index]["ref"] = ref.to_json()
            counts["read_bytes"] += ref.size
            context.report_bytes(ref.size)
            after = source.stat  # taken right after the read, when a worker read it
            if after is None:
                try:
                    after = os.stat(full, follow_symlinks=False)
                except FileNotFoundError:  # deleted after it was read: what was read stands
                    after = before
            if not _unchanged(before, after) or ref.size != before.st_size:
                again[index] = (full, after)
        changed = []
        for index, (full, before) in again.items():
            context.check_cancelled()
            try:
                ref = store.write_file(full)
            except (FileNotFoundError, PermissionError) as exc:
                gone(index, exc)
                continue
            try:
                after = os.stat(full, follow_symlinks=False)
            except FileNotFoundError:
                after = before
            entry = entries[index]
            entry.update(
                ref=ref.to_json(),
                size=ref.size,
                mtime_ns=after.st_mtime_ns,
                ino=after.st_ino,
                uid=after.st_uid,
                gid=after.st_gid,
            )
            counts["read_bytes"] += ref.size
            if not _unchanged(before, after) or ref.size != after.st_size:
                entry["changed_while_read"] = True
                changed.append(entry["path"])
        return changed, vanished, denied


def incomplete_message(counts: dict[str, int]) -> str:
    """The warning of a protect that left files out or saved them mid-change: counts only,
    since it is kept in the clear.  Sockets (`skipped`) are not in it: they are left out by
    design, and a tree that has one would otherwise never protect cleanly."""

    def files(n: int, folders: bool = False) -> str:
        noun = ("file or folder", "files or folders") if folders else ("file", "files")
        return f"{n} {noun[n != 1]}"

    parts = []
    if counts.get("unreadable"):
        parts.append(f"{files(counts['unreadable'], True)} unreadable (left out)")
    if counts.get("vanished"):
        parts.append(f"{files(counts['vanished'])} deleted while read (left out)")
    if counts.get("changed_while_read"):
        parts.append(
            f"{files(counts['changed_while_read'])} changed while read (saved, maybe inconsistent)"
        )
    return ", ".join(parts)


def _safe_rel(rel: str) -> str:
    parts = rel.split("/")
    if rel == "." or (
        rel and not os.path.isabs(rel) and all(p not in ("", ".", "..") for p in parts)
    ):
        return rel
    raise TutelaError(f"manifest entry {rel!r} is not a safe relative path; refusing to restore it")


def wanted_paths(paths: list[str]) -> list[str]:
    """The `paths` of a restore (or `checkpoints ls`) as manifest paths: relative to the
    tree, `./`, repeated and trailing slashes dropped (a leading `/` is the tree's root).
    `.`, `/` or `` means the whole tree: then the list is empty.  `..` is refused."""
    out: list[str] = []
    for path in paths:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise TutelaError(f"restore path {path!r} climbs out of the tree ('..' is not allowed)")
        if not parts:
            return []
        rel = "/".join(parts)
        if rel not in out:
            out.append(rel)
    return out


def _show(path: str) -> str:
    """A path for a message: as is, or quoted when it has a newline, control character or
    byte that is not UTF-8 (which could not be printed otherwise)."""
    return path if path.isprintable() else repr(path)


def _show_list(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(_show(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


#: Mode bits a file keeps only when its recorded owner and group are restored too.
_SETID = stat.S_ISUID | stat.S_ISGID


def _restore_owner(
    entry: dict[str, Any], owner: bool, *, fd: int | None = None, path: str | None = None
) -> bool:
    """Give the restored entry its recorded uid and gid (through `fd`, or `path` without
    following a link).  True when it now has them; False when they are not recorded (an
    older checkpoint), `owner` is false, or the process may not (only root may give a file
    away; anyone may keep their own uid and pick one of their groups) or the chown fails."""
    uid, gid = entry.get("uid"), entry.get("gid")
    if not owner or not isinstance(uid, int) or not isinstance(gid, int):
        return False
    euid = os.geteuid()
    if euid != 0 and uid != euid:
        return False
    try:
        if fd is not None:
            os.fchown(fd, uid, gid)
        else:
            os.lchown(path, uid, gid)  # type: ignore[arg-type]
    except OSError:
        return False
    return True


def _file_mode(entry: dict[str, Any], owned: bool) -> int:
    """The mode a restored regular file gets: as recorded, except that setuid and setgid
    are dropped when its owner was not restored (as cp and tar do): a restore run as root
    must not make a setuid-root file out of someone else's."""
    mode = entry["mode"]
    return mode if owned else mode & ~_SETID


class _Owners:
    """Gives restored entries their recorded owner, and keeps the entries it was expected to
    and could not: a difference from the checkpoint the restore warns about.  Expected when
    the restore runs as root, or when `owner: true` was asked for; by default a restore by
    another user keeps its own uid (documented), which is no warning.  Thread-safe: the
    restore threads append to `missed`, which a list does atomically."""

    __slots__ = ("expected", "missed", "restore")

    def __init__(self, restore: bool, expected: bool):
        self.restore = restore
        self.expected = restore and expected
        self.missed: list[str] = []

    def give(
        self, entry: dict[str, Any], *, fd: int | None = None, path: str | None = None
    ) -> bool:
        """`_restore_owner`, counting an entry with a recorded owner it did not get."""
        done = _restore_owner(entry, self.restore, fd=fd, path=path)
        if (
            not done
            and self.expected
            and isinstance(entry.get("uid"), int)
            and isinstance(entry.get("gid"), int)
        ):
            self.missed.append(entry["path"])
        return done


#: The manifest types of special files, and the file type each is made with.
_SPECIAL = {"fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK}


def _link_special(
    entry: dict[str, Any],
    st: os.stat_result,
    first: dict[tuple[int, int], str],
    counts: dict[str, int],
) -> None:
    """A later name of a FIFO or device with several names gets `link`, its first name's
    path, as a later name of a file does: the restore links it to the node it made, so the
    names stay one inode.  (A version without this makes each name on its own.)"""
    if st.st_nlink > 1:
        head = first.setdefault((st.st_dev, st.st_ino), entry["path"])
        if head != entry["path"]:
            entry["link"] = head
            counts["hard_links"] += 1


def _restore_special(entry: dict[str, Any], dest: str, owners: _Owners) -> bool:
    """Create the FIFO or device node of a manifest entry at `dest` (0600 at first), then
    give it its owner, mode and mtime.  False when the system does not permit creating it
    (EPERM: a device without root or CAP_MKNOD, a file system without FIFOs): the restore
    leaves it out and warns.  A device entry without a valid `rdev` ([major, minor]) is an
    error: the manifest was not written by Tutela."""
    kind = _SPECIAL[entry["type"]]
    try:
        if kind == stat.S_IFIFO:
            os.mkfifo(dest, 0o600)
        else:
            rdev = entry.get("rdev")
            if not (
                isinstance(rdev, list)
                and len(rdev) == 2
                and all(type(n) is int and 0 <= n < 1 << 32 for n in rdev)
            ):
                raise TutelaError(
                    f"manifest entry {entry['path']!r} is a device without a valid rdev "
                    f"([major, minor]): {rdev!r}; refusing to restore it"
                )
            os.mknod(dest, kind | 0o600, os.makedev(*rdev))
    except PermissionError as exc:
        if exc.errno != errno.EPERM:  # EACCES: the folder itself, a real error
            raise
        return False
    # Owner first: chown clears setuid and setgid; without it they are dropped.
    os.chmod(dest, _file_mode(entry, owners.give(entry, path=dest)))
    os.utime(dest, ns=(entry["mtime_ns"], entry["mtime_ns"]), follow_symlinks=False)
    return True


def restore_message(counts: dict[str, int]) -> str:
    """The warning of a restore whose tree differs from the checkpoint: counts only, since it
    is kept in the clear (the names go to progress messages)."""

    def n(count: int, one: str, many: str) -> str:
        return f"{count} {one if count == 1 else many}"

    parts = []
    if counts.get("hard_links_as_files"):
        parts.append(
            n(
                counts["hard_links_as_files"],
                "hard link written as a separate file",
                "hard links written as separate files",
            )
            + " (could not be linked)"
        )
    if counts.get("owner_not_restored"):
        parts.append(
            n(
                counts["owner_not_restored"],
                "entry without its recorded owner and group",
                "entries without their recorded owner and group",
            )
        )
    if counts.get("special_files_not_created"):
        parts.append(
            n(
                counts["special_files_not_created"],
                "device or FIFO not created (not permitted, left out)",
                "devices or FIFOs not created (not permitted, left out)",
            )
        )
    if counts.get("unknown_types"):
        parts.append(
            n(
                counts["unknown_types"],
                "entry of an unknown type left out (a newer Tutela wrote it)",
                "entries of an unknown type left out (a newer Tutela wrote them)",
            )
        )
    return ", ".join(parts)


def _write_sparse(fd: int, blocks, on_block) -> tuple[int, int]:
    """Write `blocks` to a new (empty) file, leaving every HOLE_BLOCK of zero bytes aligned
    in the file as a hole, also one that straddles two blocks.  Returns (bytes consumed,
    end of the last data written); the caller truncates the file to its size when the last
    data ends before it."""
    pos = data_end = 0  # pos: the file offset of the block's first byte
    zeros = 0  # zero bytes just before pos, from an aligned offset on, not written yet
    for block in blocks:
        if not isinstance(block, bytes):
            block = bytes(block)
        view = memoryview(block)
        size = len(block)
        start = 0  # where (in block) the bytes not handled yet start
        if zeros:
            need = HOLE_BLOCK - zeros
            if block.startswith(ZERO_BLOCK[: min(need, size)]):  # still zeros: a hole so far
                if size < need:
                    zeros += size
                    pos += size
                    on_block(size)
                    continue
                start, zeros = need, 0
            else:
                _pwrite_all(fd, memoryview(ZERO_BLOCK)[:zeros], pos - zeros)
                data_end, zeros = pos, 0
        run = start  # where (in block) the data not written yet starts
        i = start + (-(pos + start) % HOLE_BLOCK)  # the first block aligned in the file
        # The common case: not one block's worth of zeros anywhere (a search in C).
        if ZERO_BLOCK not in block:
            if i < size:
                i += (size - i) // HOLE_BLOCK * HOLE_BLOCK
        else:
            while i + HOLE_BLOCK <= size:
                if block.startswith(ZERO_BLOCK, i):
                    if run < i:
                        _pwrite_all(fd, view[run:i], pos + run)
                        data_end = pos + i
                    run = i + HOLE_BLOCK
                i += HOLE_BLOCK
        if i < size and block.startswith(ZERO_BLOCK[: size - i], i):
            zeros = size - i  # an aligned tail of zeros: a hole if the next block goes on so
            size_written = i
        else:
            size_written = size
        if run < size_written:
            _pwrite_all(fd, view[run:size_written], pos + run)
            data_end = pos + size_written
        pos += size
        on_block(size)
    return pos, data_end


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class RestoreDirectory(Operation):
    """prepare_begin claims the target (before any dependent, e.g. a database file inside it,
    writes there); main writes the tree."""

    @staticmethod
    def _entries(checkpoint, context, resource, parameters) -> list[dict[str, Any]]:
        """The manifest entries to restore: all, or those under `paths` (and the folders
        leading to them).  A path that matches nothing is an error naming it."""
        wanted = wanted_paths(parameters.get("paths", []))
        entries = read_manifest(checkpoint.bank_section, context.content_store)
        if not entries:
            raise TutelaError(f"{resource.key}: checkpoint {checkpoint.id} has no manifest for it")
        if not wanted:
            return entries
        entries = select(entries, wanted)
        found = {w for e in entries for w in wanted if in_path(e["path"], w)}
        missing = [w for w in wanted if w not in found]
        if missing:
            raise TutelaError(
                f"{resource.key}: not in checkpoint {checkpoint.id}: {_show_list(missing)}"
            )
        return entries

    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        target = os.path.abspath(parameters.get("target") or local_path(resource))
        overwrite = bool(parameters.get("overwrite", False))
        if wanted_paths(parameters.get("paths", [])):
            # Checked before the target is made or touched (the manifest is read again by
            # main; only a partial restore pays for this).
            self._entries(checkpoint, context, resource, parameters)
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
        target = os.path.abspath(parameters.get("target") or local_path(resource))
        store = context.content_store
        entries = self._entries(checkpoint, context, resource, parameters)
        # As root, or with `owner: true` asked for, an entry left without its recorded owner
        # is a difference to warn about; by default another user's restore keeps its uid.
        owners = _Owners(
            bool(parameters.get("owner", True)), os.geteuid() == 0 or "owner" in parameters
        )
        os.makedirs(target, exist_ok=True)
        real_target = os.path.realpath(target)
        dirs: list[tuple[str, dict[str, Any]]] = []
        checked: set[str] = set()

        def confined(path: str) -> str:
            parent = os.path.dirname(path)
            if parent not in checked:
                os.makedirs(parent, exist_ok=True)
                real = os.path.realpath(parent)
                if real != real_target and not real.startswith(real_target + os.sep):
                    raise TutelaError(
                        f"refusing to restore {path!r}: a parent is a link out of {target!r}"
                    )
                checked.add(parent)
            return path

        # Folders and links in manifest order (parents first) on this thread; file contents
        # on a small pool: creating, decrypting, decompressing and writing files release the
        # GIL, so a tree of many files restores several times faster than one by one.  Small
        # files go to the pool in batches (a hand-off per file costs more in thread wake-ups
        # than writing it).  A semaphore bounds the batches in flight (memory stays flat)
        # without waiting for them in order: one large file must not leave the other threads
        # idle behind it.
        slots = threading.BoundedSemaphore(4 * RESTORE_THREADS)
        failures: list[BaseException] = []
        # Files whose data in the bank is damaged or missing: not restored (no torn file is
        # left), the others are; the restore then fails naming them.  Any other error (a
        # full disk, a permission) stops the restore at once.
        damaged: list[tuple[str, ContentStoreError]] = []
        batch: list[tuple[dict[str, Any], str]] = []
        batch_bytes = 0
        # Hard links: the first file restored of each group (by the manifest path the later
        # names' `link` gives), and the later names, linked to it once it is written.
        linked_to = {e["link"] for e in entries if isinstance(e.get("link"), str)}
        # FIFOs and devices the system did not permit to create (a device needs CAP_MKNOD).
        not_created: list[str] = []
        unknown: list[str] = []  # entries of a type this version does not know
        first_of: dict[str, tuple[dict[str, Any], str]] = {}
        links: list[tuple[dict[str, Any], str, dict[str, Any], str]] = []
        # FIFOs and devices made (manifest path -> where), for their later names' `link`.
        special_made: dict[str, str] = {}
        special_unlinked: list[tuple[str, OSError]] = []

        def restore_batch(files: list[tuple[dict[str, Any], str]]) -> None:
            try:
                for entry, dest in files:
                    if failures:
                        return
                    context.check_cancelled()
                    try:
                        self._restore_file(store, entry, dest, context, owners)
                    except (CorruptDataError, MissingChunkError) as exc:
                        damaged.append((entry["path"], exc))  # list.append: thread-safe
            except BaseException as exc:
                failures.append(exc)
            finally:
                slots.release()

        with ThreadPoolExecutor(RESTORE_THREADS, thread_name_prefix="tutela-restore") as pool:

            def submit() -> None:
                nonlocal batch, batch_bytes
                if batch:
                    slots.acquire()
                    pool.submit(restore_batch, batch)
                    batch, batch_bytes = [], 0

            for n, entry in enumerate(entries):
                if failures:
                    break
                if not n & 1023:
                    context.check_cancelled()
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
                    owners.give(entry, path=dest)
                    os.utime(dest, ns=(entry["mtime_ns"], entry["mtime_ns"]), follow_symlinks=False)
                elif kind in _SPECIAL:  # no data: made here, in order, like a symlink
                    if os.path.lexists(dest):
                        _remove(dest)
                    head = special_made.get(entry.get("link"))  # type: ignore[arg-type]
                    if head is not None:
                        try:
                            _link(head, dest)
                            continue
                        except OSError as exc:  # made on its own below, and said
                            special_unlinked.append((entry["path"], exc))
                    if _restore_special(entry, dest, owners):
                        special_made[entry["path"]] = dest
                    else:
                        not_created.append(entry["path"])
                elif kind == "file":
                    if linked_to:
                        group = entry.get("link") or entry["path"]
                        first = first_of.get(group) if group in linked_to else None
                        if first is not None and first[0].get("ref") == entry.get("ref"):
                            links.append((entry, dest, *first))
                            continue
                        if group in linked_to:
                            first_of.setdefault(group, (entry, dest))
                    batch.append((entry, dest))
                    batch_bytes += entry["size"]
                    if len(batch) >= RESTORE_BATCH_FILES or batch_bytes >= RESTORE_BATCH_BYTES:
                        submit()
                else:  # written by a newer Tutela: left out, and said, never silently
                    unknown.append(entry["path"])
            if not failures:
                submit()
        if failures:
            raise failures[0]
        unlinked = self._restore_links(
            store, links, damaged, context, owners, resource, special_unlinked
        )
        for dest, entry in reversed(dirs):
            owners.give(entry, path=dest)  # before chmod: chown may clear bits
            os.chmod(dest, entry["mode"])
            os.utime(dest, ns=(entry["mtime_ns"], entry["mtime_ns"]))
        if not_created:
            context.progress.message(
                f"{resource.key}: {len(not_created)} device(s) or FIFO(s) not created, not "
                "permitted (a device needs root, CAP_MKNOD), left out: " + _show_list(not_created)
            )
        if unknown:
            context.progress.message(
                f"{resource.key}: {len(unknown)} entry(ies) of a type this version of Tutela "
                "does not know (written by a newer one) left out: " + _show_list(unknown)
            )
        if owners.missed:
            missed = sorted(owners.missed)
            context.progress.message(
                f"{resource.key}: {len(missed)} entry(ies) restored without their recorded "
                "owner and group: " + _show_list(missed)
            )
        # Where the restored tree differs from the checkpoint, the restore says so: one
        # warning, counts only (`tutela restore` exits 3).  Kept when it fails below.
        differences = {
            "hard_links_as_files": len(unlinked),
            "owner_not_restored": len(owners.missed),
            "special_files_not_created": len(not_created),
            "unknown_types": len(unknown),
        }
        if any(differences.values()):
            context.warn(
                resource,
                restore_message(differences),
                {k: n for k, n in differences.items() if n},
            )
        if damaged:
            paths = sorted(p for p, _ in damaged)
            first = min(damaged, key=lambda d: d[0])[1]
            context.progress.message(
                f"{resource.key}: {len(paths)} file(s) not restored, their data in the bank is "
                f"damaged or missing ({first}): " + ", ".join(_show(p) for p in paths)
            )
            raise TutelaError(
                f"{resource.key}: {len(paths)} file(s) of checkpoint {checkpoint.id} not "
                f"restored, their data is damaged or missing: "
                f"{_show_list(paths, DAMAGED_SHOWN)}; everything else was restored "
                f"(first error: {first})"
            )

    @classmethod
    def _restore_links(
        cls, store, links, damaged, context, owners: _Owners, resource, unlinked
    ) -> list[str]:
        """Make the later names of hard-linked files links to the first name restored (whose
        write set the inode's owner, mode and mtime).  A name that cannot be linked (another
        file system, links refused or not supported) is written as a file of its own; those
        names, and the FIFOs and devices already made on their own (`unlinked`: (path,
        error)), are returned, for the restore's warning."""
        bad = dict(damaged)
        for entry, dest, first, first_dest in links:
            if first["path"] in bad:  # the same data: damaged too
                damaged.append((entry["path"], bad[first["path"]]))
                continue
            try:
                _link(first_dest, dest)
                continue
            except OSError as exc:
                unlinked.append((entry["path"], exc))
            try:
                cls._restore_file(store, entry, dest, context, owners)
            except (CorruptDataError, MissingChunkError) as exc:
                damaged.append((entry["path"], exc))
        if unlinked:
            error = unlinked[0][1]
            context.progress.message(
                f"{resource.key}: {len(unlinked)} hard link(s) could not be made "
                f"({error.strerror or error}), made as separate files: "
                + _show_list([p for p, _ in unlinked])
            )
        return [p for p, _ in unlinked]

    @staticmethod
    def _restore_file(store, entry: dict[str, Any], dest: str, context, owners: _Owners) -> None:
        """Write one file.  A new file is created in place (exclusively, so nothing already
        there is touched); a file that exists is written under a temporary name and renamed
        over it, so it is never left torn.  On failure the partial file is removed.  Aligned
        blocks of zeros are left as holes (a sparse file stays sparse)."""
        tmp = None
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            fd, tmp = tempfile.mkstemp(prefix=".tutela-restore-", dir=os.path.dirname(dest))
        written_to = tmp or dest
        try:
            try:
                # Decoded on this thread: the restore threads already keep both cores busy, and
                # an A/B gave 4% less wall time and 60 MiB less memory than the store's pool.
                blocks = store.read(FileRef.from_json(entry["ref"]), parallel=False)
                written, data_end = _write_sparse(fd, blocks, context.report_bytes)
                if written != entry["size"]:
                    raise CorruptDataError(
                        f"restoring {entry['path']!r}: got {written} bytes, expected {entry['size']}"
                    )
                if data_end < written:  # it ends with a hole
                    os.ftruncate(fd, written)
                # Owner first: chown clears setuid and setgid; without it they are dropped.
                os.fchmod(fd, _file_mode(entry, owners.give(entry, fd=fd)))
                os.utime(fd, ns=(entry["mtime_ns"], entry["mtime_ns"]))
            finally:
                os.close(fd)
            if tmp is not None:
                if os.path.isdir(dest) and not os.path.islink(dest):
                    _remove(dest)
                os.replace(tmp, dest)
        except BaseException:
            if os.path.lexists(written_to):
                os.unlink(written_to)
            raise


def _link(source: str, dest: str) -> None:
    """Make `dest` a hard link to `source`.  A name that exists is replaced (through a
    temporary link renamed over it), never left half-made."""
    try:
        os.link(source, dest, follow_symlinks=False)
        return
    except FileExistsError:
        pass
    folder = os.path.dirname(dest)
    while True:
        tmp = os.path.join(folder, f".tutela-restore-{os.urandom(6).hex()}")
        try:
            os.link(source, tmp, follow_symlinks=False)
            break
        except FileExistsError:
            continue
    try:
        if os.path.isdir(dest) and not os.path.islink(dest):
            _remove(dest)
        os.replace(tmp, dest)
    finally:
        if os.path.lexists(tmp):  # not renamed; or dest was already this file (a no-op)
            os.unlink(tmp)


def in_path(path: str, wanted: str) -> bool:
    return path == wanted or path.startswith(wanted + "/")


def select(entries: list[dict[str, Any]], wanted: list[str]) -> list[dict[str, Any]]:
    """The entries under the wanted paths, plus the folders that lead to them."""
    keep = [e for e in entries if any(in_path(e["path"], w) for w in wanted)]
    parents = {
        "/".join(e["path"].split("/")[:i]) for e in keep for i in range(1, e["path"].count("/") + 1)
    }
    lead = [e for e in entries if e["type"] == "dir" and e["path"] in parents]
    return sorted(lead + keep, key=lambda e: (e["path"].count("/"), e["path"]))


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
    config_keys = CONFIG_KEYS

    def get_supported_resources_types(self) -> list[str]:
        return [TYPE]

    def get_options_schema(self, resource_type: str) -> dict[str, Any]:
        return OPTIONS_SCHEMA

    def get_restore_schema(self, resource_type: str) -> dict[str, Any]:
        return RESTORE_SCHEMA

    def get_saved_info_schema(self, resource_type: str) -> dict[str, Any]:
        return SAVED_INFO_SCHEMA

    def saved_details(self, section, resource: Resource, *, store) -> dict[str, Any]:
        """The name lists behind the saved info's `*_count`s (DETAILS_SCHEMA), read from the
        content store (for `tutela checkpoints show --json`); {} when there are none."""
        return read_details(section, store)

    def get_protect_operation(self, resource: Resource) -> Operation:
        return ProtectDirectory()

    def get_restore_operation(self, resource: Resource) -> Operation:
        return RestoreDirectory()

    def get_delete_operation(self, resource: Resource) -> Operation:
        return DeleteDirectory()

    def list_files(
        self, section, resource: Resource, path: str | None = None, *, store=None
    ) -> list[dict[str, Any]]:
        """The manifest entries of a protected tree (for `tutela checkpoints ls`), or those
        under `path` (normalised as restore `paths` are; `.` or `/` is the whole tree).  A
        path that matches nothing gives []: the caller, which may list several trees, says
        so when none has it."""
        entries = read_manifest(section, store)
        wanted = wanted_paths([path]) if path else []
        if wanted:
            entries = [e for e in entries if in_path(e["path"], wanted[0])]
        return entries


__all__ = ["TYPE", "DirectoryProtectable", "DirectoryProtectionPlugin", "Path"]
