"""Tutela::Directory restore, the review's items (filesystem bank, real files): owner and
setuid bits (1), damaged data (6), path selection (12), sparse files (13)."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tutela import OperationFailed, Resource
from tutela.cli import main
from tutela.operations import Progress
from tutela.plugins.directory import read_manifest

DIR = "Tutela::Directory"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root")


class Messages(Progress):
    """A progress that keeps the operation's messages."""

    def __init__(self):
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


def rewrite_manifest(provider, cp, src, change):
    """Replace the checkpoint's manifest by `change(entries)` (as someone with write access
    to the bank, or an older Tutela, would have written it)."""
    section = cp.resource_section(Resource(DIR, str(src)))
    store = provider.content_store()
    entries = change(read_manifest(section, store))
    ref = store.write_bytes("".join(json.dumps(e) + "\n" for e in entries).encode())
    store.flush()
    section.put_json("manifest.ref", ref.to_json())


# -- 1. owner, setuid and setgid ------------------------------------------------------------


def setuid_tree(src):
    src.mkdir()
    (src / "t").write_bytes(b"\x7fELF pretend binary")
    os.chown(src / "t", 1234, 1234)
    os.chmod(src / "t", 0o4755)
    (src / "g").write_bytes(b"setgid")
    os.chown(src / "g", 1234, 1235)
    os.chmod(src / "g", 0o2750)
    (src / "d").mkdir()
    os.chown(src / "d", 1234, 1234)
    (src / "d" / "link").symlink_to("../t")
    os.lchown(src / "d" / "link", 1234, 1236)


def restored_setuid_tree(make_provider, tmp_path, **parameters):
    """Protect setuid_tree, restore it with `parameters`; (source, restored) folders."""
    src = tmp_path / "src"
    setuid_tree(src)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out), **parameters}})
    return src, out


@as_root
def test_root_restore_gives_files_back_their_owner_and_keeps_setuid(make_provider, tmp_path):
    src, out = restored_setuid_tree(make_provider, tmp_path)
    st = os.lstat(out / "t")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 1234, 0o4755)
    st = os.lstat(out / "g")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 1235, 0o2750)
    st = os.lstat(out / "d")
    assert (st.st_uid, st.st_gid) == (1234, 1234)
    st = os.lstat(out / "d" / "link")
    assert (st.st_uid, st.st_gid) == (1234, 1236)
    assert (out / "t").read_bytes() == (src / "t").read_bytes()


@as_root
def test_owner_false_restores_as_root_without_setuid(make_provider, tmp_path):
    _, out = restored_setuid_tree(make_provider, tmp_path, owner=False)
    st = os.lstat(out / "t")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755)
    st = os.lstat(out / "g")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o750)
    assert os.lstat(out / "d").st_uid == 0


def test_owner_parameter_is_checked(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    from tutela import ParameterError

    with pytest.raises(ParameterError) as info:
        provider.restore(cp.id, {DIR: {"target": str(tmp_path / "o"), "owner": "no"}})
    assert info.value.field == "owner"


def test_checkpoint_without_owners_drops_setuid_and_setgid(make_provider, tmp_path):
    # A checkpoint from before owners were recorded: the file comes back owned by whoever
    # restores it, so it must not keep its setuid bit.
    src = tmp_path / "src"
    src.mkdir()
    (src / "t").write_bytes(b"x")
    os.chmod(src / "t", 0o6755)
    (src / "plain").write_bytes(b"y")
    os.chmod(src / "plain", 0o1640)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])

    def strip(entries):
        for e in entries:
            e.pop("uid", None)
            e.pop("gid", None)
        return entries

    rewrite_manifest(provider, cp, src, strip)
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out)}})
    assert stat.S_IMODE(os.lstat(out / "t").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(out / "plain").st_mode) == 0o1640  # sticky bit is harmless


def test_owner_helper_on_entries(tmp_path):
    from tutela.plugins.directory import _file_mode, _restore_owner

    path = tmp_path / "f"
    path.write_bytes(b"")
    me, group = os.geteuid(), os.getegid()
    old = {"mode": 0o4755}  # no uid/gid: an old manifest
    assert _restore_owner(old, True, path=str(path)) is False
    assert _file_mode(old, False) == 0o755
    own = {"mode": 0o6755, "uid": me, "gid": group}
    assert _restore_owner(own, False, path=str(path)) is False  # owner: false
    assert _restore_owner(own, True, path=str(path)) is True
    assert _file_mode(own, True) == 0o6755
    if me != 0:  # not root: someone else's file cannot be given away, so the bits go
        other = {"mode": 0o4755, "uid": me + 1, "gid": group}
        assert _restore_owner(other, True, path=str(path)) is False
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _restore_owner(own, True, fd=fd) is True
    finally:
        os.close(fd)


