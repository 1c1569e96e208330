"""The embedded default bank: a directory tree on a local (or shared POSIX) filesystem.

Section `[filesystem_bank]`:
- `root`: the bank's directory (default: `<user data dir>/tutela/bank`), created if missing.
- `lease_expire_window` (s, default 120), `lease_renew_window` (s, default 30),
  `lease_validity_window` (s, default 100): see `BankPlugin`.
- `fsync` (default true): fsync files and folders on write; turn off only for scratch banks.

Objects are files under `<root>/objects/`, written to a temp file, fsynced, renamed into place
and the folder fsynced, so a crash leaves the old value or the new one.  Leases are JSON files
under `<root>/leases/`, read and replaced under an flock so that two owners never both win.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import mmap
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import platformdirs

from tutela.bank import (
    LEASE_KEYS,
    OWNER_LEASE,
    STREAM_CHUNK,
    BankPlugin,
    checked_lease_name,
    ensure_bytes,
    iter_stream,
    lease_name,
    make_owner_id,
    validate_key,
)
from tutela.config import ProviderConfig
from tutela.errors import BankError, InvalidKeyError, LeaseError, ObjectNotFound

SECTION = "filesystem_bank"
#: Every key of `[filesystem_bank]` (the module docstring says what each means).
FILESYSTEM_KEYS = frozenset({"root", "fsync"}) | LEASE_KEYS
_TMP_MARK = ".tutela-tmp-"
#: Objects at least this large written in one piece get their space allocated first.
PREALLOCATE_FROM = 1 << 20
#: ... and, when the bank fsyncs, are written around the page cache (O_DIRECT), through one
#: page-aligned buffer of DIRECT_PIECE bytes per thread, in multiples of DIRECT_BLOCK.
DIRECT_FROM = 1 << 20
DIRECT_PIECE = 8 << 20
DIRECT_BLOCK = 4096


class _DirectBuffer(threading.local):
    """One page-aligned buffer per writing thread, made once and reused, so that its pages
    are never fresh (a fresh page costs its first touch, which on a virtual machine is
    dearer than the copy)."""

    def get(self) -> mmap.mmap:
        buf: mmap.mmap | None = getattr(self, "buf", None)
        if buf is None:
            buf = self.buf = mmap.mmap(-1, DIRECT_PIECE)
            self.address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        return buf


#: Parts at least this large are copied into the aligned buffer without the interpreter lock.
_COPY_UNLOCKED_FROM = 256 << 10


def _copy_in(buf: mmap.mmap, address: int, at: int, value: bytes, offset: int, n: int) -> None:
    """buf[at:at + n] = value[offset:offset + n], without the interpreter lock when `value`
    is large bytes: ctypes lets the lock go for a foreign call, and a lock held for each 8 MiB
    copy was time every other thread of the protect waited.  A small part is copied holding
    it: taking the lock back would cost more than the copy."""
    if type(value) is bytes and n >= _COPY_UNLOCKED_FROM:
        source = ctypes.cast(ctypes.c_char_p(value), ctypes.c_void_p).value
        assert source is not None
        ctypes.memmove(address + at, source + offset, n)
    elif offset == 0 and n == len(value):
        buf[at : at + n] = value
    else:
        buf[at : at + n] = memoryview(value)[offset : offset + n]


_direct_buffer = _DirectBuffer()


class FilesystemBank(BankPlugin):
    config_section = SECTION
    config_keys = {SECTION: FILESYSTEM_KEYS}

    def __init__(self, config: ProviderConfig | None = None, **options):
        self.check_options(options)
        config = config or ProviderConfig.from_dict({})
        default_root = Path(platformdirs.user_data_dir("tutela")) / "bank"
        root = options.get("root") or config.get_path(SECTION, "root", default_root)
        self.root = Path(os.path.abspath(root))
        self.expire_window = float(
            options.get("lease_expire_window")
            or config.get_float(SECTION, "lease_expire_window", 120)
        )
        self.renew_window = float(
            options.get("lease_renew_window") or config.get_float(SECTION, "lease_renew_window", 30)
        )
        self.validity_window = float(
            options.get("lease_validity_window")
            or config.get_float(SECTION, "lease_validity_window", 100)
        )
        if self.validity_window >= self.expire_window:
            raise config.error(
                "lease_validity_window must be shorter than lease_expire_window",
                f"{SECTION}.lease_validity_window",
            )
        fsync = options.get("fsync")
        self.fsync = config.get_bool(SECTION, "fsync", True) if fsync is None else bool(fsync)
        self.objects = self.root / "objects"
        self.leases = self.root / "leases"
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
            self.leases.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BankError(
                f"filesystem bank: cannot create root {str(self.root)!r}: {exc.strerror}"
            ) from None
        if not os.access(self.objects, os.W_OK | os.X_OK):
            raise BankError(f"filesystem bank: root {str(self.root)!r} is not writable")
        self._owner_id = make_owner_id()
        self._renewed: dict[str, float] = {}
        self._direct = self.fsync  # until the filesystem refuses O_DIRECT

    def describe(self) -> str:
        return f"filesystem bank at {self.root}"

    # -- objects ---------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        validate_key(key)
        if key.endswith("/"):
            raise InvalidKeyError(f"bank key must not end with '/': {key!r}")
        if _TMP_MARK in key:
            raise InvalidKeyError(f"bank key uses a reserved name: {key!r}")
        path = self.objects / key
        # Belt and braces: the key grammar already forbids escapes.
        if not os.path.normpath(path).startswith(str(self.objects) + os.sep):
            raise InvalidKeyError(f"bank key escapes the bank root: {key!r}")
        return path

    def _fsync_dir(self, path: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write(self, key: str, blocks: Iterable[bytes], size: int | None = None) -> int:
        """Write an object atomically: a temp file, fsynced, renamed into place, the folder
        fsynced.  `size` given, `blocks` is a sequence of parts of that total size, the
        whole object at hand (it may then go around the page cache)."""
        path = self._path(key)
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise BankError(f"bank key {key!r} lies under an existing object") from None
        if path.is_dir():
            raise BankError(f"bank key {key!r} is a prefix of other objects")
        tmp = parent / f"{_TMP_MARK}{uuid.uuid4().hex}"
        written = 0
        try:
            if size is not None and size >= DIRECT_FROM and self._write_direct(tmp, blocks, size):
                written = size
            else:
                with open(tmp, "xb") as fh:
                    if size is not None and size >= PREALLOCATE_FROM:
                        # Space allocated up front: the kernel's cost of writing a large
                        # object halves here (ext4), and a full disk fails before any byte
                        # is written.
                        os.posix_fallocate(fh.fileno(), 0, size)
                    for block in blocks:
                        fh.write(block)
                        written += len(block)
                    if self.fsync:
                        fh.flush()
                        os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._fsync_dir(parent)
        return written

    def _write_direct(self, tmp: Path, parts: Iterable[bytes], size: int) -> bool:
        """Write a large object around the page cache (O_DIRECT), then fsync it.

        The bytes go to the disk from a reused aligned buffer: no copy into freshly allocated
        page-cache pages, which here cost 5-15x the CPU of the whole direct write (and
        evict the data being protected).  The last piece is padded to DIRECT_BLOCK and the
        file cut back to its size.  Returns False, having left nothing behind, when the
        filesystem refuses O_DIRECT at the open or at a write (then the bank stops trying).
        Only when the bank fsyncs: the data must reach the disk before the call returns
        anyway.
        """
        if not self._direct or not hasattr(os, "O_DIRECT"):
            return False
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DIRECT
        try:
            fd = os.open(tmp, flags, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return self._refuse_direct(tmp)
        refused = False
        try:
            os.posix_fallocate(fd, 0, size)
            self._pwrite_aligned(fd, parts)
            if size % DIRECT_BLOCK:
                os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError as exc:  # EINVAL: the device wants another alignment
            if exc.errno != errno.EINVAL:
                raise
            refused = True
        finally:
            os.close(fd)
        return self._refuse_direct(tmp) if refused else True

    def _refuse_direct(self, tmp: Path) -> bool:
        """The filesystem refused O_DIRECT: drop what was written and stop trying."""
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        self._direct = False
        return False

    @staticmethod
    def _pwrite_aligned(fd: int, parts: Iterable[bytes]) -> None:
        """Write the parts back to back through the thread's aligned buffer, each piece
        filled from as many parts as fit, the last one padded."""
        buf = _direct_buffer.get()
        address, capacity = _direct_buffer.address, len(buf)
        filled = written = 0

        def write_out(n: int) -> None:
            padded = -(-n // DIRECT_BLOCK) * DIRECT_BLOCK
            buf[n:padded] = bytes(padded - n)
            out = memoryview(buf)[:padded]
            try:
                done = 0
                while done < padded:
                    done += os.pwrite(fd, out[done:], written + done)
            finally:
                out.release()

        for part in parts:
            offset = 0
            while offset < len(part):
                n = min(capacity - filled, len(part) - offset)
                _copy_in(buf, address, filled, part, offset, n)
                filled += n
                offset += n
                if filled == capacity:
                    write_out(filled)
                    written += filled
                    filled = 0
        if filled:
            write_out(filled)

    def update_object(self, key: str, value: bytes | str) -> None:
        data = ensure_bytes(value)
        self._write(key, (data,), len(data))

    def update_object_parts(self, key: str, parts: Sequence[bytes]) -> None:
        # Straight from the parts into the aligned buffer: no joined copy of the object.
        self._write(key, parts, sum(len(p) for p in parts))

    def update_object_stream(self, key: str, stream: Iterable[bytes] | BinaryIO) -> int:
        return self._write(key, iter_stream(stream))

    def get_object(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in bank") from None

    def get_object_stream(self, key: str, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in bank") from None

        def blocks() -> Iterator[bytes]:
            with fh:
                while block := fh.read(chunk_size):
                    yield block

        return blocks()

    def _open_fd(self, key: str) -> int:
        """A read-only descriptor of the object (the caller closes it)."""
        try:
            return os.open(self._path(key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in bank") from None

    def get_object_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (fewer at the end of the object), read directly."""
        fd = self._open_fd(key)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def get_object_view(self, key: str) -> memoryview:
        """The whole object, mapped read-only: no copy, no fresh memory (the pages are the
        page cache's).  Objects are replaced by rename, never rewritten in place, so a mapping
        stays valid (and unchanged) for as long as it is referenced."""
        fd = self._open_fd(key)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return memoryview(b"")
            mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        mapped.madvise(mmap.MADV_WILLNEED)
        return memoryview(mapped)

    def object_size(self, key: str) -> int:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in bank") from None
        if not os.path.isfile(path):
            raise ObjectNotFound(f"no object {key!r} in bank")
        return st.st_size

    def delete_object(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return
        # Remove folders left empty, up to the objects root.
        parent = path.parent
        while parent != self.objects:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def list_objects(
        self,
        prefix: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        sort_dir: str | None = None,
    ) -> list[str]:
        prefix = prefix or ""
        if prefix:
            validate_key(prefix)
        # Walk only the folder that can hold the prefix.
        head, _, _ = prefix.rpartition("/")
        start = self.objects / head if head else self.objects
        keys: list[str] = []
        base = len(str(self.objects)) + 1
        stack = [str(start)]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith(_TMP_MARK):
                    continue
                rel = entry.path[base:]
                if entry.is_dir(follow_symlinks=False):
                    if (rel + "/").startswith(prefix) or prefix.startswith(rel + "/"):
                        stack.append(entry.path)
                elif rel.startswith(prefix):
                    keys.append(rel)
        reverse = sort_dir == "desc"
        keys.sort(reverse=reverse)
        if marker is not None:
            keys = [k for k in keys if (k < marker if reverse else k > marker)]
        return keys[:limit] if limit is not None else keys

    # -- leases ----------------------------------------------------------------------------
    def get_owner_id(self) -> str:
        return self._owner_id

    def _lease_path(self, name: str) -> Path:
        name = checked_lease_name(self, name)
        if _TMP_MARK in name:
            raise InvalidKeyError(f"lease name uses a reserved name: {name!r}")
        return self.leases / f"{name}.json"

    def _locked(self, name: str):
        lock_path = self.leases / f"{name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _read_lease(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return None  # a torn or unreadable lease counts as none

    def _write_lease(self, path: Path, now: float) -> None:
        record = {"owner": self._owner_id, "expires": now + self.expire_window, "renewed": now}
        tmp = path.with_name(f"{_TMP_MARK}{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def acquire_lease(self, name: str | None = OWNER_LEASE) -> bool:
        name = lease_name(self, name)
        path = self._lease_path(name)
        fd = self._locked(name)
        try:
            now = time.time()
            current = self._read_lease(path)
            if (
                current
                and current.get("owner") != self._owner_id
                and current.get("expires", 0) > now
            ):
                return False
            self._write_lease(path, now)
            self._renewed[name] = time.monotonic()
            return True
        finally:
            os.close(fd)

    def renew_lease(self, name: str | None = OWNER_LEASE) -> None:
        name = lease_name(self, name)
        path = self._lease_path(name)
        fd = self._locked(name)
        try:
            now = time.time()
            current = self._read_lease(path)
            if (
                current
                and current.get("owner") != self._owner_id
                and current.get("expires", 0) > now
            ):
                self._renewed.pop(name, None)
                raise LeaseError(f"lease {name!r} was taken by {current.get('owner')}")
            if name not in self._renewed and not (
                current and current.get("owner") == self._owner_id
            ):
                raise LeaseError(f"lease {name!r} is not held by this owner")
            self._write_lease(path, now)
            self._renewed[name] = time.monotonic()
        finally:
            os.close(fd)

    def check_lease_validity(self, name: str | None = OWNER_LEASE) -> bool:
        name = lease_name(self, name)
        renewed = self._renewed.get(name)
        if renewed is None or time.monotonic() - renewed > self.validity_window:
            return False
        current = self._read_lease(self._lease_path(name))
        return bool(current and current.get("owner") == self._owner_id)

    def release_lease(self, name: str | None = OWNER_LEASE) -> None:
        name = lease_name(self, name)
        path = self._lease_path(name)
        fd = self._locked(name)
        try:
            current = self._read_lease(path)
            if current and current.get("owner") == self._owner_id:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self._renewed.pop(name, None)
        finally:
            os.close(fd)
        if name == f"owner-{self._owner_id}":
            # Nobody else ever locks our own liveness lease, so its lock file can go.
            with contextlib.suppress(FileNotFoundError):
                (self.leases / f"{name}.lock").unlink()

    def get_lease_owner(self, name: str | None = OWNER_LEASE) -> str | None:
        name = lease_name(self, name)
        current = self._read_lease(self._lease_path(name))
        if current and current.get("expires", 0) > time.time():
            return current.get("owner")
        return None
