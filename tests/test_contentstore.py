"""The content store on a real filesystem bank: round trips, dedup, chunking, encryption,
damage detection, format versions, sweep, concurrency, crash safety and bounded memory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import blake3
import pytest

from tutela.bank import Bank
from tutela.bank.filesystem import FilesystemBank
from tutela.config import ProviderConfig
from tutela.contentstore import (
    FORMAT_VERSION,
    ContentStore,
    CorruptDataError,
    FileRef,
    LocalFile,
    MissingChunkError,
    MissingPasswordError,
    StoreLockedError,
    UnsupportedFormatError,
    WrongPasswordError,
    parse_size,
)
from tutela.contentstore import native as contentstore_native
from tutela.contentstore.index import Index
from tutela.errors import ConfigError, TutelaError

SMALL = {"chunk_min": "16K", "chunk_avg": "64K", "chunk_max": "256K", "pack_size": "1M"}
PASSWORD = "correct horse battery staple"


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def text(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = [b"alpha", b"bravo", b"charlie", b"delta", b"echo", b"foxtrot", b"golf", b"hotel"]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
    return bytes(out[:n])


@pytest.fixture
def bank(tmp_path: Path) -> Bank:
    return Bank(FilesystemBank(root=tmp_path / "bank", fsync=False))


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUTELA_PASSWORD", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a tty: never prompt


def make_config(tmp_path: Path, **values: str) -> ProviderConfig:
    section = {"cache_dir": str(tmp_path / "cache"), **SMALL, **values}
    return ProviderConfig.from_dict({"content_store": section}, path=str(tmp_path / "p.conf"))


def open_store(bank: Bank, tmp_path: Path, password: str | None = None, **values: str):
    return ContentStore.open(
        bank.get_section("content"), make_config(tmp_path, **values), password=password
    )


def packs(bank: Bank) -> list[str]:
    return list(bank.get_section("content").iter_objects("packs/"))


def pack_files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "bank" / "objects" / "content" / "packs"
    return sorted(p for p in folder.rglob("*") if p.is_file())


# -- round trips -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [b"", b"x", b"hello world" * 100, rand(3 << 20), text(3 << 20), rand(1 << 20) * 3],
    ids=["empty", "byte", "small", "random", "text", "repeated"],
)
@pytest.mark.parametrize("encryption", ["none", "aes-256-gcm"])
def test_round_trip(bank: Bank, tmp_path: Path, data: bytes, encryption: str) -> None:
    with open_store(bank, tmp_path, PASSWORD, encryption=encryption) as store:
        ref = store.write(io.BytesIO(data))
        store.flush()
        assert ref.size == len(data)
        assert sum(n for _, n in ref.chunks) == len(data)
        assert store.read_bytes(ref) == data
    # A fresh store object (another process, say) reads it through the bank's index.
    with open_store(bank, tmp_path, PASSWORD) as store:
        again = FileRef.from_json(json.loads(json.dumps(ref.to_json())))
        assert again == ref
        assert store.read_bytes(again) == data


def test_iterable_input_and_chunk_list_digest(bank: Bank, tmp_path: Path) -> None:
    data = text(1 << 20)
    with open_store(bank, tmp_path) as store:
        ref = store.write(data[i : i + 1000] for i in range(0, len(data), 1000))
        assert len(ref.chunks) > 1 and ref.digest_of == "chunks"
        # A multi-chunk file's digest is the BLAKE3 of its chunk list (ids and sizes).
        listed = blake3.blake3(b"tutela-chunk-list\0")
        for cid, size in ref.chunks:
            listed.update(bytes.fromhex(cid) + size.to_bytes(8, "little"))
        assert ref.digest == listed.hexdigest()
        assert FileRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref
        assert store.read_bytes(ref) == data
        # Same content, same chunks, same digest.
        assert store.write_bytes(data) == ref


def test_single_chunk_digest_is_plain_blake3(bank: Bank, tmp_path: Path) -> None:
    with open_store(bank, tmp_path) as store:
        assert store.write_bytes(b"hello").digest == blake3.blake3(b"hello").hexdigest()
        assert store.write_bytes(b"").digest == blake3.blake3(b"").hexdigest()


def test_content_digest_references_still_read_and_checked(bank: Bank, tmp_path: Path) -> None:
    """References written before `digest_of` (a whole-content digest) are checked as such."""
    data = text(1 << 20, 3)
    with open_store(bank, tmp_path) as store:
        ref = store.write_bytes(data)
        old = {k: v for k, v in ref.to_json().items() if k != "digest_of"}
        old["digest"] = blake3.blake3(data).hexdigest()
        legacy = FileRef.from_json(old)
        assert legacy.digest_of == "content"
        assert store.read_bytes(legacy) == data
        wrong = FileRef.from_json({**old, "digest": blake3.blake3(b"other").hexdigest()})
        with pytest.raises(CorruptDataError, match="digest"):
            store.read_bytes(wrong)


def test_altered_chunk_list_is_caught(bank: Bank, tmp_path: Path) -> None:
    data = text(1 << 20, 4)
    with open_store(bank, tmp_path) as store:
        ref = store.write_bytes(data)
        other = store.write_bytes(text(1 << 20, 5))
        swapped = FileRef(ref.size, ref.digest, (other.chunks[0], *ref.chunks[1:]), "chunks")
        with pytest.raises(CorruptDataError, match="digest"):
            store.read_bytes(swapped)
        with pytest.raises(ValueError, match="digest_of"):
            FileRef.from_json({**ref.to_json(), "digest_of": "sha1"})


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
def test_many_small_files_across_packs_with_duplicates(
    bank: Bank, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: str
) -> None:
    """Batches of small files are committed together: packs sealed in the middle of a batch,
    a duplicate in the same batch or an earlier one stored once, every file read back (also
    by a store opened afresh), the counters right."""
    if native == "1" and not contentstore_native.wanted():
        pytest.skip("the C part of the content store is not built")
    monkeypatch.setenv("TUTELA_NATIVE", native)
    folder = tmp_path / "tree"
    folder.mkdir()
    contents: dict[str, bytes] = {}
    for i in range(300):
        # Every 7th file repeats one written before it (some in its own batch of 64).
        earlier = max(0, i - 1 - (i * 13) % 90)
        data = contents[f"f{earlier:03d}"] if i % 7 == 6 else rand(8_000 + i, 100 + i)
        contents[f"f{i:03d}"] = data
        (folder / f"f{i:03d}").write_bytes(data)
    duplicates = sum(1 for i in range(300) if i % 7 == 6)
    sources = [(n, LocalFile(str(folder / n), len(d))) for n, d in contents.items()]
    with open_store(bank, tmp_path, **SMALL) as store:  # 1 MiB packs: about 2.4 MB of files
        refs = dict(store.write_many(sources))
        store.flush()
        assert store.stats.chunks == 300
        assert store.stats.chunks_deduplicated == duplicates
        assert store.stats.chunks_new == 300 - duplicates
        assert store.stats.packs_written >= 2
    assert list(refs) == list(contents)  # in input order
    with open_store(bank, tmp_path, **SMALL) as store:
        for name, data in contents.items():
            assert refs[name].size == len(data)
            assert store.read_bytes(refs[name]) == data
        report = store.verify(read_data=True)
        assert report.ok and report.chunks_checked == 300 - duplicates


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
def test_local_files_are_read_on_the_workers(
    bank: Bank, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: str
) -> None:
    """Small `LocalFile`s are read by the pool: same refs as a plain path, the fstat taken
    after the read recorded, an empty file, a file grown past one chunk since it was listed,
    and a vanished file's error raised in order; in C (`native.py`) and in Python alike."""
    if native == "1" and not contentstore_native.wanted():
        pytest.skip("the C part of the content store is not built")
    monkeypatch.setenv("TUTELA_NATIVE", native)
    files = {
        "empty": b"",
        "tiny": b"x",
        "small": text(10_000, 1),
        "edge": rand(16 * 1024, 2),  # exactly chunk_min: still one chunk
        "large": rand(200_000, 3),  # past chunk_min: cut on the caller's thread
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    grown = tmp_path / "grown"
    grown.write_bytes(b"seed")
    sources = [LocalFile(str(tmp_path / n), len(d)) for n, d in files.items()]
    grower = LocalFile(str(grown), 4)  # listed at 4 bytes ...
    grown.write_bytes(rand(100_000, 4))  # ... 100 kB when read: more than one chunk
    with open_store(bank, tmp_path) as store:
        refs = dict(store.write_many([(s.path, s) for s in [*sources, grower]]))
        for source in sources:
            assert refs[source.path] == store.write_file(source.path)
            assert store.read_bytes(refs[source.path]) == Path(source.path).read_bytes()
            if source.size <= 16 * 1024:
                assert source.stat is not None
                assert source.stat.st_size == source.size
        assert refs[sources[0].path].chunks == ()
        assert len(refs[grower.path].chunks) > 1
        assert store.read_bytes(refs[grower.path]) == grown.read_bytes()
        assert grower.stat is not None and grower.stat.st_size == 100_000
        gone = LocalFile(str(tmp_path / "gone"), 10)
        big_gone = LocalFile(str(tmp_path / "big-gone"), 1 << 20)  # opened on this thread
        seen = []
        with pytest.raises(FileNotFoundError):
            for key, _ in store.write_many([("a", sources[1]), ("gone", gone), ("b", sources[2])]):
                seen.append(key)
        assert seen == ["a"]
        with pytest.raises(FileNotFoundError):
            list(store.write_many([("big", big_gone)]))
        items = [("a", sources[1]), ("gone", gone), ("big", big_gone), ("b", sources[2])]
        # on_error decides: True leaves the file out, False raises.
        errors: list[tuple[str, type]] = []

        def left_out(key: str, error: OSError) -> bool:
            errors.append((key, type(error)))
            return True

        assert [k for k, _ in store.write_many(items, on_error=left_out)] == ["a", "b"]
        assert sorted(errors) == [("big", FileNotFoundError), ("gone", FileNotFoundError)]
        with pytest.raises(FileNotFoundError):
            list(store.write_many(items, on_error=lambda key, error: False))
        # A FIFO put where a small file was listed is refused, not read as empty (or waited on).
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        with pytest.raises(OSError, match="no longer a regular file"):
            list(store.write_many([("fifo", LocalFile(str(fifo), 10))]))


def test_small_and_streamed_inputs_cut_alike(tmp_path: Path) -> None:
    from pyfastcdc import FastCDC

    from tutela.contentstore.chunker import Chunker, ChunkerParams

    params = ChunkerParams(16 << 10, 64 << 10, 256 << 10)
    chunker = Chunker(params)
    data = rand(3 << 20, 30)  # longer than max: takes the streaming path
    expected = [
        bytes(c.data)
        for c in FastCDC(64 << 10, min_size=16 << 10, max_size=256 << 10).cut_buf(data)
    ]
    assert list(chunker.chunks(io.BytesIO(data))) == expected
    assert list(chunker.chunks([data[i : i + 777] for i in range(0, len(data), 777)])) == (expected)
    # A real file longer than max is streamed from its first byte, read straight into the
    # chunker's buffer; a reader that returns a little at a time cuts the same.
    path = tmp_path / "long"
    path.write_bytes(data)
    with path.open("rb") as fh:
        assert list(chunker.chunks(fh)) == expected
    with path.open("rb", buffering=0) as raw:
        assert list(chunker.chunks(raw)) == expected

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def, override]
            n = min(len(b), 5000, len(data) - self.pos)
            b[:n] = data[self.pos : self.pos + n]
            self.pos += n
            return n

    assert list(chunker.chunks(Trickle())) == expected
    small = data[: 200 << 10]  # shorter than max: one buffer
    assert b"".join(chunker.chunks(io.BytesIO(small))) == small