def privileges(*options: str) -> list[str]:
    """A `setpriv` prefix that runs a command with fewer privileges (root only; skips the
    test where it cannot)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("dropping privileges needs root and setpriv")
    if subprocess.run(["setpriv", *options, "true"], check=False).returncode != 0:
        pytest.skip(f"setpriv {' '.join(options)} does not work here")
    return ["setpriv", *options]


def tutela(prefix: list[str], *argv: str, env: dict[str, str] | None = None):
    """The `tutela` command in a process of its own, behind `prefix` (e.g. setpriv)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "tutela", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


def write_provider(config_dir, bank) -> None:
    config_dir.mkdir(exist_ok=True)
    (config_dir / "p.conf").write_text(
        f"[provider]\nid = test-provider\nbank = filesystem\nplugin = directory\n"
        f"[filesystem_bank]\nroot = {bank}\n"
    )


@as_root
def test_a_root_restore_that_cannot_give_owners_back_warns(make_provider, tmp_path, monkeypatch):
    # Root without CAP_CHOWN (a container that drops it, NFS with root_squash): the files
    # stay root's, which is a difference from the checkpoint the restore must report.  With
    # `owner: false`, asked for, it is none.
    no_chown = privileges("--bounding-set=-chown")
    src = tmp_path / "src"
    setuid_tree(src)
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    clean = provider.restore(cp.id, {DIR: {"target": str(tmp_path / "as-root")}})
    assert clean.warnings == []  # root with every capability: every owner given back
    provider.close()
    write_provider(tmp_path / "providers.d", tmp_path / "bank")
    monkeypatch.setenv("TUTELA_PROVIDER_CONFIG_DIR", str(tmp_path / "providers.d"))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({DIR: {"target": str(tmp_path / "out")}}))
    done = tutela(no_chown, "restore", "--json", cp.id, "--parameters", str(params))
    assert done.returncode == 3, done.stderr
    [warning] = json.loads(done.stdout)["warnings"]
    assert warning["counts"] == {"owner_not_restored": 4}  # t, g, d, d/link
    assert warning["message"] == "4 entries without their recorded owner and group"
    assert "has warnings" in done.stderr.splitlines()[-1]
    assert "d/link" in done.stderr  # the names: in the progress message only
    assert os.lstat(tmp_path / "out" / "t").st_uid == 0
    assert stat.S_IMODE(os.lstat(tmp_path / "out" / "t").st_mode) == 0o755  # setuid dropped
    params.write_text(json.dumps({DIR: {"target": str(tmp_path / "out2"), "owner": False}}))
    done = tutela(no_chown, "restore", "-q", cp.id, "--parameters", str(params))
    assert done.returncode == 0, done.stderr
    assert "warnings" not in done.stderr


@as_root
def test_a_user_restore_keeps_its_own_uid_and_warns_only_when_owners_are_asked_for():
    # Not root: files come back as the user's by design (documented), no warning; with
    # `owner: true` asked for, each entry whose recorded owner it could not give is one.
    nobody = privileges("--reuid=65534", "--regid=65534", "--clear-groups")
    base = tempfile.mkdtemp(prefix="tutela-owner-", dir="/tmp")  # pytest's tmp is root's only
    try:
        os.chmod(base, 0o755)
        root = Path(base)
        src = root / "src"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "f").write_text("root's file\n")
        for folder in (src, src / "sub"):
            os.chmod(folder, 0o755)
        work = root / "work"  # the bank, config, home and targets: the user's
        work.mkdir()
        os.chown(work, 65534, 65534)
        write_provider(work / "providers.d", work / "bank")
        env = {
            **os.environ,
            "HOME": str(work),
            "XDG_CACHE_HOME": str(work / "cache"),
            "TUTELA_PROVIDER_CONFIG_DIR": str(work / "providers.d"),
        }
        done = tutela(nobody, "protect", "-q", "--resource", f"{DIR}={src}", env=env)
        assert done.returncode == 0, done.stderr
        cp_id = done.stdout.strip()
        params = work / "params.json"
        params.write_text(json.dumps({DIR: {"target": str(work / "mine")}}))
        os.chmod(params, 0o644)
        done = tutela(nobody, "restore", "-q", cp_id, "--parameters", str(params), env=env)
        assert done.returncode == 0, done.stderr
        assert os.lstat(work / "mine" / "sub" / "f").st_uid == 65534
        params.write_text(json.dumps({DIR: {"target": str(work / "asked"), "owner": True}}))
        done = tutela(nobody, "restore", "-q", cp_id, "--parameters", str(params), env=env)
        assert done.returncode == 3, done.stderr
        assert done.stderr.splitlines()[-1].endswith(
            "3 entries without their recorded owner and group"  # ., sub, sub/f
        )
    finally:
        shutil.rmtree(base)


