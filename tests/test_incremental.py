"""Tutela::Directory on the content store: incremental forever, dedup, single-path restore,
listing, verify, delete that frees space (also while a protect runs), prune."""

from __future__ import annotations

import json
import os

import pytest

from concurrently import protect_during_delete
from tutela import OperationFailed, Resource
from tutela.cli import main
from tutela.retention import Policy, select

DIR = "Tutela::Directory"


def tree(root, n=30, size=50_000):
    (root / "a" / "b").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "a" / f"f{i}.bin").write_bytes(os.urandom(size))
    (root / "a" / "b" / "text.txt").write_text("line\n" * 10_000)
    return root


def info_of(cp, path):
    return cp.resource_records()[f"{DIR}#{path}"]["saved_info"]


def details_of(provider, cp, path):
    """The name lists behind the saved info's counts (kept encrypted in the store)."""
    resource = Resource(DIR, str(path))
    plugin = provider.type_map[DIR]
    section = cp.resource_section(resource, writable=False)
    return plugin.saved_details(section, resource, store=provider.content_store())


def bank_bytes(root):
    return sum(p.stat().st_size for p in (root / "objects" / "content").rglob("*") if p.is_file())


def test_unchanged_reprotect_reads_nothing_and_stores_nothing(make_provider, tmp_path):
    src = tree(tmp_path / "src")
    provider = make_provider()
    first = provider.protect([Resource(DIR, str(src))])
    assert info_of(first, src)["read_bytes"] == info_of(first, src)["bytes"] > 0
    size1 = bank_bytes(tmp_path / "bank")
    second = provider.protect([Resource(DIR, str(src))])
    info = info_of(second, src)
    assert info["read_bytes"] == 0
    assert info["reused_files"] == 31
    assert info["previous_checkpoint"] == first.id
    assert bank_bytes(tmp_path / "bank") - size1 < 20_000  # only index/lock metadata
    # One changed file is the only one read again.
    (src / "a" / "f3.bin").write_bytes(os.urandom(50_000))
    third = provider.protect([Resource(DIR, str(src))])
    assert info_of(third, src)["read_bytes"] == 50_000
    out = tmp_path / "out"
    provider.restore(third.id, {DIR: {"target": str(out)}})
    assert (out / "a" / "f3.bin").read_bytes() == (src / "a" / "f3.bin").read_bytes()
    assert (out / "a" / "b" / "text.txt").read_text() == (src / "a" / "b" / "text.txt").read_text()


