"""Tutela::Directory and special files (filesystem bank, real files): FIFOs and device nodes
are recorded without reading them and made again on restore; sockets are still left out
(`skipped`); a device the restore may not create is left out with a warning."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from tutela import OperationFailed, Resource
from tutela.cli import main
from tutela.plugins.directory import read_details, read_manifest

DIR = "Tutela::Directory"
MTIME = 1_600_000_000_123_456_789


def info_of(cp, src):
    return cp.resource_records()[f"{DIR}#{src}"]["saved_info"]


def manifest_of(provider, cp, src):
    section = cp.resource_section(Resource(DIR, str(src)), writable=False)
    return {e["path"]: e for e in read_manifest(section, provider.content_store())}


def make_fifo(path, mode: int = 0o640) -> None:
    os.mkfifo(path)
    os.chmod(path, mode)
    os.utime(path, ns=(MTIME, MTIME))


def make_device(path, kind: int, major: int, minor: int) -> None:
    """A device node (e.g. 1, 3: like /dev/null); skips the test where mknod is refused."""
    try:
        os.mknod(path, kind | 0o600, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("creating a device node needs root (CAP_MKNOD)")
    os.chmod(path, 0o620)
    os.utime(path, ns=(MTIME, MTIME))


def write_provider(config_dir, bank) -> None:
    (config_dir / "p.conf").write_text(
        f"[provider]\nid = test-provider\nbank = filesystem\nplugin = directory\n"
        f"[filesystem_bank]\nroot = {bank}\n"
    )


def test_a_fifo_round_trips(make_provider, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "f").write_text("f\n")
    make_fifo(src / "sub" / "pipe")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    info = info_of(cp, src)
    assert info["special_files"] == 1 and info["files"] == 1
    assert "skipped_count" not in info and cp.warnings == []
    entry = manifest_of(provider, cp, src)["sub/pipe"]
    assert entry["type"] == "fifo" and entry["mode"] == 0o640 and entry["mtime_ns"] == MTIME
    assert "ref" not in entry and "size" not in entry  # no data is read
    st = os.lstat(src / "sub" / "pipe")
    assert (entry["uid"], entry["gid"]) == (st.st_uid, st.st_gid)

    out = tmp_path / "out"
    record = provider.restore(cp.id, {DIR: {"target": str(out)}})
    assert record.warnings == []
    st = os.lstat(out / "sub" / "pipe")
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == MTIME
    assert (out / "f").read_text() == "f\n"
    # Over a tree where a file has taken its name (overwrite): a FIFO again.
    (out / "sub" / "pipe").unlink()
    (out / "sub" / "pipe").write_text("not a pipe")
    provider.restore(cp.id, {DIR: {"target": str(out), "overwrite": True}})
    assert stat.S_ISFIFO(os.lstat(out / "sub" / "pipe").st_mode)
    # An incremental protect records it again (it has no data to take over).
    again = provider.protect([Resource(DIR, str(src))])
    assert info_of(again, src)["special_files"] == 1
    assert manifest_of(provider, again, src)["sub/pipe"] == entry


@pytest.mark.parametrize(
    ("kind", "name", "numbers"),
    [(stat.S_IFCHR, "chardev", (1, 3)), (stat.S_IFBLK, "blockdev", (7, 200))],
)
def test_a_device_node_round_trips_with_its_numbers(make_provider, tmp_path, kind, name, numbers):
    src = tmp_path / "src"
    src.mkdir()
    make_device(src / "dev", kind, *numbers)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    assert info_of(cp, src)["special_files"] == 1
    entry = manifest_of(provider, cp, src)["dev"]
    assert entry["type"] == name and entry["rdev"] == list(numbers)
    assert entry["mode"] == 0o620 and "ref" not in entry

    out = tmp_path / "out"
    record = provider.restore(cp.id, {DIR: {"target": str(out)}})
    assert record.warnings == []
    st = os.lstat(out / "dev")
    assert stat.S_IFMT(st.st_mode) == kind
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == numbers
    assert stat.S_IMODE(st.st_mode) == 0o620 and st.st_mtime_ns == MTIME


def test_a_socket_is_still_left_out_and_listed(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f\n")
    with socket.socket(socket.AF_UNIX) as sock:  # the socket file stays after close
        sock.bind(str(src / "sock"))
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    info = info_of(cp, src)
    assert info["skipped_count"] == 1 and "special_files" not in info
    section = cp.resource_section(Resource(DIR, str(src)), writable=False)
    assert read_details(section, provider.content_store()) == {"skipped": ["sock"]}
    assert "sock" not in manifest_of(provider, cp, src)
    assert cp.warnings == []  # left out by design: not an incomplete checkpoint
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out)}})
    assert sorted(os.listdir(out)) == ["f"]


def test_a_protect_with_fifos_never_blocks(tmp_path, env_config_dir):
    # Opening a FIFO without a writer blocks: the protect must never open one, also one that
    # was a file in the previous checkpoint.  In a process of its own, so that a regression
    # fails by timeout instead of hanging the test run.
    src = tmp_path / "src"
    src.mkdir()
    (src / "was-a-file").write_text("data\n")
    write_provider(env_config_dir, tmp_path / "bank")
    protect = [sys.executable, "-m", "tutela", "protect", "-q", "--resource", f"{DIR}={src}"]
    first = subprocess.run(protect, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    os.unlink(src / "was-a-file")
    os.mkfifo(src / "was-a-file")
    os.mkfifo(src / "pipe")
    second = subprocess.run(protect, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stderr
    assert main(["checkpoints", "ls", second.stdout.strip(), "--json"]) == 0


def test_a_restore_that_may_not_create_a_device_leaves_it_out_and_warns(
    make_provider, tmp_path, monkeypatch
):
    # Root without CAP_MKNOD (as in most containers): the device is left out, the FIFO (which
    # needs no privilege) and the rest restored, and the restore warns: `tutela restore`
    # exits 3, the warning counts, the progress message names the device.
    if os.geteuid() != 0:
        pytest.skip("making the device to protect needs root")
    probe = subprocess.run(["setpriv", "--bounding-set=-mknod", "true"], check=False)
    if probe.returncode != 0:
        pytest.skip("setpriv cannot drop CAP_MKNOD here")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f\n")
    make_device(src / "null", stat.S_IFCHR, 1, 3)
    make_fifo(src / "pipe")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    provider.close()
    config_dir = tmp_path / "providers.d"
    config_dir.mkdir()
    write_provider(config_dir, tmp_path / "bank")
    monkeypatch.setenv("TUTELA_PROVIDER_CONFIG_DIR", str(config_dir))
    params = tmp_path / "params.json"
    out = tmp_path / "out"
    params.write_text(json.dumps({DIR: {"target": str(out)}}))
    restore = ["restore", cp.id, "--parameters", str(params), "--json"]
    done = subprocess.run(
        ["setpriv", "--bounding-set=-mknod", sys.executable, "-m", "tutela", *restore],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "success"
    [warning] = record["warnings"]
    assert warning["counts"] == {"special_files_not_created": 1}
    assert warning["message"] == "1 device or FIFO not created (not permitted, left out)"
    assert "null" not in warning["message"]
    assert any("CAP_MKNOD" in line and "null" in line for line in done.stderr.splitlines())
    last = json.loads(done.stderr.splitlines()[-1])  # --json: stderr is JSON lines
    assert last["event"] == "warnings" and last["message"].endswith(warning["message"])
    assert not os.path.lexists(out / "null")
    assert stat.S_ISFIFO(os.lstat(out / "pipe").st_mode)
    assert (out / "f").read_text() == "f\n"


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_names_of_one_fifo_or_device_stay_one_inode(
    make_provider, tmp_path, kind, env_config_dir, capsys
):
    """A FIFO or device with several names in the tree comes back as one inode with those
    names (as GNU tar keeps them), not as separate nodes; a restore of the later name alone
    makes it on its own."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    if kind == "fifo":
        make_fifo(src / "a" / "node")
    else:
        make_device(src / "a" / "node", stat.S_IFCHR, 1, 3)
    os.link(src / "a" / "node", src / "b" / "again")
    os.link(src / "a" / "node", src / "b" / "third")
    make_fifo(src / "lone")  # one name: no link recorded
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    info = info_of(cp, src)
    assert info["special_files"] == 4 and info["hard_links"] == 2
    manifest = manifest_of(provider, cp, src)
    assert manifest["b/again"]["link"] == "a/node" and manifest["b/third"]["link"] == "a/node"
    assert "link" not in manifest["a/node"] and "link" not in manifest["lone"]

    out = tmp_path / "out"
    record = provider.restore(cp.id, {DIR: {"target": str(out)}})
    assert record.warnings == []
    first = os.lstat(out / "a" / "node")
    mode = 0o640 if kind == "fifo" else 0o620
    assert first.st_nlink == 3 and stat.S_IMODE(first.st_mode) == mode
    for name in ("again", "third"):
        st = os.lstat(out / "b" / name)
        assert (st.st_ino, st.st_dev) == (first.st_ino, first.st_dev)
    assert os.lstat(out / "lone").st_nlink == 1

    # The later name alone: made on its own, with the entry's type and mode.
    one = tmp_path / "one"
    record = provider.restore(cp.id, {DIR: {"target": str(one), "paths": ["b/again"]}})
    assert record.warnings == []
    st = os.lstat(one / "b" / "again")
    assert stat.S_IFMT(st.st_mode) == stat.S_IFMT(first.st_mode) and st.st_nlink == 1
    assert not (one / "a").exists()

    provider.close()  # `checkpoints ls` names the first name, as `tar -tv` does
    write_provider(env_config_dir, tmp_path / "bank")
    assert main(["checkpoints", "ls", cp.id]) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if "b/again" in x]
    assert line.startswith(("p" if kind == "fifo" else "c") + f"{mode:04o} ")
    assert line.endswith("  b/again link to a/node")


