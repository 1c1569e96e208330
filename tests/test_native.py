"""The content store's small-file loop in C (`tutela.contentstore.native`): the same chunk ids
and blobs as the Python path (the Python codec decodes every blob), unique nonces, the same
errors, and stores that either path reads and deduplicates against."""

from __future__ import annotations

import io
import itertools
import os
import random
import sys
from pathlib import Path

import pytest

from tutela.bank import Bank
from tutela.bank.filesystem import FilesystemBank
from tutela.config import ProviderConfig
from tutela.contentstore import ContentStore, LocalFile, native
from tutela.contentstore.crypto import NONCE, Keys
from tutela.contentstore.pack import FLAG_RAW, FLAG_ZSTD, Codec
from tutela.errors import TutelaError

pytestmark = pytest.mark.skipif(
    native._native is None, reason="the C part of the content store is not built"
)
LIMIT = 64 * 1024
PASSWORD = "correct horse battery staple"


class TooBig:
    """Stands for the store's `_TooBig` marker."""


def words(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    vocabulary = [b"protect", b"restore", b"bank", b"chunk", b"pack", b"index", b"lease"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(vocabulary) + b" "
    return bytes(out[:n])


def sample_files(folder: Path) -> dict[str, bytes]:
    """Small files of every kind the data path sees: text, random, repeated, one byte, empty,
    exactly the limit, and two identical ones."""
    rng = random.Random(7)
    files = {
        "text": words(40_000, 1),
        "random": rng.randbytes(30_000),
        "repeated": b"ab" * 5000,
        "byte": b"x",
        "empty": b"",
        "limit": words(LIMIT, 2),
        "copy-a": words(5000, 3),
        "copy-b": words(5000, 3),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def prepare(keys: Keys, folder: Path, names: list[str], compression: str = "zstd", **kw):
    small = native.Worker(
        keys,
        compression,
        kw.get("level", 3),
        kw.get("window_log", 0),
        kw.get("limit", LIMIT),
        TooBig,
        kw.get("fallback", repr),
    )
    files = [LocalFile(str(folder / n), (folder / n).stat().st_size) for n in names]
    return files, small.prepare(files, kw.get("known", lambda cid: False))


@pytest.mark.parametrize("algorithm", ["none", "aes-256-gcm", "chacha20-poly1305"])
@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_blobs_are_what_the_python_codec_reads(tmp_path, algorithm, compression):
    data = sample_files(tmp_path)
    keys = Keys.generate(algorithm)
    codec = Codec(keys.cipher, compression, 3)
    names = list(data)
    files, out = prepare(keys, tmp_path, names, compression)
    flags = {}
    for name, f, result in zip(names, files, out, strict=True):
        if not data[name]:
            assert result is None  # an empty file has no chunk
            continue
        cid, read, blob = result
        assert read == data[name]
        assert cid == keys.chunk_id(data[name])  # keyed BLAKE3 when encrypted, as in Python
        assert codec.decode(cid, blob, len(read)) == data[name]
        plain = keys.cipher.decrypt(blob, b"C" + cid)
        flags[name] = plain[0]
        st = os.stat(f.path)
        assert (f.stat.st_size, f.stat.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    if compression == "zstd":
        assert flags["text"] == flags["repeated"] == FLAG_ZSTD
        assert flags["random"] == FLAG_RAW  # saves under 1/64: stored raw, as in Python
    else:
        assert set(flags.values()) == {FLAG_RAW}


@pytest.mark.parametrize("algorithm", ["none", "aes-256-gcm"])
@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_chunks_given_as_views_are_what_the_python_codec_reads(algorithm, compression):
    """The chunks of large files arrive as read-only views of the chunker's buffer."""
    keys = Keys.generate(algorithm)
    codec = Codec(keys.cipher, compression, 1, 23)
    buffer = bytearray(words(3 << 20, 4) + random.Random(5).randbytes(1 << 20) + b"ab" * 4096)
    view = memoryview(buffer).toreadonly()
    cuts = [0, 1 << 20, 3 << 20, 4 << 20, len(buffer)]
    chunks = [view[a:b] for a, b in itertools.pairwise(cuts)]
    worker = native.Worker(keys, compression, 1, 23, LIMIT, TooBig, repr)
    known = {keys.chunk_id(bytes(chunks[1]))}
    out = worker.prepare_chunks(chunks, known.__contains__)
    assert [cid for cid, _, _ in out] == [keys.chunk_id(bytes(c)) for c in chunks]
    assert [data for _, data, _ in out] == chunks
    assert out[1][2] is None  # known: hashed only
    for cid, data, blob in (out[0], out[2], out[3]):
        assert codec.decode(cid, blob, len(data)) == data
    # The worker thread's zstd context is reused: a small chunk after wide ones is
    # compressed as a fresh context compresses it.
    small = view[: 4 * 1024]
    fresh = native.Worker(keys, compression, 1, 0, LIMIT, TooBig, repr)
    after = worker.prepare_chunks([small], lambda cid: False)[0][2]
    alone = fresh.prepare_chunks([small], lambda cid: False)[0][2]
    assert len(after) == len(alone)
    assert codec.decode(keys.chunk_id(bytes(small)), after, len(small)) == small


def test_known_chunks_are_not_encoded(tmp_path):
    data = sample_files(tmp_path)
    keys = Keys.generate("aes-256-gcm")
    known = {keys.chunk_id(data["text"])}
    _, out = prepare(keys, tmp_path, ["text", "random"], known=known.__contains__)
    assert out[0] == (keys.chunk_id(data["text"]), data["text"], None)
    assert out[1][2] is not None


def far_repeat() -> bytes:
    """1 MiB whose second part repeats its first 400 KiB from 640 KiB back: beyond level 1's
    own 512 KiB window, within a window that covers the whole chunk."""
    head = random.Random(3).randbytes(640 * 1024)
    return head + head[: 400 * 1024]


def test_a_wide_window_finds_repeats_beyond_the_levels_own(tmp_path):
    data = far_repeat()
    (tmp_path / "far").write_bytes(data)
    keys = Keys.generate("none")
    sizes = {}
    for window_log in (0, 20):
        codec = Codec(keys.cipher, "zstd", 1, window_log)
        python_blob = codec.encode(keys.chunk_id(data), data)
        _, [(cid, _, c_blob)] = prepare(
            keys, tmp_path, ["far"], level=1, window_log=window_log, limit=2 * len(data)
        )
        for blob in (python_blob, c_blob):  # both paths, decoded by the Python codec
            assert codec.decode(cid, blob, len(data)) == data
        sizes[window_log] = (len(python_blob), len(c_blob))
    # Without it, only incompressible bytes (kept raw); with it, the repeat is found.
    assert sizes[0] == (len(data) + 1, len(data) + 1)
    assert all(n < 700 * 1024 for n in sizes[20])


def test_nonces_never_repeat_within_or_across_batches(tmp_path):
    sample_files(tmp_path)
    keys = Keys.generate("aes-256-gcm")
    nonces = []
    for _ in range(20):
        _, out = prepare(keys, tmp_path, ["text", "random", "repeated", "byte", "copy-a"])
        nonces += [blob[:NONCE] for _, _, blob in out]
    assert len(set(nonces)) == len(nonces) == 100


def test_errors_are_those_of_the_python_path(tmp_path):
    (tmp_path / "big").write_bytes(b"z" * (LIMIT + 1))
    (tmp_path / "grew").write_bytes(b"seed")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    keys = Keys.generate("none")
    files = [
        LocalFile(str(tmp_path / "missing"), 10),
        LocalFile(str(tmp_path / "big"), LIMIT + 1),
        LocalFile(str(tmp_path / "grew"), 2),  # listed at 2 bytes, 4 when read
        LocalFile(str(tmp_path / "fifo"), 0),
        LocalFile(str(tmp_path / "folder"), 4096),
    ]
    fallen_back = []
    small = native.Worker(keys, "zstd", 3, 0, LIMIT, TooBig, lambda f: fallen_back.append(f))
    missing, big, grew, fifo, folder = small.prepare(files, lambda cid: False)
    assert isinstance(missing, FileNotFoundError) and missing.filename == files[0].path
    assert big is TooBig
    assert fallen_back == [files[2]] and grew is None  # the Python path reads it to its end
    assert isinstance(fifo, OSError) and "no longer a regular file" in str(fifo)
    assert isinstance(folder, IsADirectoryError)


def open_store(bank: Bank, tmp_path: Path) -> ContentStore:
    config = ProviderConfig.from_dict(
        {
            "content_store": {
                "cache_dir": str(tmp_path / "cache"),
                "encryption": "aes-256-gcm",
                "chunk_min": "64K",
                "chunk_avg": "128K",
                "chunk_max": "256K",
                "pack_size": "1M",
            }
        },
        path=str(tmp_path / "p.conf"),
    )
    return ContentStore.open(bank.get_section("content"), config, password=PASSWORD)


@pytest.mark.parametrize("first, second", [("1", "0"), ("0", "1")])
def test_either_path_reads_and_deduplicates_what_the_other_wrote(
    tmp_path, monkeypatch, first, second
):
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    folder = tmp_path / "files"
    folder.mkdir()
    data = sample_files(folder)
    sources = [(n, LocalFile(str(folder / n), len(d))) for n, d in data.items()]
    bank = Bank(FilesystemBank(root=tmp_path / "bank", fsync=False))
    monkeypatch.setenv("TUTELA_NATIVE", first)
    with open_store(bank, tmp_path) as store:
        refs = dict(store.write_many(sources))
        store.flush()
        written = store.stats.chunks_new
    assert written == 6  # 8 files: one empty, two the same
    monkeypatch.setenv("TUTELA_NATIVE", second)
    with open_store(bank, tmp_path) as store:
        for name, ref in refs.items():
            assert store.read_bytes(ref) == data[name]
        fresh = [(n, LocalFile(str(folder / n), len(d))) for n, d in data.items()]
        again = dict(store.write_many(fresh))
        store.flush()
        assert again == refs  # same chunk ids: nothing new stored
        assert store.stats.chunks_new == 0


def test_asked_for_but_not_built_is_an_error(monkeypatch):
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setenv("TUTELA_NATIVE", "1")
    with pytest.raises(TutelaError, match="TUTELA_NATIVE=1 but"):
        native.wanted()
    monkeypatch.setenv("TUTELA_NATIVE", "")
    assert native.wanted() is False  # not built, not asked for: the Python path
    monkeypatch.setenv("TUTELA_NATIVE", "0")
    assert native.wanted() is False


def test_a_file_changed_after_the_walk_is_read_again(make_provider, tmp_path, monkeypatch):
    # Rewritten between the walk and the read, same size and a new mtime: the fstat the C
    # path takes after its read tells the directory plugin, which reads the file once more
    # and stores what it holds now.
    from tutela import Resource
    from tutela.plugins import directory

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"before" * 100)
    (src / "b.txt").write_bytes(b"other" * 100)
    real_walk = directory._walk

    def walk_then_rewrite(root, exclude):
        for rel, st in real_walk(root, exclude):
            yield rel, st
            if rel == "a.txt":
                (src / "a.txt").write_bytes(b"after!" * 100)
                os.utime(src / "a.txt", ns=(st.st_mtime_ns + 10**9, st.st_mtime_ns + 10**9))

    monkeypatch.setattr(directory, "_walk", walk_then_rewrite)
    monkeypatch.setenv("TUTELA_NATIVE", "1")
    provider = make_provider()
    cp = provider.protect([Resource("Tutela::Directory", str(src))])
    info = cp.resource_records()[f"Tutela::Directory#{src}"]["saved_info"]
    assert "changed_while_read_count" not in info  # stable on the second read
    out = tmp_path / "out"
    provider.restore(cp.id, {"Tutela::Directory": {"target": str(out)}})
    assert (out / "a.txt").read_bytes() == b"after!" * 100
    assert (out / "a.txt").stat().st_mtime_ns == (src / "a.txt").stat().st_mtime_ns
