"""The `tutela` command end to end, with a provider file on disk and the filesystem bank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tutela.bank import Bank, validate_key
from tutela.bank.filesystem import FilesystemBank
from tutela.cli import main
from tutela.errors import InvalidKeyError, ReadOnlyError

DIR = "Tutela::Directory"


@pytest.fixture
def setup(env_config_dir, tmp_path):
    src = tmp_path / "data"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    (src / "link").symlink_to("a.txt")
    (env_config_dir / "p.conf").write_text(
        textwrap.dedent(
            f"""
            [provider]
            name = cli
            id = cli-1
            bank = filesystem
            plugin = directory
            plugin = group

            [filesystem_bank]
            root = {tmp_path / "bank"}
            """
        )
    )
    return src


def run_json(capsys, *argv) -> tuple[int, object]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_protect_list_show_restore_delete(setup, tmp_path, capsys):
    src = setup
    code, cp = run_json(capsys, "protect", "--resource", f"{DIR}={src}", "-q")
    assert code == 0 and cp["status"] == "available"
    code, listed = run_json(capsys, "checkpoints", "list")
    assert [c["id"] for c in listed] == [cp["id"]]
    code, shown = run_json(capsys, "checkpoints", "show", cp["id"])
    assert shown["resources"][0]["saved_info"]["files"] == 2
    params = tmp_path / "params.json"
    params.write_text(json.dumps({DIR: {"target": str(tmp_path / "out")}}))
    code, restore = run_json(capsys, "restore", cp["id"], "--parameters", str(params), "-q")
    assert code == 0 and restore["status"] == "success"
    assert (tmp_path / "out" / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    code, deleted = run_json(capsys, "delete", cp["id"], "-q")
    assert code == 0 and deleted["status"] == "deleted"
    code, listed = run_json(capsys, "checkpoints", "list")
    assert listed == []


def test_dry_run_and_flow_export_run_nothing(setup, tmp_path, capsys):
    src = setup
    assert main(["protect", "--resource", f"{DIR}={src}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{DIR}#{src} main" in out
    assert not (tmp_path / "bank" / "objects" / "catalog").exists()
    assert main(["flow", "--resource", f"{DIR}={src}", "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith("digraph")


def test_errors_exit_non_zero_with_a_message(setup, tmp_path, capsys):
    assert main(["protect", "--resource", f"{DIR}={tmp_path / 'nope'}", "-q"]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert main(["restore", "00000000-0000-7000-8000-000000000000"]) == 1
    assert "no provider's bank holds checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["protect", "--resource", f"{DIR}={setup}", "--parameters", str(bad)]) == 1
    assert "invalid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["protect", "--no-such-flag"])
    assert info.value.code == 2


def test_failed_protect_exits_1_and_checkpoint_is_error(setup, tmp_path, capsys):
    params = tmp_path / "p.json"
    params.write_text(json.dumps({DIR: {"exclude": 5}}))
    assert main(["protect", "--resource", f"{DIR}={setup}", "--parameters", str(params)]) == 1
    assert "field 'exclude'" in capsys.readouterr().err


def test_console_script_runs(setup):
    proc = subprocess.run(
        [sys.executable, "-m", "tutela", "providers"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "cli-1" in proc.stdout


# -- filesystem bank key validation (the conformance suite covers every bank) ------------
HOSTILE = [
    "../x",
    "a/../../b",
    "/etc/passwd",
    "a//b",
    "a/./b",
    "a\\b",
    "a\x00b",
    "a\nb",
    "",
    "x" * 2000,
]


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_keys_are_refused(tmp_path, key):
    bank = Bank(FilesystemBank(root=tmp_path / "bank"))
    with pytest.raises(InvalidKeyError):
        bank.update_object(key, b"x")
    section = bank.get_section("checkpoints/c1/data/r1")
    with pytest.raises(InvalidKeyError):
        section.update_object(key, b"x")
    assert not any(p.is_file() for p in tmp_path.rglob("*") if "leases" not in str(p))


def test_section_cannot_escape_and_read_only_refuses(tmp_path):
    bank = Bank(FilesystemBank(root=tmp_path / "bank"))
    section = bank.get_section("checkpoints/c1/data/r1")
    for key in ("../../../../index.json", "../r2/x", "..", "."):
        with pytest.raises(InvalidKeyError):
            section.update_object(key, "x")
    with pytest.raises(InvalidKeyError):
        section.get_sub_section("..")
    ro = bank.get_section("checkpoints/c1", writable=False)
    with pytest.raises(ReadOnlyError):
        ro.update_object("x", "y")
    with pytest.raises(ReadOnlyError):
        ro.get_sub_section("data", writable=True).update_object("x", "y")
    assert validate_key("a/b/c") == "a/b/c"


def test_filesystem_bank_writes_atomically_and_lists_in_order(tmp_path):
    plugin = FilesystemBank(root=tmp_path / "bank")
    bank = Bank(plugin)
    for k in ("b/2", "a/1", "b/1", "c"):
        bank.update_object(k, k)
    assert bank.list_objects() == ["a/1", "b/1", "b/2", "c"]
    assert bank.list_objects(sort_dir="desc", limit=2) == ["c", "b/2"]
    assert bank.list_objects("b/", marker="b/1") == ["b/2"]
    assert bank.get_object("c") == b"c"  # bytes, never JSON-decoded

    def failing():
        yield b"partial"
        raise RuntimeError("stream broke")

    bank.update_object("c", b"old")
    with pytest.raises(RuntimeError):
        bank.update_object_stream("c", failing())
    assert bank.get_object("c") == b"old"
    assert not [
        p for p in (tmp_path / "bank" / "objects").iterdir() if p.name.startswith(".tutela-tmp")
    ]


def test_filesystem_bank_reads_ranges(tmp_path):
    bank = Bank(FilesystemBank(root=tmp_path / "bank"))
    section = bank.get_section("packs")
    section.update_object("p", bytes(range(256)))
    assert section.get_object_range("p", 10, 5) == bytes(range(10, 15))
    assert section.get_object_range("p", 250, 100) == bytes(range(250, 256))
    with pytest.raises(InvalidKeyError):
        section.get_object_range("../x", 0, 1)