# -- 6. damaged data ------------------------------------------------------------------------


def damage_file(provider, cp, src, rel):
    """Flip a byte inside the first chunk of `rel` as stored in its pack (as the review
    did), in the bank the make_provider fixture made next to `src`."""
    section = cp.resource_section(Resource(DIR, str(src)))
    store = provider.content_store()
    entry = next(e for e in read_manifest(section, store) if e["path"] == rel)
    where = store._locate(bytes.fromhex(entry["ref"]["chunks"][0][0]))
    packs = src.parent / "bank" / "objects" / "content" / "packs"
    (pack,) = [p for p in packs.rglob(where.pack) if p.is_file()]
    data = bytearray(pack.read_bytes())
    data[where.offset + 20] ^= 1
    pack.write_bytes(bytes(data))


def damaged_tree(src):
    (src / "sub").mkdir(parents=True)
    (src / "big").write_bytes(os.urandom(3_000_000))
    (src / "text.txt").write_text("hello\n" * 1000)
    for i in range(40):
        (src / "sub" / f"f{i}").write_bytes(os.urandom(5000 + i))
    return src


def test_damaged_file_is_named_and_the_rest_is_restored(make_provider, tmp_path):
    src = damaged_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    damage_file(provider, cp, src, "big")
    provider.close()
    provider = make_provider()
    out = tmp_path / "out"
    progress = Messages()
    with pytest.raises(OperationFailed) as info:
        provider.restore(cp.id, {DIR: {"target": str(out)}}, progress=progress)
    assert "big" in str(info.value) and "1 file(s)" in str(info.value)
    assert not (out / "big").exists()
    assert [m for m in progress.messages if "big" in m and "damaged" in m]
    assert (out / "text.txt").read_bytes() == (src / "text.txt").read_bytes()
    for i in range(40):
        assert (out / "sub" / f"f{i}").read_bytes() == (src / "sub" / f"f{i}").read_bytes()
    assert not [p for p in out.rglob(".tutela-restore-*")]


def test_damaged_files_over_an_existing_tree_leave_the_old_file(make_provider, tmp_path):
    src = damaged_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    damage_file(provider, cp, src, "big")
    (src / "big").write_bytes(b"the file as it is now")
    (src / "text.txt").write_text("changed")
    with pytest.raises(OperationFailed) as info:
        provider.restore(cp.id, {DIR: {"overwrite": True}})
    assert "'big'" not in str(info.value) and ": big" in str(info.value)
    assert (src / "big").read_bytes() == b"the file as it is now"  # not torn, not removed
    assert (src / "text.txt").read_text() == "hello\n" * 1000
    assert not [p for p in src.rglob(".tutela-restore-*")]


def test_damaged_restore_exits_non_zero_through_the_cli(
    make_provider, tmp_path, env_config_dir, capsys
):
    src = damaged_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    damage_file(provider, cp, src, "sub/f7")
    provider.close()
    (env_config_dir / "p.conf").write_text(
        f"[provider]\nid = test-provider\nbank = filesystem\nplugin = directory\n"
        f"[filesystem_bank]\nroot = {tmp_path / 'bank'}\n"
    )
    params = tmp_path / "t.json"
    out = tmp_path / "out"
    params.write_text(json.dumps({DIR: {"target": str(out)}}))
    assert main(["restore", "-q", cp.id, "--parameters", str(params)]) != 0
    captured = capsys.readouterr()
    assert "sub/f7" in captured.out + captured.err
    assert not (out / "sub" / "f7").exists()
    assert (out / "big").read_bytes() == (src / "big").read_bytes()


# -- 12. path selection ---------------------------------------------------------------------


def small_tree(src):
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a")
    (src / "sub" / "deeper" / "b.txt").write_text("b")
    (src / "top.txt").write_text("top")
    return src


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("whole", [".", "/", "", "./", "//"])
def test_dot_slash_or_empty_path_is_the_whole_tree(make_provider, tmp_path, whole):
    src = small_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out), "paths": [whole]}})
    assert files_under(out) == files_under(src)


@pytest.mark.parametrize("spelled", ["./sub/a.txt", "sub//a.txt", "/sub/a.txt", "sub/./a.txt"])
def test_paths_are_normalised(make_provider, tmp_path, spelled):
    src = small_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out), "paths": [spelled]}})
    assert files_under(out) == ["sub/a.txt"]


def test_trailing_slash_selects_the_folder(make_provider, tmp_path):
    src = small_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out), "paths": ["sub/deeper/", "./top.txt"]}})
    assert files_under(out) == ["sub/deeper/b.txt", "top.txt"]


