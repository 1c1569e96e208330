"""Content-defined chunking: FastCDC (2020, gear hash) from the Cython `pyfastcdc` package.

The cut points depend only on the bytes (and on the gear seed of the store), so an insertion
near the start of a file moves only the first chunk boundaries and the rest dedupe.  The hot
loop runs in C without the GIL; Python only moves memoryviews around.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from pyfastcdc import FastCDC

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: pyfastcdc's accepted ranges (min, avg, max).
MIN_RANGE = (64, 1 * MiB)
AVG_RANGE = (256, 4 * MiB)
MAX_RANGE = (1 * KiB, 16 * MiB)

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB}


def parse_size(text: str | int) -> int:
    """Bytes from `4096`, `512K`, `1M`, `8MiB`, `1g` (binary units).  Raises ValueError."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use bytes or a K/M/G suffix)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class ChunkerParams:
    """Chunk size bounds.  Note FastCDC's real mean chunk size is about `avg + min`."""

    min_size: int = 512 * KiB
    avg_size: int = 1 * MiB
    max_size: int = 8 * MiB
    seed: int = 0

    def problem(self) -> str | None:
        """Why these parameters cannot be used, or None."""
        for name, value, (lo, hi) in (
            ("chunk_min", self.min_size, MIN_RANGE),
            ("chunk_avg", self.avg_size, AVG_RANGE),
            ("chunk_max", self.max_size, MAX_RANGE),
        ):
            if not lo <= value <= hi:
                return f"{name} must be between {lo} and {hi} bytes, not {value}"
        if not self.min_size <= self.avg_size <= self.max_size:
            return "chunk sizes must satisfy chunk_min <= chunk_avg <= chunk_max"
        if not 0 <= self.seed < 1 << 63:
            return "gear seed out of range"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": "fastcdc2020",
            "min": self.min_size,
            "avg": self.avg_size,
            "max": self.max_size,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], seed: int = 0) -> ChunkerParams:
        return cls(int(data["min"]), int(data["avg"]), int(data["max"]), seed)


class _IterReader:
    """`read(n)` over an iterable of byte blocks, for pyfastcdc's stream chunker."""

    def __init__(self, blocks: Iterable[bytes]):
        self._it = iter(blocks)
        self._buf = memoryview(b"")

    def read(self, n: int) -> bytes:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._it))
            except StopIteration:
                return b""
        out, self._buf = self._buf[:n], self._buf[n:]
        return bytes(out)


class _Buffers:
    """Stream buffers, reused once no chunk cut from them is alive.

    Chunks are views of a buffer, never copies (a `bytes` copy per chunk held the
    interpreter lock for a memcpy and for the page faults of fresh memory: about a third of
    the lock's time in a protect).  So a buffer may be refilled only when every view of it is
    gone, which its reference count tells on CPython: each view (and each view derived from
    it) keeps one reference to the mapping through its managed buffer.  Elsewhere buffers are
    never reused.  Anonymous mappings: their pages are first touched by the kernel inside
    readinto(), without the interpreter lock, and need no zero-filling under it."""

    KEEP = 4  # buffers kept for reuse (a write pipeline holds about 2-3 at once)

    def __init__(self, size: int):
        self.size = size
        self._free: list[mmap.mmap] = []
        self._lent: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self.created = 0  # buffers made (a sign of reuse: it stays small)
        self._counted = hasattr(sys, "getrefcount") and sys.implementation.name == "cpython"

    def take(self) -> memoryview:
        with self._lock:
            if self._counted:
                # References: the list, the loop variable and getrefcount's argument.
                idle = [m for m in self._lent if sys.getrefcount(m) <= 3]
                for m in idle:
                    self._lent.remove(m)
                self._free.extend(idle)
            if self._free:
                buf = self._free.pop()
            else:
                buf = mmap.mmap(-1, self.size)
                self.created += 1
            if self._counted and len(self._lent) + len(self._free) < self.KEEP:
                self._lent.append(buf)
            del self._free[self.KEEP :]
        return memoryview(buf)