def test_streamed_chunks_are_views_that_stay_valid_and_buffers_are_reused() -> None:
    """Chunks of a long stream are views of the chunker's buffers, not copies: a buffer is
    refilled only once no chunk of it is alive.  Kept chunks keep their bytes; dropped ones
    let a handful of buffers serve any length of stream, also with threads sharing it."""
    from tutela.contentstore.chunker import Chunker, ChunkerParams

    chunker = Chunker(ChunkerParams(16 << 10, 64 << 10, 256 << 10))  # buffers of 768 KiB
    data = rand(8 << 20, 31)
    kept = list(chunker.chunks(io.BytesIO(data)))  # all alive: ~11 buffers' worth
    assert all(isinstance(c, memoryview) and c.readonly for c in kept)
    assert b"".join(kept) == data
    made = chunker._buffers.created
    assert made >= 10
    del kept

    def digest_of_stream(seed: int, out: list) -> None:
        mine = rand(8 << 20, seed)
        hasher = hashlib.sha256()
        for chunk in chunker.chunks(io.BytesIO(mine)):  # each dropped once hashed
            hasher.update(chunk)
        out.append(hasher.digest() == hashlib.sha256(mine).digest())

    results: list[bool] = []
    threads = [threading.Thread(target=digest_of_stream, args=(s, results)) for s in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True, True]
    # 3 x 8 MiB more through buffers of 768 KiB: reused, a few new ones at most per thread.
    assert chunker._buffers.created - made <= 3 * 3


