"""A real directory tree through each bank: protect -> incremental protect -> verify ->
restore -> delete (which frees space), with the content store encrypted; and, on Swift, an
object server that dies in the middle of a protect."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from concurrently import protect_during_delete
from tutela import OperationFailed, Provider, ProviderConfig, Resource
from tutela.operations import Progress

DIR = "Tutela::Directory"
KINDS = [
    pytest.param("filesystem", id="filesystem"),
    pytest.param("swift", id="swift", marks=pytest.mark.swift),
    pytest.param("s3", id="s3", marks=[pytest.mark.swift, pytest.mark.s3]),
]
FAST_RETRY = {"retry_attempts": "3", "retry_initial_wait": "0.05", "retry_max_wait": "0.3"}


def bank_sections(kind: str, request, tmp_path) -> dict[str, dict[str, str]]:
    if kind == "filesystem":
        return {"filesystem_bank": {"root": str(tmp_path / "bank"), "fsync": "false"}}
    service = request.getfixturevalue("swift_service")
    tag = f"rt{uuid.uuid4().hex[:10]}"
    if kind == "swift":
        return {
            "swift_bank": {
                k: str(v) for k, v in service.swift_options(container=tag, **FAST_RETRY).items()
            }
        }
    opts = service.s3_options(bucket="tutela-tests", prefix=tag, **FAST_RETRY)
    return {"s3_bank": {k: str(v) for k, v in opts.items()}}


def make_provider(kind: str, request, tmp_path, bank: dict | None = None) -> Provider:
    sections = {
        "provider": {
            "id": f"rt-{kind}",
            "bank": kind,
            "plugin": "directory",
            "executor": "threads",
        },
        "content_store": {"encryption": "aes-256-gcm", "pack_size": "4M"},
        **(bank or bank_sections(kind, request, tmp_path)),
    }
    return Provider.from_config(ProviderConfig.from_dict(sections, path=str(tmp_path / "rt.conf")))


def make_tree(root):
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs" / "deep" / "big.bin").write_bytes(os.urandom(6_000_000))
    (root / "docs" / "text.txt").write_text("tutela\n" * 20_000)
    (root / "docs" / "copy.bin").write_bytes((root / "docs" / "deep" / "big.bin").read_bytes())
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("docs/text.txt")
    os.chmod(root / "docs" / "text.txt", 0o600)
    return root


def same_tree(a, b) -> None:
    for dirpath, dirs, files in os.walk(a):
        rel = os.path.relpath(dirpath, a)
        other = os.path.join(b, rel)
        assert sorted(os.listdir(other)) == sorted(dirs + files), rel
        for f in files:
            pa, pb = os.path.join(dirpath, f), os.path.join(other, f)
            if os.path.islink(pa):
                assert os.readlink(pa) == os.readlink(pb)
            else:
                with open(pa, "rb") as x, open(pb, "rb") as y:
                    assert x.read() == y.read(), f
                assert os.stat(pa).st_mode == os.stat(pb).st_mode


@pytest.mark.parametrize("kind", KINDS)
def test_directory_round_trip_through_each_bank(kind, request, tmp_path, monkeypatch):
    monkeypatch.setenv("TUTELA_PASSWORD", "correct horse battery staple")
    src = make_tree(tmp_path / "src")
    provider = make_provider(kind, request, tmp_path)
    try:
        first = provider.protect([Resource(DIR, str(src))])
        assert first.status == "available"
        second = provider.protect([Resource(DIR, str(src))])
        info = second.resource_records()[f"{DIR}#{src}"]["saved_info"]
        assert info["read_bytes"] == 0 and info["reused_files"] == 4
        assert provider.verify(second.id, read_data=True)["ok"]
        out = tmp_path / "restored"
        provider.restore(second.id, {DIR: {"target": str(out)}})
        same_tree(src, out)
        provider.delete(first.id)
        provider.delete(second.id)
        assert provider.referenced_chunks() == set()
        packs = provider.bank.list_objects("content/packs/")
        assert packs == []  # every chunk freed once nothing refers to it
    finally:
        provider.close()


class StopAfter(Progress):
    """Stops the Swift object server once `limit` bytes went through (from a hook thread)."""

    def __init__(self, service, limit: int):
        self.service = service
        self.limit = limit
        self.seen = 0
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def bytes_moved(self, count: int) -> None:
        with self.lock:
            self.seen += count
            fire = self.seen >= self.limit and not self.stopped.is_set()
            if fire:
                self.stopped.set()
        if fire:
            # A short outage: the object server comes back after 4 s, by which time the
            # pack uploads have failed their retries; the error status is written after it.
            self.service.run("stop-server", "object")
            threading.Timer(4.0, self.service.run, ("start-server", "object")).start()


@pytest.mark.swift
def test_object_server_dies_during_protect(request, tmp_path, monkeypatch, swift_service):
    monkeypatch.setenv("TUTELA_PASSWORD", "pw")
    src = make_tree(tmp_path / "src")
    bank = bank_sections("swift", request, tmp_path)
    provider = make_provider("swift", request, tmp_path, bank)
    try:
        good = provider.protect([Resource(DIR, str(src))])
        for i in range(8):
            (src / f"new{i}.bin").write_bytes(os.urandom(3_000_000))
        progress = StopAfter(swift_service, 4_000_000)
        with pytest.raises(OperationFailed) as info:
            provider.protect([Resource(DIR, str(src))], progress=progress)
        assert progress.stopped.is_set()
        assert "swift" in str(info.value).lower()
        failed = provider.checkpoints.get(info.value.record_id)
        assert failed.status == "error"
        assert [c.id for c in provider.checkpoints.list(status="available")] == [good.id]
    finally:
        provider.close()
    # Swift is back: a new protect works, and the earlier checkpoint restores exactly.
    provider = make_provider("swift", request, tmp_path, bank)  # the same container
    try:
        again = provider.protect([Resource(DIR, str(src))])
        assert again.status == "available"
        out = tmp_path / "restored-good"
        provider.restore(good.id, {DIR: {"target": str(out)}})
        for name in ("docs/deep/big.bin", "docs/text.txt", "empty"):
            assert (out / name).read_bytes() == (src / name).read_bytes()
    finally:
        provider.close()


def _largest_pack(provider: Provider) -> str:
    packs = provider.bank.list_objects("content/packs/")
    return max(packs, key=provider.bank.object_size)


@pytest.mark.parametrize("kind", KINDS)
def test_damage_is_caught_on_each_bank(kind, request, tmp_path, monkeypatch):
    """A bit flipped in a stored pack: verify --read-data names the file, restore refuses it
    and leaves no torn file; a pack gone from the bank: even a presence check names it."""
    monkeypatch.setenv("TUTELA_PASSWORD", "correct horse battery staple")
    src = make_tree(tmp_path / "src")
    provider = make_provider(kind, request, tmp_path)
    try:
        cp = provider.protect([Resource(DIR, str(src))])
        victim = _largest_pack(provider)
        stored = bytearray(provider.bank.get_object(victim))
        stored[len(stored) // 2] ^= 0x04
        provider.bank.update_object(victim, bytes(stored))
        assert provider.verify(cp.id)["ok"]  # presence only: every object is there
        report = provider.verify(cp.id, read_data=True)
        assert not report["ok"]
        files = {f for p in report["problems"] for f in p.get("files", [])}
        assert files & {"docs/deep/big.bin", "docs/copy.bin"}, report["problems"]
        out = tmp_path / "restored"
        with pytest.raises(OperationFailed, match="does not authenticate"):
            provider.restore(cp.id, {DIR: {"target": str(out)}})
        if (out / "docs" / "deep" / "big.bin").exists():  # never a torn copy
            assert (out / "docs" / "deep" / "big.bin").read_bytes() == (
                src / "docs" / "deep" / "big.bin"
            ).read_bytes()
        provider.bank.delete_object(victim)
        report = provider.verify(cp.id)
        assert not report["ok"]
        assert any(victim.rsplit("/", 1)[-1] in p["message"] for p in report["problems"])
    finally:
        provider.close()


@pytest.mark.parametrize("kind", KINDS)
def test_one_path_restore_reads_a_range_of_an_old_pack(kind, request, tmp_path, monkeypatch):
    """A lone small file restored out of a pack full of other data: a ranged read, not the
    pack; and the bytes are right."""
    monkeypatch.setenv("TUTELA_PASSWORD", "correct horse battery staple")
    src = make_tree(tmp_path / "src")
    (src / "docs" / "note.txt").write_text("just this one\n")
    provider = make_provider(kind, request, tmp_path)
    try:
        cp = provider.protect([Resource(DIR, str(src))])
        plugin = provider.bank.plugin
        calls: list[tuple[int, int]] = []
        native = plugin.get_object_range

        def counting(key, offset, length):
            calls.append((offset, length))
            return native(key, offset, length)

        plugin.get_object_range = counting  # observe the real read; it still does the work
        out = tmp_path / "one"
        provider.restore(cp.id, {DIR: {"target": str(out), "paths": ["docs/note.txt"]}})
        assert (out / "docs" / "note.txt").read_text() == "just this one\n"
        assert not (out / "docs" / "deep").exists()
        assert calls and all(length < 4096 for _, length in calls)
    finally:
        provider.close()


@pytest.mark.parametrize("kind", KINDS)
def test_delete_during_protect_loses_nothing_on_each_bank(kind, request, tmp_path, monkeypatch):
    monkeypatch.setenv("TUTELA_PASSWORD", "correct horse battery staple")
    src = make_tree(tmp_path / "src")
    bank = bank_sections(kind, request, tmp_path)
    protector = make_provider(kind, request, tmp_path, bank)
    deleter = make_provider(kind, request, tmp_path, bank)  # a second writer, same bank
    try:
        old = protector.protect([Resource(DIR, str(src))])
        for i in range(4):
            (src / f"new{i}.bin").write_bytes(os.urandom(1_500_000))
        new = protect_during_delete(protector, deleter, Resource(DIR, str(src)), old.id)
        deleter.collect_garbage()
        out = tmp_path / "restored"
        deleter.restore(new.id, {DIR: {"target": str(out)}})
        same_tree(src, out)
        assert deleter.verify(new.id, read_data=True)["ok"]
    finally:
        deleter.close()
        protector.close()
