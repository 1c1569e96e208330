"""Blobs and packs: the bytes of chunks as stored.

A blob is one stored chunk: `encrypt(flag + payload, aad="C" + chunk id)` where flag 0 means
the payload is the raw chunk and 1 means zstd.  A pack is blobs back to back, then a header
(one 48-byte entry per blob: chunk id, offset, stored length, raw length; encrypted like a
blob), then the header length as a 4-byte little-endian integer.  The header makes a pack
self-describing, so an index can be rebuilt from packs alone.

A pack's name is the BLAKE3 of its tail (the header as stored and the length after it): the
header names every blob by its chunk id, offset and length, and each blob is checked by its
own chunk (it authenticates, or it hashes to its id), so every byte of a pack is covered
without hashing all of it once more as it is written (packs written before store format 4
are named by the BLAKE3 of all their bytes; `naming` tells which).
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import blake3
import zstandard

from tutela.contentstore.crypto import Cipher

FLAG_RAW = 0
FLAG_ZSTD = 1
HEADER_VERSION = 1
ENTRY = struct.Struct("<32sQII")  # chunk id, offset, stored length, raw length
_TRAILER = struct.Struct("<I")
HEADER_AAD = b"tutela-pack-header"


@dataclass(frozen=True)
class BlobEntry:
    """Where a chunk lives: pack name, byte offset, stored length and raw length."""

    pack: str
    offset: int
    length: int
    raw_length: int


#: The default zstd level.  With the window widened to a whole chunk (`window_log`), level 1
#: stores about as little as level 3 on mixed data and compresses text 25% faster and
#: repeated data 2.5x faster (docs/benchmarks.md); level 1's own 512 KiB window misses
#: repeats further apart within a 1 MiB chunk.
DEFAULT_LEVEL = 1


def window_log_for(max_chunk: int) -> int:
    """The zstd window (log2) that covers a whole chunk of at most `max_chunk` bytes."""
    return max(10, (max_chunk - 1).bit_length())


def zstd_windows(
    level: int, window_log: int
) -> tuple[zstandard.ZstdCompressionParameters | None, int]:
    """(`level`'s parameters with a window of 2**window_log bytes, or None when the level's own
    window is as wide; the length of the level's own window).  Data within the level's own
    window is compressed with the level alone, which lets zstd tune its parameters to the
    data's size; longer data gets the wide window (which zstd shrinks to the data's size)."""
    own = zstandard.ZstdCompressionParameters.from_level(level)
    if window_log <= own.window_log:
        return None, 1 << own.window_log
    wide = zstandard.ZstdCompressionParameters.from_level(level, window_log=window_log)
    return wide, 1 << own.window_log


class Codec:
    """Compress+encrypt and decrypt+decompress blobs; safe to share between threads."""

    def __init__(
        self,
        cipher: Cipher,
        compression: str = "zstd",
        level: int = DEFAULT_LEVEL,
        window_log: int = 0,
    ):
        self.cipher = cipher
        self.compression = compression
        self.level = level
        self._wide, self._narrow = zstd_windows(level, window_log)
        self._local = threading.local()

    def _compressor(self, size: int) -> zstandard.ZstdCompressor:
        if self._wide is not None and size > self._narrow:
            comp = getattr(self._local, "w", None)
            if comp is None:
                comp = self._local.w = zstandard.ZstdCompressor(compression_params=self._wide)
            return comp
        comp = getattr(self._local, "c", None)
        if comp is None:
            comp = self._local.c = zstandard.ZstdCompressor(level=self.level)
        return comp

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        dec = getattr(self._local, "d", None)
        if dec is None:
            dec = self._local.d = zstandard.ZstdDecompressor()
        return dec

    def encode(self, chunk_id: bytes, raw: bytes) -> bytes:
        """The stored form of a chunk; kept raw when compression saves under 1/64."""
        flag, payload = FLAG_RAW, raw
        if self.compression == "zstd" and raw:
            packed = self._compressor(len(raw)).compress(raw)
            if len(packed) < len(raw) - (len(raw) >> 6):
                flag, payload = FLAG_ZSTD, packed
        return self.cipher.encrypt(bytes((flag,)) + payload, b"C" + chunk_id)

    def decode(self, chunk_id: bytes, stored: bytes | memoryview, raw_length: int) -> bytes:
        """The raw chunk.  Raises DecryptError or ValueError on damaged input."""
        plain = self.cipher.decrypt(stored, b"C" + chunk_id)
        if not plain:
            raise ValueError("empty blob")
        flag = plain[0]
        if flag == FLAG_RAW:
            return plain[1:]
        if flag == FLAG_ZSTD:
            return self._decompressor().decompress(
                memoryview(plain)[1:], max_output_size=raw_length
            )
        raise ValueError(f"unknown blob flag {flag}")


class PackBuilder:
    """Collects blobs for one pack (not thread-safe: the store serialises access)."""

    def __init__(self) -> None:
        self.blobs: list[bytes] = []
        self.entries: list[tuple[bytes, int, int, int]] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self.blobs)

    def add(self, chunk_id: bytes, stored: bytes, raw_length: int) -> None:
        self.entries.append((chunk_id, self.size, len(stored), raw_length))
        self.blobs.append(stored)
        self.size += len(stored)

    def seal(self, cipher: Cipher) -> tuple[str, list[bytes], list[tuple[bytes, int, int, int]]]:
        """(pack name, the pack's bytes as its parts in order, entries).  The parts are not
        joined: the bank writes them as they are (`update_object_parts`), where a joined
        pack cost a copy into fresh memory of its size; the builder lets them go here."""
        header = bytes((HEADER_VERSION,)) + b"".join(ENTRY.pack(*e) for e in self.entries)
        header = cipher.encrypt(header, HEADER_AAD)
        tail = header + _TRAILER.pack(len(header))
        parts = [*self.blobs, tail]
        self.blobs = []
        return blake3.blake3(tail).hexdigest(), parts, self.entries


def header_start(pack: bytes | memoryview) -> int:
    """Where a whole pack's header starts (the end of its blobs).  Raises ValueError."""
    if len(pack) < _TRAILER.size:
        raise ValueError("pack too short")
    (length,) = _TRAILER.unpack_from(pack, len(pack) - _TRAILER.size)
    start = len(pack) - _TRAILER.size - length
    if start < 0:
        raise ValueError("pack header length out of range")
    return start


def parse_header(pack: bytes, cipher: Cipher) -> list[tuple[bytes, int, int, int]]:
    """The entries of a whole pack's header.  Raises DecryptError or ValueError."""
    start = header_start(pack)
    header = cipher.decrypt(memoryview(pack)[start : len(pack) - _TRAILER.size], HEADER_AAD)
    if not header or header[0] != HEADER_VERSION or (len(header) - 1) % ENTRY.size:
        raise ValueError("bad pack header")
    return [e for e in ENTRY.iter_unpack(header[1:])]


def naming(pack: bytes, name: str) -> str | None:
    """How `name` names this whole pack: "tail" (the BLAKE3 of its header as stored and the
    length after it: store format 4 on), "whole" (of all its bytes: packs written before), or
    None (it does not: the pack is damaged)."""
    view = memoryview(pack)
    try:
        if blake3.blake3(view[header_start(pack) :]).hexdigest() == name:
            return "tail"
    except ValueError:
        pass
    return "whole" if blake3.blake3(view).hexdigest() == name else None


def blobs_fill(start: int, entries: list[tuple[bytes, int, int, int]]) -> bool:
    """Whether the blobs of `entries` (a pack's header) lie back to back from the pack's first
    byte to its header at `start`, as written: then every byte is some blob's or the header's."""
    end = 0
    for _, off, length, _ in sorted(entries, key=lambda e: e[1]):
        if off != end:
            return False
        end += length
    return end == start


def pack_key(name: str) -> str:
    return f"packs/{name[:2]}/{name}"