def test_compression_shrinks_text_and_can_be_off(bank: Bank, tmp_path: Path) -> None:
    data = text(2 << 20)
    with open_store(bank, tmp_path) as store:
        store.write_bytes(data)
        store.flush()
        assert store.stats.bytes_stored < len(data) // 3
    other = Bank(FilesystemBank(root=tmp_path / "bank2", fsync=False))
    with open_store(other, tmp_path, compression="none") as store:
        ref = store.write_bytes(data)
        store.flush()
        assert store.stats.bytes_stored >= len(data)
        assert store.read_bytes(ref) == data


def test_random_data_is_stored_uncompressed(bank: Bank, tmp_path: Path) -> None:
    data = rand(2 << 20)
    with open_store(bank, tmp_path) as store:
        store.write_bytes(data)
        # one flag byte per chunk, nothing more
        assert store.stats.bytes_stored == len(data) + store.stats.chunks_new


def test_write_file_and_progress_callback(bank: Bank, tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(rand(1 << 20, 3))
    moved: list[int] = []
    store = ContentStore.open(
        bank.get_section("content"), make_config(tmp_path), on_bytes=moved.append
    )
    with store:
        ref = store.write_file(path)
        assert sum(moved) == path.stat().st_size
        assert store.read_bytes(ref) == path.read_bytes()
        assert sum(moved) == 2 * path.stat().st_size


# -- dedup and chunking ------------------------------------------------------------------
def test_same_data_twice_stores_nothing_new(bank: Bank, tmp_path: Path) -> None:
    data = rand(3 << 20, 1)
    with open_store(bank, tmp_path) as store:
        first = store.write_bytes(data)
        store.flush()
        before = packs(bank)
        second = store.write_bytes(data)
        store.flush()
        assert second == first
        assert packs(bank) == before
        assert store.stats.chunks_deduplicated == len(first.chunks)
    # ... also across store objects (a later checkpoint, another resource)
    with open_store(bank, tmp_path) as store:
        store.write_bytes(data)
        store.flush()
        assert store.stats.chunks_new == 0
    assert packs(bank) == before


def test_near_copy_shares_most_chunks(bank: Bank, tmp_path: Path) -> None:
    data = bytearray(rand(4 << 20, 2))
    with open_store(bank, tmp_path) as store:
        a = store.write_bytes(bytes(data))
        data[2 << 20 : (2 << 20) + 10] = b"0123456789"
        b = store.write_bytes(bytes(data))
        shared = a.chunk_ids() & b.chunk_ids()
        assert len(shared) >= len(a.chunks) - 2
        assert store.stats.bytes_new < len(data) + (600 << 10)
        assert store.read_bytes(b) == bytes(data)


def test_boundaries_are_content_defined(bank: Bank, tmp_path: Path) -> None:
    data = rand(4 << 20, 4)
    with open_store(bank, tmp_path) as store:
        a = store.write_bytes(data)
        b = store.write_bytes(b"inserted at the start" * 7 + data)
    ids_a = [c for c, _ in a.chunks]
    ids_b = [c for c, _ in b.chunks]
    assert len(ids_a) > 20
    # Only the first chunk(s) change; the tails line up.
    assert ids_a[2:] == ids_b[-len(ids_a) + 2 :]


def test_existing_store_chunker_parameters_win(bank: Bank, tmp_path: Path) -> None:
    data = rand(2 << 20, 5)
    with open_store(bank, tmp_path) as store:
        a = store.write_bytes(data)
    with open_store(bank, tmp_path, chunk_min="256K", chunk_avg="1M", chunk_max="4M") as store:
        assert store.params.avg_size == 64 * 1024
        assert store.write_bytes(data) == a
        assert store.stats.chunks_new == 0


# -- config ------------------------------------------------------------------------------
def test_sizes_parse() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("512K") == 512 * 1024
    assert parse_size("1M") == 1 << 20
    assert parse_size("8MiB") == 8 << 20
    assert parse_size("1g") == 1 << 30
    with pytest.raises(ValueError):
        parse_size("lots")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("chunk_avg", "lots"),
        ("chunk_max", "64M"),
        ("compression", "lz4"),
        ("encryption", "rot13"),
        ("compression_level", "99"),
        ("pack_size", "1K"),
    ],
)
def test_config_errors_name_file_and_key(bank: Bank, tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        open_store(bank, tmp_path, **{key: value})
    assert "p.conf" in str(err.value)
    assert "[content_store]" in str(err.value)


def test_open_without_create(bank: Bank) -> None:
    with pytest.raises(TutelaError, match="not created"):
        ContentStore.open(bank.get_section("content"), create=False)


def test_future_format_is_refused(bank: Bank, tmp_path: Path) -> None:
    open_store(bank, tmp_path).close()
    section = bank.get_section("content")
    doc = section.get_json("config")
    doc["version"] = 99
    section.put_json("config", doc)
    with pytest.raises(UnsupportedFormatError, match="version 99"):
        open_store(bank, tmp_path)


def test_older_format_is_read_as_is_and_upgraded_by_the_first_write(
    bank: Bank, tmp_path: Path
) -> None:
    with open_store(bank, tmp_path) as store:
        old_ref = store.write_bytes(b"written by version 1")
    section = bank.get_section("content")
    doc = section.get_json("config")
    section.put_json("config", {**doc, "version": 1})
    with open_store(bank, tmp_path) as store:
        assert store.read_bytes(old_ref) == b"written by version 1"
        assert section.get_json("config")["version"] == 1  # reading changes nothing
        store.write_bytes(text(1 << 20))
        store.flush()
    assert section.get_json("config") == {**doc, "version": FORMAT_VERSION}


def _segments(bank: Bank) -> list[str]:
    return sorted(bank.get_section("content").list_objects("index/"))


def test_json_index_segments_of_format_2_are_still_read(bank: Bank, tmp_path: Path) -> None:
    """A store written before binary segments (JSON, index version 1) reads as before."""
    import zstandard

    from tutela.contentstore.index import INDEX_AAD, decode_segment

    data = text(3 << 20, 40) + rand(2 << 20, 40)
    with open_store(bank, tmp_path, password=PASSWORD, encryption="aes-256-gcm") as store:
        ref = store.write_bytes(data)
        cipher = store.keys.cipher
    section = bank.get_section("content")
    for key in _segments(bank):
        version, packs = decode_segment(section.get_object(key), cipher)
        assert version == 2 and packs
        doc = {  # what format 2 wrote
            "version": 1,
            "packs": [
                {"pack": name, "blobs": [[c.hex(), o, n, r] for c, o, n, r in entries]}
                for name, entries in packs
            ],
        }
        plain = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
        section.update_object(key, cipher.encrypt(plain, INDEX_AAD))
    shutil.rmtree(tmp_path / "cache")
    with open_store(bank, tmp_path, password=PASSWORD) as store:
        assert store.read_bytes(ref) == data
        assert store.verify(read_data=True, referenced=ref.chunk_ids()).ok


def test_newer_or_damaged_index_segment_is_refused_by_name(bank: Bank, tmp_path: Path) -> None:
    from tutela.contentstore.crypto import Cipher
    from tutela.contentstore.index import MAGIC

    with open_store(bank, tmp_path) as store:
        store.write_bytes(rand(1 << 20, 41))
    section = bank.get_section("content")
    (key,) = _segments(bank)
    good = section.get_object(key)
    plain = __import__("zstandard").ZstdDecompressor().decompress(good)
    assert plain.startswith(MAGIC)
    for damaged, error, message in (
        (MAGIC + bytes((99,)), UnsupportedFormatError, "format 99"),
        (plain[:-10], CorruptDataError, "damaged"),
    ):
        blob = __import__("zstandard").ZstdCompressor().compress(damaged)
        section.update_object(key, Cipher().encrypt(blob, b""))
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
        with pytest.raises(error, match=message) as info:
            open_store(bank, tmp_path)
        assert key.split("/")[-1] in str(info.value)


# -- encryption --------------------------------------------------------------------------
def test_encrypted_objects_leak_no_plaintext_and_no_plain_ids(bank: Bank, tmp_path: Path) -> None:
    data = text(1 << 20, 6) + rand(1 << 20, 6)
    with open_store(bank, tmp_path, PASSWORD, encryption="aes-256-gcm") as store:
        ref = store.write_bytes(data)
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "bank").rglob("*") if p.is_file())
    assert data[1000:1064] not in blobs  # text
    assert data[(1 << 20) + 1000 : (1 << 20) + 1064] not in blobs  # random
    plain_ids = [blake3.blake3(data).digest()]
    offset = 0
    for _, n in ref.chunks:
        plain_ids.append(blake3.blake3(data[offset : offset + n]).digest())
        offset += n
    for digest in plain_ids:
        assert digest not in blobs
        assert digest.hex().encode() not in blobs
        assert digest.hex() not in json.dumps(ref.to_json())
    assert PASSWORD.encode() not in blobs