def test_duplicate_files_are_stored_once(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    blob = os.urandom(2_000_000)
    for i in range(5):
        (src / f"copy{i}").write_bytes(blob)
    provider = make_provider()
    provider.protect([Resource(DIR, str(src))])
    stored = bank_bytes(tmp_path / "bank")
    assert stored < 2_500_000  # five copies of 2 MB, stored once


def test_restore_single_path_and_ls(make_provider, tmp_path, env_config_dir, capsys):
    src = tree(tmp_path / "src", n=3)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out), "paths": ["a/b"]}})
    assert (out / "a" / "b" / "text.txt").exists()
    assert not (out / "a" / "f0.bin").exists()
    with pytest.raises(OperationFailed) as info:
        provider.restore(cp.id, {DIR: {"target": str(tmp_path / "out2"), "paths": ["nope"]}})
    assert "not in checkpoint" in str(info.value)
    # The CLI lists the files (through a provider file pointing at the same bank).
    (env_config_dir / "p.conf").write_text(
        f"[provider]\nid = test-provider\nbank = filesystem\nplugin = directory\n"
        f"[filesystem_bank]\nroot = {tmp_path / 'bank'}\n"
    )
    assert main(["checkpoints", "ls", cp.id, "a/b", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["path"] for e in listed] == ["a/b", "a/b/text.txt"]


def test_file_changing_while_read_is_reported(make_provider, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    victim = src / "busy.log"
    victim.write_bytes(b"x" * 100_000)
    real_stat, real_fstat = os.stat, os.fstat

    def grow() -> None:
        with open(victim, "ab") as fh:
            fh.write(b"y")

    # Every look at the file after the walk, by path or by open descriptor (a small file is
    # read and checked on the content store's workers), finds it has grown.
    def moving_stat(path, *a, **kw):
        if str(path) == str(victim):
            grow()
        return real_stat(path, *a, **kw)

    def moving_fstat(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == str(victim):
            grow()
        return real_fstat(fd)

    monkeypatch.setattr(os, "stat", moving_stat)
    monkeypatch.setattr(os, "fstat", moving_fstat)
    # The fake fstat is seen by the Python path only (the C one calls fstat itself).
    monkeypatch.setenv("TUTELA_NATIVE", "0")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    info = info_of(cp, src)
    assert info["changed_while_read_count"] == 1
    assert details_of(provider, cp, src)["changed_while_read"] == ["busy.log"]


@pytest.mark.parametrize("size", [10_000, 700_000])  # read on the store's workers / streamed
def test_file_deleted_after_the_walk_is_left_out(
    make_provider, tmp_path, delete_after_listing, size
):
    src = tree(tmp_path / "src", n=3)
    (src / "a" / "victim.bin").write_bytes(os.urandom(size))
    delete_after_listing("a/victim.bin")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    info = info_of(cp, src)
    assert info["vanished_count"] == 1
    assert details_of(provider, cp, src)["vanished"] == ["a/victim.bin"]
    assert info["files"] == 4
    assert info["bytes"] == 3 * 50_000 + len("line\n" * 10_000)
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out)}})
    restored = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert restored == sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    assert "a/victim.bin" not in restored