def test_path_matching_nothing_fails_before_the_target_is_made(make_provider, tmp_path):
    src = small_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    out = tmp_path / "out"
    with pytest.raises(OperationFailed) as info:
        provider.restore(cp.id, {DIR: {"target": str(out), "paths": ["sub/a.txt", "nosuch"]}})
    assert "nosuch" in str(info.value) and cp.id in str(info.value)
    assert "sub/a.txt" not in str(info.value)
    assert not out.exists()
    # Restoring over the original path with a wrong path touches nothing there either.
    before = {p: p.stat().st_mtime_ns for p in src.rglob("*")}
    with pytest.raises(OperationFailed):
        provider.restore(cp.id, {DIR: {"overwrite": True, "paths": ["sub/nosuch"]}})
    assert {p: p.stat().st_mtime_ns for p in src.rglob("*")} == before


def test_paths_cannot_climb_out_of_the_tree(make_provider, tmp_path):
    src = small_tree(tmp_path / "src")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    out = tmp_path / "out"
    for bad in ("..", "../src/top.txt", "sub/../../x"):
        with pytest.raises(OperationFailed) as info:
            provider.restore(cp.id, {DIR: {"target": str(out), "paths": [bad]}})
        assert "'..'" in str(info.value)
        assert not out.exists()


def test_wanted_paths():
    from tutela.plugins.directory import wanted_paths

    assert wanted_paths([]) == []
    assert wanted_paths(["a", "./", "b"]) == []
    assert wanted_paths(["./a//b/", "a/b", "/c"]) == ["a/b", "c"]


# -- 13. sparse files -----------------------------------------------------------------------


def test_sparse_file_stays_sparse(make_provider, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    size = 5 * 1024 * 1024
    with open(src / "sparse", "wb") as fh:
        fh.truncate(size)
        fh.seek(1024 * 1024)
        fh.write(os.urandom(4096))
        fh.seek(3 * 1024 * 1024 + 100)  # not aligned
        fh.write(os.urandom(4096))
    with open(src / "ends-in-hole", "wb") as fh:
        fh.write(b"head")
        fh.truncate(2 * 1024 * 1024)
    if os.stat(src / "sparse").st_blocks * 512 >= size:
        pytest.skip("this filesystem makes no holes")
    provider = make_provider()
    cp = provider.protect([Resource(DIR, str(src))])
    out = tmp_path / "out"
    provider.restore(cp.id, {DIR: {"target": str(out)}})
    for name in ("sparse", "ends-in-hole"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
        assert (out / name).stat().st_size == (src / name).stat().st_size
    assert os.stat(out / "sparse").st_blocks * 512 <= 64 * 1024  # 8 KiB of data, not 5 MiB
    assert os.stat(out / "ends-in-hole").st_blocks * 512 <= 16 * 1024


def test_sparse_writer_keeps_every_byte(tmp_path):
    from tutela.plugins.directory import HOLE_BLOCK, _write_sparse

    # Zero runs and data at every alignment, cut into blocks at random places (a few cut
    # into many tiny blocks, so that zero runs straddle several of them).
    rng = random.Random(7)
    content = bytearray()
    while len(content) < 300_000:
        if rng.random() < 0.5:
            content += bytes(rng.choice([1, 4095, 4096, 4097, 8192, 20_000]))
        else:
            content += rng.randbytes(rng.choice([1, 100, 4096, 5000]))
    last_data = len(content)
    content = bytes(content + bytes(10_000))
    data_blocks = {
        i // HOLE_BLOCK
        for i in range(0, len(content), HOLE_BLOCK)
        if content[i : i + HOLE_BLOCK].strip(b"\0")
    }
    for trial in range(6):
        cuts = sorted(rng.sample(range(1, len(content)), 20 + 400 * trial))
        blocks = [content[a:b] for a, b in zip([0, *cuts], [*cuts, len(content)], strict=True)]
        path = tmp_path / f"f{trial}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        seen = []
        try:
            written, data_end = _write_sparse(fd, iter(blocks), seen.append)
            if data_end < written:
                os.ftruncate(fd, written)
        finally:
            os.close(fd)
        assert written == len(content) == sum(seen)
        assert last_data <= data_end <= -(-last_data // HOLE_BLOCK) * HOLE_BLOCK
        assert path.read_bytes() == content
        # Only the blocks holding data were written: every aligned zero block is a hole.
        if hasattr(os, "SEEK_HOLE"):
            written_blocks = set()
            fd = os.open(path, os.O_RDONLY)
            try:
                offset = 0
                while True:
                    try:
                        offset = os.lseek(fd, offset, os.SEEK_DATA)
                    except OSError:  # ENXIO: no data after offset
                        break
                    end = os.lseek(fd, offset, os.SEEK_HOLE)
                    written_blocks.update(range(offset // HOLE_BLOCK, -(-end // HOLE_BLOCK)))
                    offset = end
            finally:
                os.close(fd)
            assert written_blocks == data_blocks
