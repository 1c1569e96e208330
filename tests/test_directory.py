"""Tutela::Directory and Tutela::Group on the real filesystem bank."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from tutela import OperationFailed, Resource, TutelaError

DIR = "Tutela::Directory"


def make_tree(root):
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "emptydir").mkdir()
    (root / "empty").write_bytes(b"")
    (root / "one").write_bytes(b"x")
    (root / "sub" / "random.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "sub" / "deeper" / "text.txt").write_text("hello\n" * 1000)
    (root / "link-rel").symlink_to("sub/deeper/text.txt")
    (root / "link-abs").symlink_to("/etc/hostname")
    (root / "link-dangling").symlink_to("does/not/exist")
    os.chmod(root / "one", 0o640)
    os.chmod(root / "sub" / "deeper", 0o750)
    os.utime(root / "one", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def snapshot(root):
    """Everything that must survive a round trip, per relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            entry = {"mode": stat.S_IMODE(st.st_mode), "type": stat.S_IFMT(st.st_mode)}
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as fh:
                    entry["sha"] = hashlib.sha256(fh.read()).hexdigest()
                entry["size"] = st.st_size
                entry["mtime_ns"] = st.st_mtime_ns
            out[rel] = entry
    return out


def test_round_trip_is_byte_identical(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    assert cp.status == "available"
    info = cp.resource_records()[f"{DIR}#{src}"]["saved_info"]
    assert (
        info["files"] == 4
        and info["symlinks"] == 3
        and info["bytes"] == 3 * 1024 * 1024 + 17 + 1 + 6000
    )
    target = tmp_path / "restored"
    provider.restore(cp.id, {DIR: {"target": str(target)}})
    assert snapshot(target) == snapshot(src)
    assert (target / "empty").stat().st_size == 0
    assert os.readlink(target / "link-dangling") == "does/not/exist"


def test_restore_to_original_path_and_refusal_of_non_empty_target(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    before = snapshot(src)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    with pytest.raises(OperationFailed) as info:
        provider.restore(cp.id)
    assert "not empty" in str(info.value) and "overwrite" in str(info.value)
    # Damage the original, then restore over it.
    (src / "one").write_bytes(b"changed")
    (src / "sub" / "random.bin").unlink()
    provider.restore(cp.id, {DIR: {"overwrite": True}})
    assert snapshot(src) == before


def test_restore_parameters_are_checked(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    from tutela import ParameterError

    with pytest.raises(ParameterError) as info:
        provider.restore(cp.id, {DIR: {"overwrite": "yes"}})
    assert info.value.field == "overwrite"


def flip_a_bit_in_every_pack(bank_root):
    packs = [p for p in (bank_root / "objects" / "content" / "packs").rglob("*") if p.is_file()]
    assert packs
    for pack in packs:
        data = bytearray(pack.read_bytes())
        data[len(data) // 3] ^= 0x01
        pack.write_bytes(bytes(data))


def test_damaged_bank_copy_is_caught_on_restore(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(300_000))
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    provider.close()
    flip_a_bit_in_every_pack(tmp_path / "bank")
    provider = make_provider()
    with pytest.raises(OperationFailed) as info:
        provider.restore(cp.id, {DIR: {"target": str(tmp_path / "out")}})
    assert "corrupt" in str(info.value).lower() or "damaged" in str(info.value).lower()
    assert not (tmp_path / "out" / "f").exists()


def test_a_failed_restore_of_many_files_leaves_no_torn_file(make_provider, tmp_path):
    # Many small files (restored in batches on several threads) and one damaged chunk: the
    # restore fails naming the damage, and every file it leaves is whole and right.
    src = tmp_path / "src"
    for i in range(300):
        sub = src / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}").write_bytes(os.urandom(2000 + i))
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    provider.close()
    flip_a_bit_in_every_pack(tmp_path / "bank")
    provider = make_provider()
    out = tmp_path / "out"
    with pytest.raises(OperationFailed) as info:
        provider.restore(cp.id, {DIR: {"target": str(out)}})
    assert "damaged" in str(info.value).lower() or "corrupt" in str(info.value).lower()
    left = [p for p in out.rglob("*") if p.is_file()]
    assert len(left) < 300
    for path in left:
        assert not path.name.startswith(".tutela-restore-")
        assert path.read_bytes() == (src / path.relative_to(out)).read_bytes()


def test_overwrite_replaces_a_planted_link_instead_of_writing_through_it(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "one").write_bytes(b"from the checkpoint")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    outside = tmp_path / "outside"
    outside.write_bytes(b"must not change")
    (src / "one").unlink()
    (src / "one").symlink_to(outside)
    provider.restore(cp.id, {DIR: {"overwrite": True}})
    assert not (src / "one").is_symlink()
    assert (src / "one").read_bytes() == b"from the checkpoint"
    assert outside.read_bytes() == b"must not change"
    assert not [p for p in src.iterdir() if p.name.startswith(".tutela-restore-")]


def test_tampered_manifest_cannot_escape_the_target(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    # Someone with write access to the bank plants a manifest entry that climbs out.
    from tutela.plugins.directory import read_manifest

    section = cp.resource_section(Resource(DIR, str(src)))
    store = provider.content_store()
    entries = read_manifest(section, store)
    entries[-1]["path"] = "../escaped"
    ref = store.write_bytes("".join(json.dumps(e) + "\n" for e in entries).encode())
    store.flush()
    section.put_json("manifest.ref", ref.to_json())
    with pytest.raises(OperationFailed) as info:
        provider.restore(cp.id, {DIR: {"target": str(tmp_path / "out")}})
    assert "not a safe relative path" in str(info.value)
    assert not (tmp_path / "escaped").exists()


def test_delete_removes_the_data(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    objects = tmp_path / "bank" / "objects" / "checkpoints" / cp.id / "data"
    assert any(objects.rglob("*"))
    provider.delete(cp.id)
    assert not objects.exists() or not any(p.is_file() for p in objects.rglob("*"))
    with pytest.raises(TutelaError):
        provider.restore(cp.id)


def test_unknown_directory_is_a_clear_error(make_provider, tmp_path):
    provider = make_provider()
    with pytest.raises(TutelaError) as info:
        provider.protect([Resource(DIR, str(tmp_path / "missing"))])
    assert "no such directory" in str(info.value)
    with pytest.raises(TutelaError):
        provider.protect([Resource(DIR, "relative/path")])


def test_group_quiesce_window_brackets_member_hooks(make_provider, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    (b / "f").write_text("b")
    log = tmp_path / "log"
    inventory = tmp_path / "inv.toml"
    inventory.write_text(
        "[groups.app]\n"
        f'members = ["{DIR}={a}", "{DIR}={b}"]\n'
        f'prepare_begin_command = ["sh", "-c", "echo quiesce $TUTELA_RESOURCE_ID >> {log}"]\n'
        f'prepare_finish_command = ["sh", "-c", "echo release >> {log}"]\n'
    )
    provider = make_provider(extra={"group": {"inventory": str(inventory)}})
    cp = provider.protect([Resource("Tutela::Group", "app")])
    assert log.read_text().split("\n")[:2] == ["quiesce app", "release"]
    info = cp.resource_records()["Tutela::Group#app"]["saved_info"]
    assert info["quiesced_at"] <= info["released_at"]
    assert info["members"] == [f"{DIR}#{a}", f"{DIR}#{b}"]


def test_group_release_runs_when_a_member_fails(make_provider, tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    log = tmp_path / "log"
    inventory = tmp_path / "inv.toml"
    inventory.write_text(
        "[groups.app]\n"
        f'members = ["{DIR}={a}", "Tutela::Group=inner"]\n'
        f'prepare_begin_command = ["sh", "-c", "echo quiesce >> {log}"]\n'
        f'prepare_finish_command = ["sh", "-c", "echo release >> {log}"]\n'
        "[groups.inner]\n"
        "members = []\n"
        'prepare_begin_command = ["false"]\n'
    )
    provider = make_provider(extra={"group": {"inventory": str(inventory)}})
    with pytest.raises(OperationFailed) as info:
        provider.protect([Resource("Tutela::Group", "app")])
    assert "exited with 1" in str(info.value)
    assert log.read_text().split() == ["quiesce", "release"]


def test_group_command_timeout(make_provider, tmp_path):
    inventory = tmp_path / "inv.toml"
    inventory.write_text(
        '[groups.slow]\nmembers = []\nprepare_begin_command = ["sleep", "5"]\ncommand_timeout = 0.3\n'
    )
    provider = make_provider(extra={"group": {"inventory": str(inventory)}})
    with pytest.raises(OperationFailed) as info:
        provider.protect([Resource("Tutela::Group", "slow")])
    assert "timed out after 0.3 s" in str(info.value)
