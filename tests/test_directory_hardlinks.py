"""Tutela::Directory and hard links (filesystem bank, real files): the names of one inode are
read once and restored as links to one file, also by an incremental protect; a partial
restore links the names it selects; a manifest without `link` restores as before."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess

import pytest

from tutela import Resource
from tutela.cli import main
from tutela.plugins.directory import read_manifest

DIR = "Tutela::Directory"
NAMES = ["a", "c", "d/b"]  # one inode; "a" comes first in the walk
DATA = b"linked data\n" * 2000


def linked_tree(src):
    """Three names of one inode (mode 0640) and an unrelated file."""
    (src / "d").mkdir(parents=True)
    (src / "a").write_bytes(DATA)
    os.chmod(src / "a", 0o640)
    os.utime(src / "a", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.link(src / "a", src / "c")
    os.link(src / "a", src / "d" / "b")
    (src / "z").write_bytes(b"unrelated")
    return src


def info_of(cp, path):
    return cp.resource_records()[f"{DIR}#{path}"]["saved_info"]


def manifest_of(provider, cp, src):
    section = cp.resource_section(Resource(DIR, str(src)), writable=False)
    return {e["path"]: e for e in read_manifest(section, provider.content_store())}


def assert_linked(out, names=NAMES):
    """The names are one file: one inode with as many links, the data, mode and mtime."""
    stats = [os.lstat(out / n) for n in names]
    assert {st.st_ino for st in stats} == {stats[0].st_ino}
    assert stats[0].st_nlink == len(names)
    assert stat.S_IMODE(stats[0].st_mode) == 0o640
    assert stats[0].st_mtime_ns == 1_600_000_000_123_456_789
    for n in names:
        assert (out / n).read_bytes() == DATA


def test_protect_reads_the_names_of_one_inode_once(make_provider, tmp_path):
    src = linked_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    info = info_of(cp, src)
    assert info["files"] == 4 and info["hard_links"] == 2
    assert info["read_bytes"] == len(DATA) + len(b"unrelated")  # the inode read once
    entries = manifest_of(provider, cp, src)
    assert "link" not in entries["a"] and "link" not in entries["z"]
    assert entries["c"]["link"] == entries["d/b"]["link"] == "a"
    assert entries["c"]["ref"] == entries["d/b"]["ref"] == entries["a"]["ref"]


def test_restore_makes_the_names_of_one_inode_links_again(make_provider, tmp_path):
    src = linked_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out)}})
    assert_linked(out)
    assert os.lstat(out / "z").st_nlink == 1
    assert (out / "z").read_bytes() == b"unrelated"
    # Over the restored tree (overwrite): each name replaced, the group linked again.
    (out / "c").unlink()
    (out / "c").write_bytes(b"a file of its own now")
    provider.restore(cp.id, {DIR: {"target": str(out), "overwrite": True}})
    assert_linked(out)
    assert not list(out.rglob(".tutela-restore-*"))


def test_partial_restore_links_only_the_names_it_selects(make_provider, tmp_path):
    src = linked_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    one = tmp_path / "one"
    provider.restore(cp.id, {DIR: {"target": str(one), "paths": ["d/b"]}})
    assert os.lstat(one / "d" / "b").st_nlink == 1  # a plain file, its first name not here
    assert (one / "d" / "b").read_bytes() == DATA
    assert not (one / "a").exists()
    two = tmp_path / "two"  # two later names, without the first: linked to each other
    provider.restore(cp.id, {DIR: {"target": str(two), "paths": ["d/b", "c"]}})
    assert_linked(two, ["c", "d/b"])
    assert not (two / "a").exists()


def test_unchanged_reprotect_reads_nothing_and_restores_links(make_provider, tmp_path):
    src = linked_tree(tmp_path / "src")
    provider = make_provider()
    first = provider.protect([Resource(DIR, str(src))])
    second = provider.protect([Resource(DIR, str(src))])
    info = info_of(second, src)
    assert info["read_bytes"] == 0
    assert info["reused_files"] == info["files"] == 4
    assert manifest_of(provider, second, src) == manifest_of(provider, first, src)
    out = tmp_path / "out"
    provider.restore(second.id, {DIR: {"target": str(out)}})
    assert_linked(out)


def test_a_manifest_without_link_restores_separate_files(make_provider, tmp_path):
    # The same checkpoint, as a Tutela from before hard links wrote it (no `link`): each
    # name its own file, as then.  With `link`, one file.
    from test_directory_restore_review import rewrite_manifest

    src = linked_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    linked = tmp_path / "linked"
    provider.restore(cp.id, {DIR: {"target": str(linked)}})
    assert_linked(linked)

    def strip(entries):
        for e in entries:
            e.pop("link", None)
        return entries

    rewrite_manifest(provider, cp, src, strip)
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out)}})
    inodes = {os.lstat(out / n).st_ino for n in NAMES}
    assert len(inodes) == 3
    for n in NAMES:
        assert os.lstat(out / n).st_nlink == 1
        assert (out / n).read_bytes() == DATA
        assert stat.S_IMODE(os.lstat(out / n).st_mode) == 0o640


def test_first_name_deleted_after_the_walk_leaves_the_others_read(
    make_provider, tmp_path, delete_after_listing
):
    src = linked_tree(tmp_path / "src")
    delete_after_listing("a")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    info = info_of(cp, src)
    assert info["vanished_count"] == 1 and info["files"] == 3 and info["hard_links"] == 1
    entries = manifest_of(provider, cp, src)
    assert "a" not in entries and "link" not in entries["c"]
    assert entries["d/b"]["link"] == "c"
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out)}})
    assert_linked(out, ["c", "d/b"])


@contextlib.contextmanager
def tmpfs_at(folder):
    """A tmpfs mounted on `folder` (made if need be) for the block: a hard link across it
    fails with EXDEV.  Skips the test where mounting is not possible."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "tutela-test", str(folder)], check=False, capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_names_on_another_file_system_are_written_as_files(make_provider, tmp_path):
    # A file system mounted inside the target: a link across it fails (EXDEV), so that
    # name is written as a file of its own, and the restore succeeds with a warning (the
    # restored tree differs from the checkpoint), counts only.
    src = linked_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    out = tmp_path / "out"
    with tmpfs_at(out / "d"):
        from test_directory_restore_review import Messages

        progress = Messages()
        record = provider.restore(
            cp.id, {DIR: {"target": str(out), "overwrite": True}}, progress=progress
        )
        assert_linked(out, ["a", "c"])
        b = os.lstat(out / "d" / "b")
        assert b.st_nlink == 1 and b.st_dev != os.lstat(out / "a").st_dev
        assert (out / "d" / "b").read_bytes() == DATA
        assert stat.S_IMODE(b.st_mode) == 0o640
        assert b.st_mtime_ns == 1_600_000_000_123_456_789
        assert [m for m in progress.messages if "hard link" in m and "d/b" in m]
    assert record.status == "success"
    warning = {
        "message": "1 hard link written as a separate file (could not be linked)",
        "counts": {"hard_links_as_files": 1},
    }
    [kept] = provider.checkpoints.get_restore(record.id).warnings
    assert (kept["resource"]["type"], kept["resource"]["id"]) == (DIR, str(src))
    assert {k: v for k, v in kept.items() if k != "resource"} == warning
    [rec] = provider.checkpoints.get_restore(record.id).resource_records().values()
    assert rec["warnings"] == [warning]
    assert provider.checkpoints.get(cp.id).warnings == []  # the checkpoint is as it was


