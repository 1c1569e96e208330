"""Tutela::Directory and hard links (filesystem bank, real files): the names of one inode are
read once."""

from __future__ import annotations

import os
import stat

from tutela import Resource
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