def test_verify_catches_a_flipped_bit(make_provider, tmp_path, capsys, env_config_dir):
    src = tree(tmp_path / "src", n=4)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    assert provider.verify(cp.id, read_data=True)["ok"]
    provider.close()
    packs = [
        p for p in (tmp_path / "bank" / "objects" / "content" / "packs").rglob("*") if p.is_file()
    ]
    data = bytearray(packs[0].read_bytes())
    data[len(data) // 2] ^= 0x10
    packs[0].write_bytes(bytes(data))
    provider = make_provider()
    assert provider.verify(cp.id, read_data=False)["ok"]  # presence only
    report = provider.verify(cp.id, read_data=True)
    assert not report["ok"]
    files = [f for p in report["problems"] for f in p.get("files", [])]
    assert files and all(f.startswith("a/") for f in files)
    (env_config_dir / "p.conf").write_text(
        f"[provider]\nid = test-provider\nbank = filesystem\nplugin = directory\n"
        f"[filesystem_bank]\nroot = {tmp_path / 'bank'}\n"
    )
    assert main(["verify", cp.id, "--read-data"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out
    assert "the next protect stores the data of these files again" in out


def test_verify_promises_only_for_available_checkpoints_and_survives_a_damaged_list(
    make_provider, tmp_path
):
    """A deleted checkpoint is not "ok"; a damaged file list is reported, not raised."""
    src = tree(tmp_path / "src", n=2)
    provider = make_provider()
    doomed = provider.protect([Resource(DIR, str(src))])
    kept = provider.protect([Resource(DIR, str(src))])
    provider.delete(doomed.id)
    report = provider.verify(doomed.id)
    assert not report["ok"]
    assert "status is 'deleted'" in report["problems"][0]["message"]
    # Damage the one chunk of the kept checkpoint's manifest (its file list).
    store = provider.content_store()
    section = kept.resource_section(Resource(DIR, str(src)), writable=False)
    manifest = json.loads(section.get_object("manifest.ref"))
    at = store._locate(bytes.fromhex(manifest["chunks"][0][0]))
    provider.close()
    [pack] = (tmp_path / "bank" / "objects" / "content" / "packs").rglob(at.pack)
    raw = bytearray(pack.read_bytes())
    raw[at.offset + 20] ^= 1
    pack.write_bytes(bytes(raw))
    provider = make_provider()
    report = provider.verify(kept.id, read_data=True)
    assert not report["ok"]
    [item] = [p for p in report["problems"] if "resource" in p]
    assert "list of files is unreadable" in item["message"]


def test_entries_deleted_while_the_tree_is_listed_are_left_out(
    make_provider, tmp_path, monkeypatch
):
    """A file gone between its folder's listing and its lstat, and a folder gone before it is
    listed (temporary files of a busy tree), do not fail the protect."""
    src = tree(tmp_path / "src", n=3)
    (src / "tmp").mkdir()
    (src / "tmp" / "x").write_bytes(b"x")
    real_scandir = os.scandir

    class Listing:
        def __init__(self, entries):
            self.entries = entries

        def __enter__(self):
            return iter(self.entries)

        def __iter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    def scandir_then_delete(path):
        with real_scandir(path) as it:
            entries = list(it)
        if os.fspath(path) == str(src / "a"):
            os.unlink(src / "a" / "f1.bin")  # listed, then gone before its lstat
            os.unlink(src / "tmp" / "x")
            os.rmdir(src / "tmp")  # listed in src, gone before it is listed itself
        return Listing(entries)

    monkeypatch.setattr(os, "scandir", scandir_then_delete)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    monkeypatch.setattr(os, "scandir", real_scandir)
    assert cp.status == "available"
    resource = Resource(DIR, str(src))
    section = cp.resource_section(resource, writable=False)
    listed = {
        e["path"]
        for e in provider.type_map[DIR].list_files(
            section, resource, store=provider.content_store()
        )
    }
    assert "a/f0.bin" in listed and "a/f1.bin" not in listed and "tmp/x" not in listed


def _flip_chunk_of(provider, cp, src, rel, bank_root):
    """Flip one bit inside the stored chunk of file `rel`; returns its chunk id (hex)."""
    resource = Resource(DIR, str(src))
    store = provider.content_store()
    section = cp.resource_section(resource, writable=False)
    [entry] = provider.type_map[DIR].list_files(section, resource, rel, store=store)
    cid = entry["ref"]["chunks"][0][0]
    at = store._locate(bytes.fromhex(cid))
    [pack] = (bank_root / "objects" / "content" / "packs").rglob(at.pack)
    raw = bytearray(pack.read_bytes())
    raw[at.offset + 20] ^= 1
    pack.write_bytes(bytes(raw))
    return cid


def damage_records(bank_root):
    folder = bank_root / "objects" / "content" / "damaged"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_damage_found_by_verify_heals_with_the_next_protect(make_provider, tmp_path):
    """verify --read-data records a damaged chunk; the next protect of the unchanged tree reads
    the file that needs it again and stores it anew (dedup no longer trusts the damaged
    copy), so the older checkpoint restores again too; a delete then drops the damaged copy."""
    src = tree(tmp_path / "src", n=4, size=200_000)
    bank_root = tmp_path / "bank"
    provider = make_provider()
    first = provider.protect([Resource(DIR, str(src))])
    _flip_chunk_of(provider, first, src, "a/f2.bin", bank_root)
    provider.close()
    provider = make_provider()
    report = provider.verify(first.id, read_data=True)
    assert not report["ok"]
    assert [f for p in report["problems"] for f in p.get("files", [])] == ["a/f2.bin"]
    assert len(damage_records(bank_root)) == 1
    provider.close()

    provider = make_provider()  # another process: it learns the damage from the bank
    second = provider.protect([Resource(DIR, str(src))])
    info = info_of(second, src)
    assert info["read_bytes"] == 200_000  # the one file whose data was damaged
    assert info["reused_files"] == 4
    assert provider.verify(second.id, read_data=True)["ok"]
    healed = provider.verify(first.id, read_data=True)
    assert healed["ok"], healed["problems"]
    assert any("intact copy" in w for w in healed["warnings"])
    out = tmp_path / "out"
    provider.restore(first.id, {DIR: {"target": str(out)}})
    assert (out / "a" / "f2.bin").read_bytes() == (src / "a" / "f2.bin").read_bytes()

    provider.delete(first.id)  # frees space: the pack with the damaged copy is rewritten
    store = provider.content_store()
    full = store.verify(read_data=True)
    assert full.ok and not full.warnings, (full.errors, full.warnings)
    assert damage_records(bank_root) == []
    out2 = tmp_path / "out2"
    provider.restore(second.id, {DIR: {"target": str(out2)}})
    for f in src.rglob("*"):
        if f.is_file():
            assert (out2 / f.relative_to(src)).read_bytes() == f.read_bytes()


def test_damage_met_by_a_restore_heals_with_the_next_protect(make_provider, tmp_path):
    src = tree(tmp_path / "src", n=3, size=100_000)
    bank_root = tmp_path / "bank"
    provider = make_provider()
    first = provider.protect([Resource(DIR, str(src))])
    _flip_chunk_of(provider, first, src, "a/f1.bin", bank_root)
    provider.close()
    provider = make_provider()
    with pytest.raises(OperationFailed, match=r"f1\.bin"):
        provider.restore(first.id, {DIR: {"target": str(tmp_path / "out")}})
    assert len(damage_records(bank_root)) == 1
    second = provider.protect([Resource(DIR, str(src))])
    assert info_of(second, src)["read_bytes"] == 100_000
    out = tmp_path / "out2"
    provider.restore(first.id, {DIR: {"target": str(out)}})
    assert (out / "a" / "f1.bin").read_bytes() == (src / "a" / "f1.bin").read_bytes()


def test_delete_frees_space_but_keeps_what_others_need(make_provider, tmp_path):
    src = tree(tmp_path / "src", n=10, size=200_000)
    provider = make_provider()
    first = provider.protect([Resource(DIR, str(src))])
    for i in range(5):
        (src / "a" / f"f{i}.bin").write_bytes(os.urandom(200_000))
    second = provider.protect([Resource(DIR, str(src))])
    before = bank_bytes(tmp_path / "bank")
    provider.delete(first.id)
    after = bank_bytes(tmp_path / "bank")
    assert before - after > 800_000  # the five replaced files' chunks are gone
    out = tmp_path / "out"
    provider.restore(second.id, {DIR: {"target": str(out)}})
    for i in range(10):
        assert (out / "a" / f"f{i}.bin").read_bytes() == (src / "a" / f"f{i}.bin").read_bytes()
    assert provider.verify(second.id, read_data=True)["ok"]


def test_delete_and_protect_at_the_same_time_lose_nothing(make_provider, tmp_path):
    src = tree(tmp_path / "src", n=20, size=100_000)
    protector = make_provider()
    deleter = make_provider()  # another writer on the same bank, as another process would be
    old = protector.protect([Resource(DIR, str(src))])
    new = protect_during_delete(protector, deleter, Resource(DIR, str(src)), old.id)
    out = tmp_path / "out"
    deleter.close()
    protector.close()
    fresh = make_provider()
    fresh.restore(new.id, {DIR: {"target": str(out)}})
    for i in range(20):
        assert (out / "a" / f"f{i}.bin").read_bytes() == (src / "a" / f"f{i}.bin").read_bytes()
    fresh.collect_garbage()
    assert fresh.verify(new.id, read_data=True)["ok"]


def test_retention_policy_selection():
    cps = [
        ("c1", "2026-11-01T10:00:00Z", "available"),
        ("c2", "2026-11-01T12:00:00Z", "available"),
        ("c3", "2026-11-02T12:00:00Z", "available"),
        ("c4", "2026-11-09T12:00:00Z", "available"),
        ("c5", "2026-11-10T12:00:00Z", "error"),
    ]
    delete, kept = select(cps, Policy(keep_last=1))
    assert sorted(delete) == ["c1", "c2", "c3", "c5"] and list(kept) == ["c4"]
    delete, kept = select(cps, Policy(keep_daily=3))
    assert sorted(kept) == ["c2", "c3", "c4"] and sorted(delete) == ["c1", "c5"]
    delete, kept = select(cps, Policy(keep_weekly=2))
    assert sorted(kept) == ["c3", "c4"]
    delete, kept = select(cps, Policy(keep_monthly=1, keep_last=2))
    assert sorted(kept) == ["c3", "c4"]


def protect_versions(provider, src, count: int, size: int) -> list[str]:
    """`count` checkpoints of `src`, a/f0.bin rewritten with `size` new bytes before each."""
    ids = []
    for _ in range(count):
        (src / "a" / "f0.bin").write_bytes(os.urandom(size))
        ids.append(provider.protect([Resource(DIR, str(src))]).id)
    return ids


def test_prune_deletes_by_policy_and_frees_space(make_provider, tmp_path):
    src = tree(tmp_path / "src", n=5, size=100_000)
    provider = make_provider()
    ids = protect_versions(provider, src, 3, 300_000)
    dry = provider.prune(Policy(keep_last=1), dry_run=True)
    assert sorted(dry["groups"][0]["delete"]) == sorted(ids[:2]) and dry["deleted"] == []
    result = provider.prune(Policy(keep_last=1))
    assert sorted(result["deleted"]) == sorted(ids[:2])
    assert result["freed_bytes"] > 400_000
    assert [c.id for c in provider.checkpoints.list()] == [ids[2]]


def test_prune_cli_shows_each_delete_and_can_be_quiet(
    make_provider, tmp_path, capsys, env_config_dir
):
    src = tree(tmp_path / "src", n=3, size=50_000)
    provider = make_provider()
    ids = protect_versions(provider, src, 4, 60_000)
    provider.close()
    (env_config_dir / "p.conf").write_text(
        f"[provider]\nid = test-provider\nbank = filesystem\nplugin = directory\n"
        f"[filesystem_bank]\nroot = {tmp_path / 'bank'}\n"
    )
    assert main(["prune", "--keep-last", "2"]) == 0
    out, err = capsys.readouterr()
    assert f"delete  {ids[0]}" in out and f"delete  {ids[1]}" in out
    lines = err.splitlines()
    for cid in ids[:2]:  # each delete counted from zero, the second not on top of the first
        end = [line for line in lines if line.startswith(f"delete {cid}: ")][-1]
        done, total = end.split("(", 1)[1].split(" tasks")[0].split("/")
        assert done == total != "0", end
    assert any("freeing the space" in line for line in lines)
    assert main(["prune", "--keep-last", "1", "-q"]) == 0
    out, err = capsys.readouterr()
    assert f"delete  {ids[2]}" in out and err == ""


def test_encrypted_bank_holds_no_file_names_or_contents_in_the_clear(
    make_provider, tmp_path, monkeypatch
):
    monkeypatch.setenv("TUTELA_PASSWORD", "s3cret passphrase")
    src = tmp_path / "src"
    (src / "private").mkdir(parents=True)
    (src / "private" / "payroll-2026-names.csv").write_text("alice,1000000\n" * 500)
    provider = make_provider(extra={"content_store": {"encryption": "aes-256-gcm"}})
    cp = provider.protect([Resource(DIR, str(src))])
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out)}})
    assert (out / "private" / "payroll-2026-names.csv").read_text() == "alice,1000000\n" * 500
    for path in (tmp_path / "bank").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"payroll-2026-names" not in data, path
            assert b"alice,1000000" not in data, path