def test_wrong_and_missing_password(bank: Bank, tmp_path: Path) -> None:
    with open_store(bank, tmp_path, PASSWORD, encryption="chacha20-poly1305") as store:
        ref = store.write_bytes(b"secret data" * 1000)
    with pytest.raises(WrongPasswordError) as err:
        open_store(bank, tmp_path, "not the password")
    assert "content" in str(err.value) and "wrong passphrase" in str(err.value)
    assert "not the password" not in str(err.value)
    with pytest.raises(MissingPasswordError, match="TUTELA_PASSWORD"):
        open_store(bank, tmp_path)
    with open_store(bank, tmp_path, PASSWORD) as store:
        assert store.read_bytes(ref) == b"secret data" * 1000
        assert PASSWORD not in repr(store) and PASSWORD not in repr(store.keys)


def test_password_from_env_and_file(
    bank: Bank, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUTELA_PASSWORD", PASSWORD)
    with open_store(bank, tmp_path, encryption="aes-256-gcm") as store:
        ref = store.write_bytes(b"abc" * 5000)
    monkeypatch.delenv("TUTELA_PASSWORD")
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\n")
    with open_store(bank, tmp_path, password_file=str(pw_file)) as store:
        assert store.read_bytes(ref) == b"abc" * 5000


def test_password_file_first_line_any_bytes(
    bank: Bank, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first line of a password file is the passphrase, whatever its encoding; an empty
    one is named; a store made when the whole file counted still opens."""
    monkeypatch.delenv("TUTELA_PASSWORD", raising=False)
    pw = tmp_path / "pw"
    pw.write_bytes(b"caf\xe9 latin-1\r\n# a comment line\n")
    with open_store(bank, tmp_path, encryption="aes-256-gcm", password_file=str(pw)) as store:
        ref = store.write_bytes(b"x" * 9000)
    pw.write_bytes(b"caf\xe9 latin-1\n")  # the same first line, nothing after it
    with open_store(bank, tmp_path, password_file=str(pw)) as store:
        assert store.read_bytes(ref) == b"x" * 9000
    pw.write_bytes(b"caf\xe9 latin-2\n")
    with pytest.raises(WrongPasswordError, match="wrong passphrase"):
        open_store(bank, tmp_path, password_file=str(pw))
    pw.write_bytes(b"\nsecond line\n")
    with pytest.raises(MissingPasswordError, match="holds no passphrase") as err:
        open_store(bank, tmp_path, password_file=str(pw))
    assert "second line" not in str(err.value)

    # A store whose passphrase was a whole two-line file (the rule before the first line).
    old = tmp_path / "old"
    old.mkdir()
    section = bank.get_section("old-store")
    with ContentStore.open(
        section, make_config(old, encryption="aes-256-gcm"), password="a\nb"
    ) as s:
        ref = s.write_bytes(b"old" * 3000)
    pw.write_bytes(b"a\nb\n")
    with ContentStore.open(section, make_config(old, password_file=str(pw))) as s:
        assert s.read_bytes(ref) == b"old" * 3000


def test_a_sweep_leaves_the_lock_as_it_found_it(bank: Bank, tmp_path: Path) -> None:
    """A store opened only to sweep holds no lock once the sweep is done (one left behind
    would hold up every other sweep for half an hour); a writer keeps its shared lock."""
    section = bank.get_section("content")
    with open_store(bank, tmp_path) as store:
        store.write_bytes(rand(50_000, 4))
    with open_store(bank, tmp_path) as sweeper:
        sweeper.sweep([])
        assert list(section.iter_objects("locks/")) == []
    with open_store(bank, tmp_path) as writer:
        ref = writer.write_bytes(rand(50_000, 5))
        writer.sweep(ref.chunk_ids())
        [lock] = section.iter_objects("locks/")
        assert section.get_json(lock)["exclusive"] is False
    assert list(section.iter_objects("locks/")) == []


def test_key_file(bank: Bank, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    with open_store(bank, tmp_path, encryption="aes-256-gcm", key_file=str(key)) as store:
        ref = store.write_bytes(b"k" * 100_000)
    with open_store(bank, tmp_path, key_file=str(key)) as store:
        assert store.read_bytes(ref) == b"k" * 100_000
    other = tmp_path / "other"
    other.write_bytes(os.urandom(32))
    with pytest.raises(WrongPasswordError, match="wrong key file"):
        open_store(bank, tmp_path, key_file=str(other))
    with pytest.raises(MissingPasswordError, match="key_file"):
        open_store(bank, tmp_path)


@pytest.mark.parametrize("algorithm", ["aes-256-gcm", "chacha20-poly1305"])
def test_nonces_never_repeat_across_threads_objects_and_fork(algorithm: str) -> None:
    from tutela.contentstore.crypto import NONCE, AeadCipher

    key = os.urandom(32)
    cipher, other = AeadCipher(algorithm, key), AeadCipher(algorithm, key)
    seen: list[bytes] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [cipher.encrypt(b"x", b"aad")[:NONCE] for _ in range(2000)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen.extend(other.encrypt(b"x", b"aad")[:NONCE] for _ in range(2000))
    # A forked child must not continue the parent's counter.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, b"".join(cipher.encrypt(b"x", b"aad")[:NONCE] for _ in range(100)))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    seen.extend(child[i : i + NONCE] for i in range(0, len(child), NONCE))
    seen.extend(cipher.encrypt(b"x", b"aad")[:NONCE] for _ in range(100))
    assert len(seen) == 8000 + 2000 + 100 + 100
    assert len(set(seen)) == len(seen)
    assert cipher.decrypt(cipher.encrypt(b"secret", b"aad"), b"aad") == b"secret"


def test_encryption_cannot_be_asked_of_a_plain_store(bank: Bank, tmp_path: Path) -> None:
    open_store(bank, tmp_path).close()
    with pytest.raises(ConfigError, match="not encrypted"):
        open_store(bank, tmp_path, PASSWORD, encryption="aes-256-gcm")


# -- damage ------------------------------------------------------------------------------
@pytest.mark.parametrize("encryption", ["none", "aes-256-gcm"])
def test_flipped_bit_is_caught_naming_the_pack(bank: Bank, tmp_path: Path, encryption: str) -> None:
    data = text(1 << 20, 7)
    with open_store(bank, tmp_path, PASSWORD, encryption=encryption) as store:
        ref = store.write_bytes(data)
    [path] = pack_files(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0x10
    path.write_bytes(bytes(raw))
    with open_store(bank, tmp_path, PASSWORD) as store:
        with pytest.raises(CorruptDataError) as err:
            store.read_bytes(ref)
        assert path.name in str(err.value)
        assert err.value.pack == path.name
        assert err.value.chunk in ref.chunk_ids()
        report = store.verify(read_data=True)
        assert not report.ok
        assert any(path.name in e for e in report.errors)
        # Each chunk is judged by its own check: only the one that fails is damaged (the
        # others authenticate, or hash to their ids, and restore fine).
        assert report.damaged_chunks == {err.value.chunk}
        # The restore recorded the damage it met in the store: a metadata-only check (which
        # reads no pack) reports it from then on.
        quick = store.verify()
        assert not quick.ok
        assert quick.damaged_chunks == {err.value.chunk}


def test_index_prefers_an_intact_copy_whatever_the_order() -> None:
    cid, other = b"c" * 32, b"o" * 32
    for order in ("bad first", "good first", "marked late"):
        index = Index()
        if order != "marked late":
            index.mark_damaged([(cid, "p1")])
        adds = [("p1", [(cid, 0, 10, 10), (other, 10, 5, 5)]), ("p2", [(cid, 0, 10, 10)])]
        for pack, entries in adds if order != "good first" else adds[::-1]:
            index.add_pack(pack, entries)
        if order == "marked late":
            index.mark_damaged([(cid, "p1")])
        assert index.get(cid).pack == "p2", order
        assert cid in index and not index.is_damaged(cid), order
        assert other in index, order
    only = Index()
    only.add_pack("p1", [(cid, 0, 10, 10)])
    only.mark_damaged([(cid, "p1")])
    assert cid not in only  # not deduplicated against: the next writer stores it again
    assert only.get(cid).pack == "p1"  # but still read (and reported) where it is
    assert only.is_damaged(cid) and only.damaged() == {cid}


def test_sweep_keeps_a_damaged_only_copy_and_its_record(bank: Bank, tmp_path: Path) -> None:
    """With no intact copy elsewhere a damaged chunk stays where it is, recorded as damaged
    (reported as damaged, not as missing), and its pack is not repacked."""
    with open_store(bank, tmp_path, PASSWORD, encryption="aes-256-gcm") as store:
        a = store.write_bytes(rand(10_000, 1))
        b = store.write_bytes(rand(10_000, 2))
        gone = store.write_bytes(rand(20_000, 3))
    [path] = pack_files(tmp_path)
    with open_store(bank, tmp_path, PASSWORD) as store:
        at = store._locate(bytes.fromhex(a.chunks[0][0]))
    raw = bytearray(path.read_bytes())
    raw[at.offset + 5] ^= 1
    path.write_bytes(bytes(raw))
    with open_store(bank, tmp_path, PASSWORD) as store:
        assert not store.verify(read_data=True, referenced=a.chunk_ids() | b.chunk_ids()).ok
        assert store.damaged_chunks() == a.chunk_ids()
        # Half the pack unreferenced: past the repack threshold, but the pack stays whole.
        report = store.sweep(a.chunk_ids() | b.chunk_ids())
        assert report.packs_repacked == 0 and report.packs_deleted == 0
    assert pack_files(tmp_path) == [path]
    del gone
    with open_store(bank, tmp_path, PASSWORD) as store:
        assert store.damaged_chunks() == a.chunk_ids()
        quick = store.verify(referenced=a.chunk_ids() | b.chunk_ids())  # reads no pack
        assert quick.damaged_chunks == a.chunk_ids()
        assert store.read_bytes(b) == rand(10_000, 2)
        # The same data written again is stored again, and the old reference reads it.
        again = store.write_bytes(rand(10_000, 1))
        assert again.chunks == a.chunks
        assert store.stats.chunks_new == 1
        store.flush()
        assert store.read_bytes(a) == rand(10_000, 1)
        assert store.damaged_chunks() == set()


def test_an_unreadable_damage_record_is_ignored(bank: Bank, tmp_path: Path, caplog) -> None:
    with open_store(bank, tmp_path, PASSWORD, encryption="aes-256-gcm") as store:
        ref = store.write_bytes(rand(1000))
    bank.get_section("content").update_object("damaged/" + "0" * 64, b"not a record")
    with open_store(bank, tmp_path, PASSWORD) as store:
        assert store.damaged_chunks() == set()
        assert store.read_bytes(ref) == rand(1000)
    assert "damage record" in caplog.text and "unreadable" in caplog.text


@pytest.mark.parametrize("encryption", ["none", "aes-256-gcm"])
def test_a_pack_is_named_by_its_header_and_a_flip_there_is_caught(
    bank: Bank, tmp_path: Path, encryption: str
) -> None:
    """Store format 4 names a pack by the BLAKE3 of its header as stored (and the length
    after it), not of all its bytes: each blob is checked by its own chunk.  A bit flipped in
    the header leaves every chunk readable, and verify reports the pack as damaged."""
    from tutela.contentstore.pack import header_start, naming

    with open_store(bank, tmp_path, PASSWORD, encryption=encryption) as store:
        ref = store.write_bytes(text(1 << 20, 9))
    [path] = pack_files(tmp_path)
    raw = bytearray(path.read_bytes())
    start = header_start(raw)
    assert path.name == blake3.blake3(raw[start:]).hexdigest() != blake3.blake3(raw).hexdigest()
    assert naming(bytes(raw), path.name) == "tail"
    raw[start + 40] ^= 0x01  # inside the header's entries (encrypted or not)
    path.write_bytes(bytes(raw))
    with open_store(bank, tmp_path, PASSWORD) as store:
        assert store.read_bytes(ref) == text(1 << 20, 9)  # the index says where: no header
        report = store.verify(read_data=True)
        assert not report.ok and not report.damaged_chunks
        assert any(
            f"pack {path.name}: content does not hash to its name" in e for e in report.errors
        )
        assert store.verify(read_data=True, referenced=ref.chunk_ids()).ok


def test_packs_named_the_earlier_way_still_verify() -> None:
    """Packs written before store format 4 are named by the BLAKE3 of all their bytes."""
    from tutela.contentstore.crypto import Keys
    from tutela.contentstore.pack import PackBuilder, blobs_fill, header_start, naming

    builder = PackBuilder()
    builder.add(b"a" * 32, b"first blob", 10)
    builder.add(b"b" * 32, b"second", 6)
    name, parts, entries = builder.seal(Keys.generate("none").cipher)
    pack = b"".join(parts)
    assert naming(pack, name) == "tail"
    assert naming(pack, blake3.blake3(pack).hexdigest()) == "whole"
    assert naming(pack, blake3.blake3(b"other").hexdigest()) is None
    assert naming(b"\xff", name) is None  # too short for a header: no exception
    assert blobs_fill(header_start(pack), entries)
    assert not blobs_fill(header_start(pack) + 1, entries)  # a byte no blob claims
    assert not blobs_fill(16, [(b"a" * 32, 0, 10, 10), (b"b" * 32, 8, 8, 8)])  # overlapping


def test_verify_of_some_chunks_reads_only_their_packs(bank: Bank, tmp_path: Path) -> None:
    """A checkpoint's verify judges its own chunks: damage in a pack it does not use is not
    its problem, and damage elsewhere in a pack it shares is a warning, not an error."""
    with open_store(bank, tmp_path, PASSWORD, encryption="aes-256-gcm") as s:
        a = s.write_bytes(rand(12_000, 1))  # one chunk each: under the minimum chunk size
        s.flush()  # a's pack is sealed before b's chunks arrive
        b = s.write_bytes(rand(12_000, 2))
        c = s.write_bytes(rand(12_000, 3))
    with open_store(bank, tmp_path, PASSWORD) as s:
        locate = s._locate  # where each chunk landed
        [a_id] = a.chunk_ids()
        [b_id] = b.chunk_ids()
        [c_id] = c.chunk_ids()
        a_pack = locate(bytes.fromhex(a_id)).pack
        b_at, c_at = locate(bytes.fromhex(b_id)), locate(bytes.fromhex(c_id))
    assert b_at.pack == c_at.pack != a_pack
    shared = next(p for p in pack_files(tmp_path) if p.name == b_at.pack)
    raw = bytearray(shared.read_bytes())
    raw[c_at.offset + 100] ^= 1  # c's bytes, in the pack that b shares
    shared.write_bytes(bytes(raw))
    with open_store(bank, tmp_path, PASSWORD) as s:
        only_a = s.verify(read_data=True, referenced=a.chunk_ids())
        assert only_a.ok and only_a.packs_checked == 1 and not only_a.warnings
        only_b = s.verify(read_data=True, referenced=b.chunk_ids())
        assert only_b.ok, only_b.errors
        assert only_b.warnings and shared.name in only_b.warnings[0]
        assert s.read_bytes(b) == rand(12_000, 2)
        only_c = s.verify(read_data=True, referenced=c.chunk_ids())
        assert not only_c.ok and only_c.damaged_chunks == {c_id}
        assert any(shared.name in e and c_id in e for e in only_c.errors)


def test_verify_finds_missing_pack_and_unindexed_chunk(bank: Bank, tmp_path: Path) -> None:
    with open_store(bank, tmp_path) as store:
        ref = store.write_bytes(rand(1 << 20, 8))
        store.flush()
        report = store.verify(read_data=True, referenced=ref.chunk_ids())
        assert report.ok and report.chunks_checked == len(ref.chunks)
        [path] = pack_files(tmp_path)
        path.unlink()
        report = store.verify(referenced=ref.chunk_ids() | {"00" * 32})
        assert any(path.name in e and "missing" in e for e in report.errors)
        assert any("00" * 32 in e for e in report.errors)
        assert report.damaged_chunks == ref.chunk_ids() | {"00" * 32}
        with pytest.raises(CorruptDataError, match=path.name):
            store.read_bytes(ref)


def test_unknown_chunk_is_a_clear_error(bank: Bank, tmp_path: Path) -> None:
    with open_store(bank, tmp_path) as store:
        bogus = FileRef(3, "00", (("ab" * 32, 3),))
        with pytest.raises(MissingChunkError, match="ab" * 32):
            store.read_bytes(bogus)


# -- sweep -------------------------------------------------------------------------------
def test_sweep_keeps_referenced_and_deletes_the_rest(bank: Bank, tmp_path: Path) -> None:
    keep, drop = rand(3 << 20, 9), rand(3 << 20, 10)
    with open_store(bank, tmp_path) as store:
        kept = store.write_bytes(keep)
        store.flush()  # separate packs for the two files
        dropped = store.write_bytes(drop)
        store.flush()
        n_before = len(packs(bank))
        report = store.sweep(kept.chunk_ids())
        assert report.packs_deleted >= 1
        assert len(packs(bank)) < n_before
        assert store.read_bytes(kept) == keep
        with pytest.raises(MissingChunkError):
            store.read_bytes(dropped)
        assert store.verify(read_data=True, referenced=kept.chunk_ids()).ok
    with open_store(bank, tmp_path) as store:  # and for a fresh reader of the new index
        assert store.read_bytes(kept) == keep
        again = store.write_bytes(drop)  # dropped chunks are stored anew, not "deduped"
        store.flush()
        assert store.stats.chunks_new == len(again.chunks)
        assert store.read_bytes(again) == drop


def test_sweep_repacks_partly_used_packs(bank: Bank, tmp_path: Path) -> None:
    files = [rand(200_000, 20 + i) for i in range(4)]
    with open_store(bank, tmp_path) as store:
        refs = [store.write_bytes(f) for f in files]
        store.flush()
        [old] = packs(bank)  # all four in one pack
        report = store.sweep(refs[0].chunk_ids(), repack_threshold=0.5)
        assert report.packs_repacked == 1 and report.packs_written == 1
        [new] = packs(bank)
        assert new != old
        assert store.read_bytes(refs[0]) == files[0]
        assert store.verify(read_data=True).ok


def test_sweep_refuses_while_another_writer_is_active(bank: Bank, tmp_path: Path) -> None:
    with open_store(bank, tmp_path) as writer, open_store(bank, tmp_path) as sweeper:
        ref = writer.write_bytes(rand(100_000, 11))
        writer.flush()
        with pytest.raises(StoreLockedError, match="writer"):
            sweeper.sweep(set())
        assert writer.read_bytes(ref)
    with open_store(bank, tmp_path) as sweeper:
        sweeper.sweep(ref.chunk_ids())


def test_sweep_after_a_crashed_sweep_keeps_the_pack_it_repacks_again(tmp_path: Path) -> None:
    """A plain store's repack is deterministic (a pack is named by its content's hash): the
    pack a crashed sweep wrote before its index is the very pack the next sweep writes, and
    must not then be deleted as that crash's orphan."""
    from crashbank import Crashed, CrashingBank

    files = [rand(200_000, 20 + i) for i in range(4)]
    bank = Bank(FilesystemBank(root=tmp_path / "bank", fsync=False))
    with open_store(bank, tmp_path) as store:
        refs = [store.write_bytes(f) for f in files]
    crashing = Bank(
        CrashingBank(root=tmp_path / "bank", fsync=False, crash="put content/index/* 1", fail=True)
    )
    with open_store(crashing, tmp_path) as store, pytest.raises(Crashed):
        store.sweep(refs[0].chunk_ids(), repack_threshold=0.5)
    assert len(packs(bank)) == 2  # the old pack and its repacked copy, not yet indexed
    with open_store(bank, tmp_path) as store:
        report = store.sweep(refs[0].chunk_ids(), repack_threshold=0.5)
        assert report.packs_repacked == 1
        assert len(packs(bank)) == 1
        verified = store.verify(read_data=True, referenced=refs[0].chunk_ids())
        assert verified.ok, verified.errors
        assert store.read_bytes(refs[0]) == files[0]


def test_lock_of_a_gone_process_is_stale_at_once_and_only_then(bank: Bank, tmp_path: Path) -> None:
    """A killed writer's lock (its process provably gone from this machine) does not hold up
    a sweep for 30 minutes; a lock from elsewhere, whose process cannot be looked at, does."""
    code = (
        "import os, signal, sys\n"
        "from tutela.bank import Bank\n"
        "from tutela.bank.filesystem import FilesystemBank\n"
        "from tutela.config import ProviderConfig\n"
        "from tutela.contentstore import ContentStore\n"
        "bank = Bank(FilesystemBank(root=sys.argv[1], fsync=False))\n"
        "config = ProviderConfig.from_dict({'content_store': {'cache_dir': sys.argv[2]}})\n"
        "store = ContentStore.open(bank.get_section('content'), config)\n"
        "store.write_bytes(b'x' * 1000)\n"
        "store.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "bank"), str(tmp_path / "cache2")],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    assert done.returncode == -signal.SIGKILL
    section = bank.get_section("content")
    [left] = list(section.iter_objects("locks/"))
    elsewhere = {**section.get_json(left), "pid": 1}
    elsewhere["process"] = {**elsewhere["process"], "boot": "another machine"}
    with open_store(bank, tmp_path) as store:
        store.sweep(set())  # the dead writer's lock is no obstacle, and is removed
        assert list(section.iter_objects("locks/")) == []  # and the sweeper leaves none
        section.put_json("locks/" + "e" * 32, elsewhere)
        with pytest.raises(StoreLockedError, match="writer"):
            store.sweep(set())


def test_crash_leftovers_are_harmless(bank: Bank, tmp_path: Path) -> None:
    """A pack uploaded without its index segment (crash between the two) loses nothing
    referenced and is removed by the next sweep."""
    with open_store(bank, tmp_path) as store:
        ref = store.write_bytes(rand(1 << 20, 12))
    section = bank.get_section("content")
    section.update_object("packs/ff/" + "ff" * 32, b"half a pack")
    with open_store(bank, tmp_path) as store:
        assert store.read_bytes(ref)
        report = store.verify(read_data=True)
        assert report.ok and report.unindexed_packs == ["ff" * 32]
        store.sweep(ref.chunk_ids())
        assert store.verify().unindexed_packs == []


# -- concurrency -------------------------------------------------------------------------
def test_threads_share_one_store(bank: Bank, tmp_path: Path) -> None:
    shared = rand(1 << 20, 13)
    datas = [rand(1 << 20, 100 + i) + shared for i in range(6)]
    refs: dict[int, FileRef] = {}
    with open_store(bank, tmp_path) as store:

        def work(i: int) -> None:
            refs[i] = store.write_bytes(datas[i])
            store.flush()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(datas))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.stats.chunks_deduplicated > 0
    with open_store(bank, tmp_path) as store:
        for i, data in enumerate(datas):
            assert store.read_bytes(refs[i]) == data
        assert store.verify(read_data=True).ok


def test_two_store_objects_on_one_bank(bank: Bank, tmp_path: Path) -> None:
    other_bank = Bank(FilesystemBank(root=tmp_path / "bank", fsync=False))  # another process
    a = open_store(bank, tmp_path)
    b = ContentStore.open(
        other_bank.get_section("content"), make_config(tmp_path / "b"), password=None
    )
    assert a.id == b.id
    da, db = rand(2 << 20, 14), rand(2 << 20, 15)
    ra, rb = a.write_bytes(da), b.write_bytes(db)
    a.flush()
    b.flush()
    assert a.read_bytes(rb) == db  # found through b's index segment on a miss
    assert b.read_bytes(ra) == da
    a.close()
    b.close()
    with open_store(bank, tmp_path) as c:
        assert c.read_bytes(ra) == da and c.read_bytes(rb) == db
        assert c.verify(read_data=True).ok


def test_concurrent_creation_makes_one_store(tmp_path: Path) -> None:
    banks = [Bank(FilesystemBank(root=tmp_path / "bank", fsync=False)) for _ in range(4)]
    stores: list[ContentStore] = []
    barrier = threading.Barrier(len(banks))

    def create(bank: Bank) -> None:
        barrier.wait()
        stores.append(
            ContentStore.open(
                bank.get_section("content"),
                make_config(tmp_path, encryption="aes-256-gcm"),
                password=PASSWORD,
            )
        )

    threads = [threading.Thread(target=create, args=(b,)) for b in banks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({s.id for s in stores}) == 1
    ref = stores[0].write_bytes(b"one store" * 1000)
    stores[0].flush()
    assert stores[-1].read_bytes(ref) == b"one store" * 1000
    for store in stores:
        store.close()


CHILD = r"""
import json, random, sys
from pathlib import Path
from tutela.bank import Bank
from tutela.bank.filesystem import FilesystemBank
from tutela.config import ProviderConfig
from tutela.contentstore import ContentStore

root, mode = Path(sys.argv[1]), sys.argv[2]
cfg = ProviderConfig.from_dict({"content_store": {"cache_dir": str(root / "cache"),
                                                  "encryption": "aes-256-gcm"}})
bank = Bank(FilesystemBank(root=root / "bank", fsync=False))
store = ContentStore.open(bank.get_section("content"), cfg, password="pw")
rng = random.Random(1)
if mode == "crash":
    ref = store.write([rng.randbytes(3 << 20)])
    store.flush()
    print(json.dumps(ref.to_json()), flush=True)
    def forever():
        n = 0
        while True:
            yield rng.randbytes(1 << 20)
            n += 1
            if n == 40:
                print("busy", flush=True)
    store.write(forever())
else:
    size = int(mode)
    def blocks():
        text = b"".join(b"line %d of a log file with some words\n" % i for i in range(30000))
        for i in range(size >> 20):
            yield rng.randbytes(1 << 20) if i % 3 else text[: 1 << 20]
    ref = store.write(blocks())
    store.close()
    # VmHWM, not ru_maxrss: the latter keeps the peak of the (v)forking parent across exec.
    status = Path("/proc/self/status").read_text()
    rss = int(status.split("VmHWM:")[1].split()[0]) * 1024
    print(json.dumps({"size": ref.size, "rss": rss}), flush=True)
"""


def test_sigkill_mid_write_keeps_flushed_data(bank: Bank, tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), "crash"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    assert child.stdout is not None
    ref = FileRef.from_json(json.loads(child.stdout.readline()))
    assert child.stdout.readline().strip() == "busy"  # mid-write, packs on their way
    child.send_signal(signal.SIGKILL)
    child.wait()
    store = ContentStore.open(
        bank.get_section("content"), make_config(tmp_path), password="pw", create=False
    )
    with store:
        assert store.read_bytes(ref) == random.Random(1).randbytes(3 << 20)
        report = store.verify(read_data=True, referenced=ref.chunk_ids())
        assert report.ok, report.errors


def test_memory_stays_bounded(tmp_path: Path) -> None:
    """Peak RSS does not grow with the stream: 4x the data costs (almost) no more memory.
    The absolute ceiling is loose because glibc keeps per-thread arenas, more of them when
    the machine is busy; the growth check is what proves the bound."""

    def peak(size: int) -> int:
        folder = tmp_path / str(size)
        folder.mkdir()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(folder), str(size)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
        )
        result = json.loads(out.stdout)
        assert result["size"] == size
        return result["rss"]

    small, large = peak(128 << 20), peak(512 << 20)
    assert large - small < 96 << 20, (small, large)  # +384 MiB of data, under +96 MiB of RSS
    assert large < 450 << 20, (small, large)