def test_a_restore_of_a_path_brings_its_fifo(make_provider, tmp_path):
    src = tmp_path / "src"
    (src / "run" / "deep").mkdir(parents=True)
    (src / "other").mkdir()
    make_fifo(src / "run" / "deep" / "ctl")
    make_fifo(src / "other" / "pipe")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    folder = tmp_path / "folder"
    provider.restore(cp.id, {DIR: {"target": str(folder), "paths": ["run"]}})
    assert stat.S_ISFIFO(os.lstat(folder / "run" / "deep" / "ctl").st_mode)
    assert not (folder / "other").exists()
    one = tmp_path / "one"  # the FIFO itself, by its path
    provider.restore(cp.id, {DIR: {"target": str(one), "paths": ["other/pipe"]}})
    st = os.lstat(one / "other" / "pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert not (one / "run").exists()


def test_ls_shows_fifos_and_devices_as_ls_does(make_provider, tmp_path, env_config_dir, capsys):
    src = tmp_path / "src"
    src.mkdir()
    make_fifo(src / "pipe")
    make_device(src / "null", stat.S_IFCHR, 1, 3)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    provider.close()
    write_provider(env_config_dir, tmp_path / "bank")
    assert main(["checkpoints", "ls", cp.id, "--json"]) == 0
    listed = {e["path"]: e for e in json.loads(capsys.readouterr().out)}
    assert listed["pipe"]["type"] == "fifo"
    assert listed["null"]["type"] == "chardev" and listed["null"]["rdev"] == [1, 3]
    assert main(["checkpoints", "ls", cp.id]) == 0
    lines = capsys.readouterr().out.splitlines()
    [pipe] = [line for line in lines if line.endswith("  pipe")]
    [null] = [line for line in lines if line.endswith("  null")]
    assert pipe.startswith("p0640 ")
    assert null.startswith("c0620 ") and " 1, 3 " in null


def pipe_rewritten(make_provider, tmp_path, rewrite):
    """A protected tree of a file `f` and a FIFO `pipe`, whose manifest entries are then
    passed through `rewrite`, as a manifest Tutela did not write (or an older or newer one
    did)."""
    from test_directory_restore_review import rewrite_manifest

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f\n")
    make_fifo(src / "pipe")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    rewrite_manifest(provider, cp, src, rewrite)
    return provider, cp


def retyped(kind: str):
    """A manifest rewrite giving the entry `pipe` the type `kind`."""

    def rewrite(entries):
        for e in entries:
            if e["path"] == "pipe":
                e["type"] = kind
        return entries

    return rewrite


def test_a_device_entry_without_numbers_is_refused(make_provider, tmp_path):
    # A manifest Tutela did not write (no `rdev`): a clear error naming the entry, not a
    # device with numbers made up.
    provider, cp = pipe_rewritten(make_provider, tmp_path, retyped("chardev"))
    with pytest.raises(OperationFailed) as info:
        provider.restore(cp.id, {DIR: {"target": str(tmp_path / "out")}})
    assert "'pipe' is a device without a valid rdev" in str(info.value)


def test_a_checkpoint_from_before_special_files_restores_as_before(make_provider, tmp_path):
    # As an older Tutela wrote it: no FIFO in the manifest (it was `skipped`).  The restore
    # makes the tree without it, as it did then, and has nothing to warn about.
    provider, cp = pipe_rewritten(
        make_provider, tmp_path, lambda es: [e for e in es if e["type"] != "fifo"]
    )
    out = tmp_path / "out"
    record = provider.restore(cp.id, {DIR: {"target": str(out)}})
    assert record.status == "success" and record.warnings == []
    assert sorted(os.listdir(out)) == ["f"]


def test_an_entry_of_an_unknown_type_is_left_out_with_a_warning(make_provider, tmp_path):
    # As a newer Tutela might write it: a type this version does not know.  The rest of the
    # tree is restored, and the restore says how many entries it left out.
    provider, cp = pipe_rewritten(make_provider, tmp_path, retyped("door"))
    out = tmp_path / "out"
    record = provider.restore(cp.id, {DIR: {"target": str(out)}})
    assert record.status == "success"
    assert sorted(os.listdir(out)) == ["f"]
    assert [w["counts"] for w in record.warnings] == [{"unknown_types": 1}]
    assert "1 entry of an unknown type left out" in record.warnings[0]["message"]