class Chunker:
    """Cuts streams into content-defined chunks; one instance is shared by threads."""

    def __init__(self, params: ChunkerParams):
        problem = params.problem()
        if problem:
            raise ValueError(problem)
        self.params = params
        self._buffers = _Buffers(STREAM_BUFFER * params.max_size)
        self._cdc = FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=1,
            seed=params.seed,
        )

    def chunks(self, stream: Iterable[bytes] | BinaryIO) -> Iterator[bytes | memoryview]:
        """Yield the chunks of `stream` as read-only buffers (`bytes` or `memoryview`) that
        nothing overwrites while they are alive: a consumer may keep them.

        A stream that ends within `max_size` bytes is cut in one buffer; a longer one is cut
        streaming, in a buffer of STREAM_BUFFER x max_size that it reads into directly.
        """
        read = getattr(stream, "read", None)
        if read is None:
            read = _IterReader(stream).read  # type: ignore[arg-type]
        limit = self.params.max_size
        # Reading a small file with read(limit) allocates `limit` bytes first: ask for its
        # size instead (one byte more, to see the end).  A file known to be long is streamed
        # from its first byte.
        first = limit
        with contextlib.suppress(AttributeError, OSError, ValueError):
            st = os.fstat(stream.fileno())  # type: ignore[union-attr]
            if stat.S_ISREG(st.st_mode):
                if st.st_size > limit and hasattr(stream, "readinto"):
                    yield from self._stream(stream.readinto, b"")  # type: ignore[union-attr]
                    return
                first = max(1, min(limit, st.st_size + 1))
        head = read_upto(read, limit, first)
        if len(head) < limit:
            if len(head) <= self.params.min_size:  # never cut: spare the copy
                if head:
                    yield head
                return
            if head:
                for chunk in self._cdc.cut_buf(head):
                    yield chunk.data  # a view of `head`, which nothing changes
            return
        readinto = getattr(stream, "readinto", None) or _readinto_from(read)
        yield from self._stream(readinto, head)

    def _stream(
        self, readinto: Callable[[memoryview], int | None], head: bytes
    ) -> Iterator[memoryview]:
        """Cut a long stream: fill a buffer (after `head`, bytes already read), cut it, keep
        the last chunk unless the stream ended (the buffer's end cut it, not its content:
        every earlier boundary is final, as FastCDC cuts at the first match from a chunk's
        start) and carry it to the front of the next buffer.  The kernel copies each byte
        into a buffer; chunks are views of it (see `_Buffers`)."""
        view = self._buffers.take()
        size = len(view)
        view[: len(head)] = head  # head is at most one maximum chunk, the buffer three
        end = len(head)
        eof = False
        while True:
            while end < size:
                n = readinto(view[end:])
                if not n:
                    eof = True
                    break
                end += n
            if not end:
                return
            tail = 0
            for chunk in self._cdc.cut_buf(view[:end]):
                if not eof and chunk.offset + chunk.length == end:
                    tail = chunk.length
                    break
                yield chunk.data.toreadonly()
            chunk = None  # the last Chunk holds a view too: let the buffer go
            if eof:
                return
            fresh = self._buffers.take()
            fresh[:tail] = view[end - tail : end]
            view, end = fresh, tail


#: The streaming chunker's buffer, in multiples of the maximum chunk size (at least 2, so
#: that every refill adds at least a whole maximum chunk).
STREAM_BUFFER = 3


def _readinto_from(read: Callable[[int], bytes]) -> Callable[[memoryview], int]:
    """A readinto() over read(), for streams that have only the latter."""

    def readinto(dest: memoryview) -> int:
        block = read(len(dest))
        dest[: len(block)] = block
        return len(block)

    return readinto


def read_upto(read: Callable[[int], bytes], limit: int, first: int) -> bytes:
    """Up to `limit` bytes, fewer only at the end of the stream; the first read asks for
    `first` bytes, later ones for at most 1 MiB."""
    block = read(first)
    if not block:
        return b""
    parts = [block]
    have = len(block)
    while have < limit:
        block = read(min(limit - have, MiB))
        if not block:
            break
        parts.append(block)
        have += len(block)
    return parts[0] if len(parts) == 1 else b"".join(parts)
