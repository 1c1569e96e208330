"""Tutela::Directory protect, after the CLI review (issue #5): owners recorded in the manifest,
a previous checkpoint whose manifest cannot be read, files and folders permission keeps from
being read, and name lists kept out of the bank's clear-text metadata."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tutela import OperationFailed, Resource
from tutela.cli import main
from tutela.operations import Progress
from tutela.plugins import directory
from tutela.plugins.directory import DirectoryProtectionPlugin, read_details, read_manifest

DIR = "Tutela::Directory"
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="giving files other owners needs root")


class Messages(Progress):
    def __init__(self) -> None:
        self.texts: list[str] = []

    def message(self, text: str) -> None:
        self.texts.append(text)


def info_of(cp, src):
    return cp.resource_records()[f"{DIR}#{src}"]["saved_info"]


def section_of(cp, src, writable=False):
    return cp.resource_section(Resource(DIR, str(src)), writable=writable)


def details_of(provider, cp, src):
    return DirectoryProtectionPlugin().saved_details(
        section_of(cp, src), Resource(DIR, str(src)), store=provider.content_store()
    )


def files_of(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


# -- 1. owners ------------------------------------------------------------------------------
@AS_ROOT
def test_manifest_records_every_entrys_owner(make_provider, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "f").write_bytes(b"file")
    (src / "sub" / "g").write_bytes(b"x" * 700_000)  # read on the caller's thread
    (src / "link").symlink_to("f")
    os.chown(src / "f", 1234, 5678)
    os.chown(src / "sub", 2000, 2001)
    os.chown(src / "sub" / "g", 0, 4242)
    os.lchown(src / "link", 3000, 3001)
    os.chown(src, 4000, 4001)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    owners = {
        e["path"]: (e["uid"], e["gid"])
        for e in read_manifest(section_of(cp, src), provider.content_store())
    }
    assert owners == {
        ".": (4000, 4001),
        "f": (1234, 5678),
        "link": (3000, 3001),
        "sub": (2000, 2001),
        "sub/g": (0, 4242),
    }
    # A new owner changes neither size nor mtime: the file is not read again, but the new
    # checkpoint records its owner now.
    os.chown(src / "f", 99, 98)
    second = provider.protect([Resource(DIR, str(src))])
    assert info_of(second, src)["reused_files"] == 2
    assert info_of(second, src)["read_bytes"] == 0
    entries = read_manifest(section_of(second, src), provider.content_store())
    assert {e["path"]: (e["uid"], e["gid"]) for e in entries}["f"] == (99, 98)


# -- 2. a previous checkpoint whose manifest cannot be read ---------------------------------
def _damage_manifest(provider, cp, src, how: str, bank: Path) -> None:
    section = section_of(cp, src, writable=True)
    store = provider.content_store()
    ref = section.get_json("manifest.ref")
    if how == "not-json":
        bad = store.write_bytes(b"this is not JSON\n")
    elif how == "wrong-shape":
        bad = store.write_bytes(b'["a list, not an entry"]\n{"no": "path"}\n')
    else:
        bad = None
    if bad is not None:
        store.flush()
        section.put_json("manifest.ref", bad.to_json())
        return
    located = store._locate(bytes.fromhex(ref["chunks"][0][0]))
    (pack,) = (bank / "objects" / "content" / "packs").rglob(located.pack)
    if how == "flipped-byte":  # as the review did
        data = bytearray(pack.read_bytes())
        data[located.offset + located.length // 2] ^= 1
        pack.write_bytes(bytes(data))
    else:  # "missing-pack": the manifest is alone in its pack (see below)
        others = {
            c[0] for e in read_manifest(section, store) if "ref" in e for c in e["ref"]["chunks"]
        }
        assert all(store._locate(bytes.fromhex(c)).pack != located.pack for c in others)
        pack.unlink()


@pytest.mark.parametrize("how", ["flipped-byte", "missing-pack", "not-json", "wrong-shape"])
def test_unreadable_previous_manifest_does_not_block_protects(make_provider, tmp_path, how):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(5):
        (src / "a" / f"f{i}").write_bytes(os.urandom(20_000 + i))
    (src / "big").write_bytes(os.urandom(900_000))
    provider = make_provider()
    provider.protect([Resource(DIR, str(src))])
    # A new mtime only: the second checkpoint stores nothing but its manifest, in a pack of
    # its own.
    os.utime(src / "a" / "f0", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    second = provider.protect([Resource(DIR, str(src))])
    _damage_manifest(provider, second, src, how, tmp_path / "bank")
    provider.close()

    (src / "g").write_bytes(b"new\n")
    provider = make_provider()
    messages = Messages()
    third = provider.protect([Resource(DIR, str(src))], progress=messages)
    assert third.status == "available"
    info = info_of(third, src)
    assert info["previous_checkpoint"] is None
    assert info["ignored_previous_checkpoint"] == second.id
    assert info["reused_files"] == 0
    assert info["read_bytes"] == info["bytes"] == 5 * 20_000 + 10 + 900_000 + 4
    warning = [t for t in messages.texts if second.id in t]
    assert warning and "cannot be read" in warning[0], messages.texts
    out = tmp_path / "out"
    provider.restore(third.id, {DIR: {"target": str(out)}})
    assert files_of(out) == files_of(src)
    # The next protect is incremental again, from the good checkpoint.
    fourth = provider.protect([Resource(DIR, str(src))])
    assert info_of(fourth, src)["previous_checkpoint"] == third.id
    assert info_of(fourth, src)["read_bytes"] == 0


# -- 3. permission denied -------------------------------------------------------------------
NO_DAC = ["--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]


def _without_dac_override(tmp_path: Path) -> list[str]:
    """The command prefix that makes root subject to file modes, or skip."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed: cannot get a real EACCES")
    # Not root: file modes already apply.
    prefix = [setpriv, *NO_DAC, "--"] if os.geteuid() == 0 else []
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    check = (
        "import sys\ntry:\n open(sys.argv[1]).close()\nexcept PermissionError:\n print('EACCES')"
    )
    try:
        got = subprocess.run(
            [*prefix, sys.executable, "-c", check, str(probe)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except OSError as exc:
        pytest.skip(f"cannot run setpriv: {exc}")
    probe.unlink()
    if got.stdout.strip() != "EACCES":
        pytest.skip(
            "cannot drop CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH here (setpriv: "
            f"{got.stderr.strip() or got.stdout.strip() or got.returncode}): no real EACCES"
        )
    return prefix


def test_unreadable_files_and_folders_are_left_out_and_listed(make_provider, tmp_path):
    prefix = _without_dac_override(tmp_path)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "closed").mkdir()
    (src / "noexec").mkdir()
    (src / "ok.txt").write_text("readable\n")
    (src / "sub" / "deep.txt").write_bytes(os.urandom(30_000))
    (src / "locked.txt").write_text("secret\n")  # small: read on the store's workers
    (src / "big-locked.bin").write_bytes(os.urandom(700_000))  # read on the caller's thread
    (src / "closed" / "inner.txt").write_text("inside\n")
    (src / "noexec" / "a.txt").write_text("listed, but no lstat\n")
    for locked in ("locked.txt", "big-locked.bin", "closed"):
        (src / locked).chmod(0)
    (src / "noexec").chmod(0o600)  # listable, but its entries cannot be looked at
    conf = tmp_path / "providers.d"
    conf.mkdir()
    (conf / "p.conf").write_text(
        "[provider]\nid = test-provider\nbank = filesystem\nplugin = directory\n"
        f"[filesystem_bank]\nroot = {tmp_path / 'bank'}\nfsync = false\n"
        f"[content_store]\ncache_dir = {tmp_path / 'cache'}\n"
    )
    env = {**os.environ, "TUTELA_PROVIDER_CONFIG_DIR": str(conf)}
    env.pop("TUTELA_PASSWORD", None)
    run = subprocess.run(
        [*prefix, sys.executable, "-m", "tutela", "protect", "--resource", f"{DIR}={src}"],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert "FAILED" not in run.stderr, run.stderr
    assert "could not be read" in run.stderr and "locked.txt" in run.stderr, run.stderr
    assert run.returncode == 3, run.stderr  # available, but incomplete
    cp_id = run.stdout.strip().splitlines()[-1]

    provider = make_provider()
    cp = provider.checkpoints.get(cp_id)
    assert cp.status == "available"
    info = info_of(cp, src)
    assert info["unreadable_count"] == 4
    assert info["files"] == 2 and info["directories"] == 2  # sub, noexec
    assert info["bytes"] == len("readable\n") + 30_000
    assert "unreadable" not in info
    unreadable = details_of(provider, cp, src)["unreadable"]
    assert [u["path"] for u in unreadable] == [
        "big-locked.bin",
        "closed",
        "locked.txt",
        "noexec/a.txt",
    ]
    assert all(u["error"] == "Permission denied" for u in unreadable)
    paths = {e["path"] for e in read_manifest(section_of(cp, src), provider.content_store())}
    assert paths == {".", "ok.txt", "sub", "sub/deep.txt", "noexec"}
    out = tmp_path / "out"
    provider.restore(cp_id, {DIR: {"target": str(out)}})
    assert files_of(out) == {
        "ok.txt": hashlib.sha256(b"readable\n").hexdigest(),
        "sub/deep.txt": files_of(src / "sub")["deep.txt"],
    }
    assert not (out / "closed").exists()


def test_cli_protect_with_an_unreadable_file_exits_3_and_says_so(tmp_path, capsys):
    prefix = _without_dac_override(tmp_path)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "ok.txt").write_text("readable\n")
    (src / "sub" / "deep.bin").write_bytes(os.urandom(50_000))
    (src / "secret-name.txt").write_text("secret\n")
    (src / "secret-name.txt").chmod(0)
    conf = tmp_path / "providers.d"
    conf.mkdir()
    (conf / "p.conf").write_text(
        "[provider]\nid = test-provider\nbank = filesystem\nplugin = directory\n"
        f"[filesystem_bank]\nroot = {tmp_path / 'bank'}\nfsync = false\n"
    )
    env = {**os.environ, "TUTELA_PROVIDER_CONFIG_DIR": str(conf)}
    res = f"{DIR}={src}"

    def protect(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*prefix, sys.executable, "-m", "tutela", "protect", "-q", *extra, "--resource", res],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )

    run = protect()
    assert run.returncode == 3, run.stderr
    cp_id = run.stdout.strip()
    assert len(cp_id) == 36, run.stdout  # the id alone on stdout, as after a clean protect
    message = f"{DIR}#{src}: 1 file or folder unreadable (left out)"
    assert run.stderr.strip().splitlines()[-1] == (
        f"tutela: checkpoint {cp_id} is incomplete: {message}"
    )
    # --json: the summary on stdout holds the warning; the status is 3 all the same.
    again = protect("--json")
    assert again.returncode == 3, again.stderr
    summary = json.loads(again.stdout)
    assert summary["status"] == "available"
    assert [(w["message"], w["counts"]) for w in summary["warnings"]] == [
        ("1 file or folder unreadable (left out)", {"unreadable": 1})
    ]

    # Read back from the bank: `checkpoints show`, text and JSON.
    cli = ["--config-dir", str(conf)]
    assert main(["checkpoints", "show", cp_id, *cli]) == 0
    text = capsys.readouterr().out
    assert "  status:   available  (incomplete: see the warnings)" in text
    assert f"  warning:  {message}" in text
    assert "      warning: 1 file or folder unreadable (left out)" in text
    assert main(["checkpoints", "show", cp_id, "--json", *cli]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [w["counts"] for w in data["warnings"]] == [{"unreadable": 1}]
    assert [r["warnings"] for r in data["resources"]] == [
        [{"message": "1 file or folder unreadable (left out)", "counts": {"unreadable": 1}}]
    ]
    # Only counts in the clear: the name is in the encrypted details, not in the index.
    index = (tmp_path / "bank" / "objects" / "checkpoints" / cp_id / "index.json").read_bytes()
    assert b"warnings" in index and b"secret-name" not in index

    # What could be read restores.
    out = tmp_path / "out"
    assert main(["restore", cp_id, "-q", *cli, "--parameters", str(_params(tmp_path, out))]) == 0
    capsys.readouterr()
    assert files_of(out) == {
        "ok.txt": hashlib.sha256(b"readable\n").hexdigest(),
        "sub/deep.bin": files_of(src / "sub")["deep.bin"],
    }
    assert not (out / "secret-name.txt").exists()


def _params(tmp_path: Path, target: Path) -> Path:
    path = tmp_path / "restore.json"
    path.write_text(json.dumps({DIR: {"target": str(target)}}))
    return path


def test_other_read_errors_still_fail_the_protect(make_provider, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_text("ok\n")
    (src / "turns-into-fifo").write_text("a file when listed\n")
    real_walk = directory._walk

    def walk_then_swap(root, exclude):
        for rel, st in real_walk(root, exclude):
            if rel == "turns-into-fifo":  # listed as a file, a FIFO when read: EINVAL
                os.unlink(os.path.join(root, rel))
                os.mkfifo(os.path.join(root, rel))
            yield rel, st

    monkeypatch.setattr(directory, "_walk", walk_then_swap)
    provider = make_provider()
    with pytest.raises(OperationFailed) as info:
        provider.protect([Resource(DIR, str(src))])
    assert "no longer a regular file" in str(info.value)


# -- 4. names out of the clear-text metadata ------------------------------------------------
def test_name_lists_are_encrypted_and_only_counts_are_in_the_clear(
    make_provider, tmp_path, monkeypatch
):
    monkeypatch.setenv("TUTELA_PASSWORD", "correct horse")
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept-qzkwv.txt").write_text("kept\n")
    with socket.socket(socket.AF_UNIX) as sock:  # skipped; the socket file stays
        sock.bind(str(src / "sock-wvqzk"))
    (src / "vanishing-jqzvw.bin").write_bytes(os.urandom(10_000))
    busy = src / "busy-zkjwq.log"
    busy.write_bytes(b"x" * 100_000)
    real_walk, real_stat, real_fstat = directory._walk, os.stat, os.fstat

    def walk_then_delete(root, exclude):
        for rel, st in real_walk(root, exclude):
            if rel == "vanishing-jqzvw.bin":
                os.unlink(os.path.join(root, rel))
            yield rel, st

    def grow() -> None:
        with open(busy, "ab") as fh:
            fh.write(b"y")

    def moving_stat(path, *a, **kw):
        if str(path) == str(busy):
            grow()
        return real_stat(path, *a, **kw)

    def moving_fstat(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == str(busy):
            grow()
        return real_fstat(fd)

    monkeypatch.setattr(directory, "_walk", walk_then_delete)
    monkeypatch.setattr(os, "stat", moving_stat)
    monkeypatch.setattr(os, "fstat", moving_fstat)
    # The fake fstat is seen by the Python path only (the C one calls fstat itself).
    monkeypatch.setenv("TUTELA_NATIVE", "0")
    provider = make_provider(extra={"content_store": {"encryption": "aes-256-gcm"}})
    messages = Messages()
    cp = provider.protect([Resource(DIR, str(src))], progress=messages)
    monkeypatch.undo()
    monkeypatch.setenv("TUTELA_PASSWORD", "correct horse")

    info = info_of(cp, src)
    assert info["skipped_count"] == 1
    assert info["vanished_count"] == 1
    assert info["changed_while_read_count"] == 1
    for key in ("skipped", "vanished", "changed_while_read", "unreadable", "unreadable_count"):
        assert key not in info
    assert section_of(cp, src).get_json("metadata") == info
    # Left out and changed: the checkpoint is incomplete; the socket (skipped) is not counted.
    assert cp.status == "available"
    assert [(w["resource"]["id"], w["counts"]) for w in cp.warnings] == [
        (str(src), {"vanished": 1, "changed_while_read": 1})
    ]
    assert cp.warnings[0]["message"] == (
        "1 file deleted while read (left out), 1 file changed while read (saved, maybe inconsistent)"
    )
    assert details_of(provider, cp, src) == {
        "skipped": ["sock-wvqzk"],
        "changed_while_read": ["busy-zkjwq.log"],
        "vanished": ["vanishing-jqzvw.bin"],
    }
    assert any("sock-wvqzk" in t and "left out" in t for t in messages.texts), messages.texts
    # No name is anywhere in the bank in the clear (only the tree's own path is).
    for path in (tmp_path / "bank").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for name in (b"qzkwv", b"wvqzk", b"jqzvw", b"zkjwq"):
                assert name not in data, (path, name)
    # The details object's chunks are kept like the manifest's: a delete of another
    # checkpoint and a sweep leave them readable.
    other = provider.protect([Resource(DIR, str(src))])
    provider.delete(other.id)
    assert details_of(provider, cp, src)["skipped"] == ["sock-wvqzk"]
    assert provider.verify(cp.id, read_data=True)["ok"]


def test_a_clean_tree_has_no_details_object(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f\n")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    info = info_of(cp, src)
    assert not [k for k in info if k.endswith("_count")]
    assert read_details(section_of(cp, src), provider.content_store()) == {}
    assert cp.warnings == []


def test_sockets_and_fifos_alone_make_no_warning(make_provider, tmp_path):
    """A socket is left out by design (counted as `skipped`), a FIFO recorded without data:
    neither is a reason to call every protect of the tree incomplete."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f\n")
    os.mkfifo(src / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock"))
        provider = make_provider()
        cp = provider.protect([Resource(DIR, str(src))])
    finally:
        sock.close()
    assert info_of(cp, src)["skipped_count"] == 1
    assert info_of(cp, src)["special_files"] == 1
    assert cp.status == "available" and cp.warnings == []


def test_incomplete_message_says_how_many_never_which():
    assert directory.incomplete_message({"unreadable": 1}) == (
        "1 file or folder unreadable (left out)"
    )
    assert directory.incomplete_message({"unreadable": 2, "vanished": 3}) == (
        "2 files or folders unreadable (left out), 3 files deleted while read (left out)"
    )
    assert directory.incomplete_message({"changed_while_read": 2}) == (
        "2 files changed while read (saved, maybe inconsistent)"
    )