def protected_for_the_cli(make_provider, tmp_path, env_config_dir):
    """The linked tree protected, and the CLI's config dir naming the same bank."""
    src = linked_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    provider.close()
    (env_config_dir / "p.conf").write_text(
        f"[provider]\nid = test-provider\nbank = filesystem\nplugin = directory\n"
        f"[filesystem_bank]\nroot = {tmp_path / 'bank'}\n"
    )
    return src, cp


def test_a_restore_with_warnings_exits_3_and_a_clean_one_0(
    make_provider, tmp_path, env_config_dir, capsys
):
    src, cp = protected_for_the_cli(make_provider, tmp_path, env_config_dir)
    params = tmp_path / "params.json"
    params.write_text(json.dumps({DIR: {"target": str(tmp_path / "clean")}}))
    assert main(["restore", cp.id, "--parameters", str(params), "-q"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.strip()
    assert_linked(tmp_path / "clean")

    out_dir = tmp_path / "out"
    params.write_text(json.dumps({DIR: {"target": str(out_dir), "overwrite": True}}))
    with tmpfs_at(out_dir / "d"):
        code = main(["restore", cp.id, "--parameters", str(params), "-q", "--json"])
        out, err = capsys.readouterr()
    assert code == 3
    record = json.loads(out)  # --json still prints the record
    assert record["status"] == "success"
    assert [w["counts"] for w in record["warnings"]] == [{"hard_links_as_files": 1}]
    assert err.strip().splitlines()[-1] == (
        f"tutela: restore {record['id']} of checkpoint {cp.id} has warnings: {DIR}#{src}: "
        "1 hard link written as a separate file (could not be linked)"
    )
    assert "d/b" not in err.splitlines()[-1]  # counts only: the names are in the messages
    # `restores show` says the same to a person, and the whole record with --json.
    assert main(["restores", "show", record["id"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"restore {record['id']}"
    assert f"  checkpoint: {cp.id}" in lines
    assert "  status:     success  (differs from the checkpoint: see the warnings)" in lines
    assert (
        f"  warning:  {DIR}#{src}: 1 hard link written as a separate file (could not be linked)"
        in lines
    )
    assert f"    {DIR} {src}: restored as {DIR} {out_dir}" in lines
    assert "      warning: 1 hard link written as a separate file (could not be linked)" in lines
    assert main(["restores", "show", record["id"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == record["warnings"]


def test_ls_shows_which_name_is_a_link(make_provider, tmp_path, env_config_dir, capsys):
    _, cp = protected_for_the_cli(make_provider, tmp_path, env_config_dir)
    assert main(["checkpoints", "ls", cp.id, "--json"]) == 0
    listed = {e["path"]: e for e in json.loads(capsys.readouterr().out)}
    assert listed["c"]["link"] == listed["d/b"]["link"] == "a"
    assert "link" not in listed["a"] and "link" not in listed["z"]
    assert main(["checkpoints", "ls", cp.id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.endswith("  d/b link to a")]
    assert [line for line in lines if line.endswith("  a")]  # the first name: as before
