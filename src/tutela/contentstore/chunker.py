"""Content-defined chunking: FastCDC (2020, gear hash) from the Cython `pyfastcdc` package.

The cut points depend only on the bytes (and on the gear seed of the store), so an insertion
near the start of a file moves only the first chunk boundaries and the rest dedupe.  The hot
loop runs in C without the GIL; Python only moves memoryviews around.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
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


class Chunker:
    """Cuts streams into content-defined chunks; one instance is cheap, stateless per stream."""

    def __init__(self, params: ChunkerParams):
        problem = params.problem()
        if problem:
            raise ValueError(problem)
        self.params = params
        self._cdc = FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=1,
            seed=params.seed,
        )

    def chunks(self, stream: Iterable[bytes] | BinaryIO) -> Iterator[bytes]:
        """Yield the chunks of `stream` as fresh `bytes`.

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
                    yield bytes(chunk.data)
            return
        readinto = getattr(stream, "readinto", None) or _readinto_from(read)
        yield from self._stream(readinto, head)

    def _stream(self, readinto: Callable[[memoryview], int | None], head: bytes) -> Iterator[bytes]:
        """Cut a long stream: fill a buffer (after `head`, bytes already read), cut it, keep
        the last chunk unless the stream ended (the buffer's end cut it, not its content:
        every earlier boundary is final, as FastCDC cuts at the first match from a chunk's
        start) and move it to the front.  Each byte is copied twice: by the kernel into the
        buffer and into its chunk's `bytes` (pyfastcdc's stream chunker fed through read()
        copied it five times)."""
        buf = bytearray(max(STREAM_BUFFER * self.params.max_size, len(head)))
        view = memoryview(buf)
        view[: len(head)] = head
        end = len(head)
        eof = False
        while True:
            while end < len(buf):
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
                yield bytes(chunk.data)
            if eof:
                return
            view[:tail] = view[end - tail : end]
            end = tail


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
