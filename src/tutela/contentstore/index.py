"""The chunk index: chunk id -> (pack, offset, stored length, raw length).

In the bank the index is a set of immutable segments under `index/`, each written once by one
writer under a fresh random name, so concurrent writers (threads or processes) never touch a
shared object.  The union of all segments is the index; an id listed twice is fine (either
copy is readable).  Segments are zstd-compressed JSON, encrypted when the store is.

Locally, fetched segments are cached as stored (still encrypted) under the cache dir; the
cache is checked against the bank's listing on every load, so deleting it loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import zstandard

from tutela.contentstore.crypto import Cipher
from tutela.contentstore.pack import ENTRY, BlobEntry

#: 2: binary (below); 1 was JSON, still read.
INDEX_VERSION = 2
INDEX_AAD = b"tutela-index"
INDEX_PREFIX = "index/"
#: A version 2 segment starts with this; a JSON one (version 1) with "{".
MAGIC = b"TIDX"
_PACK = struct.Struct("<32sI")  # pack name (its BLAKE3, raw), number of entries

PackEntries = list[tuple[bytes, int, int, int]]  # (chunk id, offset, length, raw length)


def new_segment_name() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def encode_segment(packs: Iterable[tuple[str, PackEntries]], cipher: Cipher) -> bytes:
    """Per pack, its name and its entries, packed as in the pack header (48 bytes each):
    about 20 times faster to write than the JSON of version 1, and to read."""
    parts = [MAGIC, bytes((INDEX_VERSION,))]
    for name, entries in packs:
        raw_name = bytes.fromhex(name)
        if len(raw_name) != 32:
            raise ValueError(f"pack name {name!r} is not a BLAKE3 digest")
        parts.append(_PACK.pack(raw_name, len(entries)))
        parts.extend(ENTRY.pack(*e) for e in entries)
    data = zstandard.ZstdCompressor(level=3).compress(b"".join(parts))
    return cipher.encrypt(data, INDEX_AAD)


def decode_segment(data: bytes, cipher: Cipher) -> tuple[int, list[tuple[str, PackEntries]]]:
    """(version, packs).  Raises DecryptError / ValueError on damage; the caller names it.
    A version newer than INDEX_VERSION is returned, not parsed: the caller refuses it."""
    plain = zstandard.ZstdDecompressor().decompress(
        cipher.decrypt(data, INDEX_AAD), max_output_size=1 << 31
    )
    if plain[: len(MAGIC)] != MAGIC:
        doc = json.loads(plain)
        packs = [
            (p["pack"], [(bytes.fromhex(c), int(o), int(n), int(r)) for c, o, n, r in p["blobs"]])
            for p in doc.get("packs", [])
        ]
        return int(doc.get("version", 0)), packs
    if len(plain) <= len(MAGIC):
        raise ValueError("segment truncated")
    version = plain[len(MAGIC)]
    if version > INDEX_VERSION:
        return version, []
    view = memoryview(plain)
    pos = len(MAGIC) + 1
    out: list[tuple[str, PackEntries]] = []
    while pos < len(plain):
        if pos + _PACK.size > len(plain):
            raise ValueError("segment truncated")
        name, count = _PACK.unpack_from(plain, pos)
        pos += _PACK.size
        end = pos + count * ENTRY.size
        if end > len(plain):
            raise ValueError("segment truncated")
        out.append((name.hex(), list(ENTRY.iter_unpack(view[pos:end]))))
        pos = end
    return version, out


class Index:
    """The in-memory union of index segments; thread-safe.

    A chunk may be stored more than once (two writers at the same time, or a copy written
    again after the first was found damaged).  Copies known to be damaged (`mark_damaged`)
    never win over an intact one, and a chunk whose only copy is damaged is not `in` the
    index: deduplication then stores it again, and reads use the new copy.
    """

    def __init__(self) -> None:
        self._map: dict[bytes, BlobEntry] = {}
        self._damaged: dict[bytes, BlobEntry] = {}  # chunks whose only known copy is damaged
        self._bad: set[tuple[bytes, str]] = set()  # (chunk id, pack) copies known damaged
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._map) + len(self._damaged)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._map

    def get(self, chunk_id: bytes) -> BlobEntry | None:
        """Where to read the chunk: an intact copy if one is known, else the damaged one."""
        return self._map.get(chunk_id) or self._damaged.get(chunk_id)

    def add_pack(self, pack: str, entries: PackEntries) -> None:
        pack = str(pack)
        with self._lock:
            for cid, off, length, raw in entries:
                entry = BlobEntry(pack, off, length, raw)
                if (cid, pack) in self._bad:
                    if cid not in self._map:
                        self._damaged[cid] = entry
                else:
                    self._map[cid] = entry
                    self._damaged.pop(cid, None)

    def mark_damaged(self, copies: Iterable[tuple[bytes, str]]) -> None:
        """Record copies (chunk id, pack) as damaged: they are read only when no other copy
        is known."""
        with self._lock:
            for cid, pack in copies:
                self._bad.add((cid, pack))
                entry = self._map.get(cid)
                if entry is not None and entry.pack == pack:
                    del self._map[cid]
                    self._damaged[cid] = entry

    def is_damaged(self, chunk_id: bytes) -> bool:
        """Whether every known copy of the chunk is damaged."""
        return chunk_id in self._damaged

    def damaged(self) -> set[bytes]:
        """The chunks whose every known copy is damaged."""
        with self._lock:
            return set(self._damaged)

    def damaged_copies(self) -> set[tuple[bytes, str]]:
        with self._lock:
            return set(self._bad)

    def items(self) -> Iterator[tuple[bytes, BlobEntry]]:
        with self._lock:
            return iter([*self._map.items(), *self._damaged.items()])

    def by_pack(self) -> dict[str, PackEntries]:
        packs: dict[str, PackEntries] = {}
        for cid, e in self.items():
            packs.setdefault(e.pack, []).append((cid, e.offset, e.length, e.raw_length))
        return packs


class SegmentCache:
    """Stored index segments on local disk; optional and disposable."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def get(self, name: str) -> bytes | None:
        if self.folder is None:
            return None
        try:
            return (self.folder / name).read_bytes()
        except OSError:
            return None

    def put(self, name: str, data: bytes) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".tmp-{uuid.uuid4().hex}"
            tmp.write_bytes(data)
            os.replace(tmp, self.folder / name)
        except OSError:
            pass  # the cache only saves downloads

    def drop(self, name: str) -> None:
        if self.folder is not None:
            with contextlib.suppress(OSError):
                (self.folder / name).unlink()

    def prune(self, keep: set[str]) -> None:
        """Forget segments that the bank no longer has (swept by someone)."""
        if self.folder is None or not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name not in keep:
                with contextlib.suppress(OSError):
                    path.unlink()
