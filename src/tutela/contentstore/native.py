"""Chunks hashed, compressed and encrypted in C, and small files read too, a batch per call
(`_native`).

Why: a first protect of many small files spent most of its time in the Python part of each
file, and that part holds the interpreter lock, so the store's two workers mostly waited for
each other (1.2-1.5 of 2 cores busy).  `_native` does a whole batch with the lock released and
produces what the Python path does, byte for byte once decrypted: the same chunk ids, the same
blob format (pack.py), readable by any Tutela.  Nonces: each batch counts up from its own
random 96-bit start (one `os.urandom` per batch), so that two batches' runs overlap with a
probability far below that of random nonces colliding.  The chunks of large files go through
it too (hashed, then the new ones compressed and sealed): in Python each blob cost three
fresh buffers of the chunk's size, which the allocator mostly gave back to the kernel at
once and then paid for again in page faults (2.3 ms per MiB of random data against 0.45 ms).

The extension is optional: built when a C compiler and the headers of libzstd and OpenSSL are
there (setup.py), else Tutela runs the Python path, which is complete.  `TUTELA_NATIVE=0`
turns it off; `TUTELA_NATIVE=1` makes its absence an error (CI sets it, so that a failed
build cannot pass unnoticed).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from tutela.contentstore import pack
from tutela.errors import TutelaError

try:
    from tutela.contentstore import _native
except ImportError:  # not built: the Python path
    _native = None  # type: ignore[assignment]

#: The `aead` argument of `_native.encode` per store algorithm.
AEAD = {"none": 0, "aes-256-gcm": 1, "chacha20-poly1305": 2}


def wanted() -> bool:
    """Whether to use the extension: it is built and TUTELA_NATIVE is not 0.  With
    TUTELA_NATIVE=1, an extension that is not built is an error."""
    setting = os.environ.get("TUTELA_NATIVE", "")
    if setting == "0":
        return False
    if _native is None and setting == "1":
        raise TutelaError(
            "TUTELA_NATIVE=1 but tutela.contentstore._native is not built (it needs a C "
            "compiler and the libzstd and OpenSSL headers when Tutela is installed)"
        )
    return _native is not None


class Stat:
    """What the caller's changed-while-read check needs of the fstat taken after the read."""

    __slots__ = ("st_mode", "st_mtime_ns", "st_size")

    def __init__(self, mode: int, size: int, mtime_ns: int):
        self.st_mode = mode
        self.st_size = size
        self.st_mtime_ns = mtime_ns


class Worker:
    """The store's worker-thread parts in C: `prepare` (its `_prepare_files`) for batches of
    small files and `prepare_chunks` (its `_prepare_many`) for the chunks of large ones."""

    def __init__(
        self,
        keys: Any,
        compression: str,
        level: int,
        window_log: int,
        limit: int,
        too_big: object,
        fallback: Callable[[Any], Any],
    ):
        self._id_key = keys._id_key
        self._data_key = keys._data_key if keys.algorithm != "none" else None
        self._aead = AEAD[keys.algorithm]
        self._compress = compression == "zstd"
        self._level = level
        wide, self._narrow = pack.zstd_windows(level, window_log)
        self._wide_log = wide.window_log if wide is not None else 0  # 0: the level alone
        self._limit = limit
        self._too_big = too_big
        self._fallback = fallback

    def __repr__(self) -> str:
        return "native.Worker(<secret>)"

    def prepare(self, files: list[Any], known: Callable[[bytes], bool]) -> list[Any]:
        """Per file a (chunk id, data, blob or None when the chunk is known), None (empty),
        `too_big`, or the OSError to raise on the caller's thread; a file that changed size
        since the walk goes to `fallback` (the Python path)."""
        read = _native.read_small(
            [f.path for f in files], [f.size for f in files], self._limit, self._id_key
        )
        out: list[Any] = []
        new: list[int] = []  # where in `out` each chunk to encode goes
        for f, (status, data, cid, mode, size, mtime_ns) in zip(files, read, strict=True):
            if status == 0:
                f.stat = Stat(mode, size, mtime_ns)
                if not data:
                    out.append(None)
                elif known(cid):
                    out.append((cid, data, None))
                else:
                    new.append(len(out))
                    out.append((cid, data))
            elif status == _native.TOO_BIG:
                out.append(self._too_big)
            elif status == _native.GREW:
                out.append(self._fallback(f))
            elif status == _native.NOT_REGULAR:
                out.append(OSError(errno.EINVAL, "no longer a regular file", f.path))
            else:
                out.append(OSError(status, os.strerror(status), f.path))
        if new:
            blobs = self._encode([out[i][0] for i in new], [out[i][1] for i in new])
            for i, blob in zip(new, blobs, strict=True):
                out[i] = (*out[i], blob)
        return out

    def prepare_chunks(self, datas: list[Any], known: Callable[[bytes], bool]) -> list[Any]:
        """Per chunk (bytes or a view), as `ContentStore._prepare`: (chunk id, data, blob, or
        None when the chunk is known)."""
        ids = _native.chunk_ids(datas, self._id_key)
        new = [i for i, cid in enumerate(ids) if not known(cid)]
        blobs: list[bytes | None] = [None] * len(datas)
        if new:
            encoded = self._encode([ids[i] for i in new], [datas[i] for i in new])
            for i, blob in zip(new, encoded, strict=True):
                blobs[i] = blob
        return list(zip(ids, datas, blobs, strict=True))

    def _encode(self, ids: list[bytes], datas: list[Any]) -> list[bytes]:
        return _native.encode(
            ids,
            datas,
            self._compress,
            self._level,
            self._wide_log,
            self._narrow,
            self._aead,
            self._data_key,
            os.urandom(12),
        )
