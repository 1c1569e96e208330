"""The `tutela` command end to end, with a provider file on disk and the filesystem bank."""

from __future__ import annotations

import json
import os
import re
import socket
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


def json_events(err: str) -> list[dict]:
    """stderr of a `--json` operation: every line one JSON object."""
    return [json.loads(line) for line in err.splitlines()]


def test_json_progress_is_one_object_per_line(setup, tmp_path, capsys):
    """With `--json`, a protect's and a restore's progress on stderr is JSON lines that a
    frontend can follow: started, each task, status, messages, finished, and the CLI's own
    error line."""
    src = setup
    assert main(["protect", "--resource", f"{DIR}={src}", "--json"]) == 0
    captured = capsys.readouterr()
    cp = json.loads(captured.out)
    events = json_events(captured.err)
    assert events[0] == {
        "event": "started",
        "time": events[0]["time"],
        "operation": "protect",
        "id": cp["id"],
        "resources": 1,
        "tasks": 1,
    }
    kinds = [e["event"] for e in events]
    assert kinds.count("task_started") == kinds.count("task_finished") == 1
    finished = next(e for e in events if e["event"] == "task_finished")
    assert finished == {
        "event": "task_finished",
        "time": finished["time"],
        "resource": f"{DIR}#{src}",
        "hook": "on_main",
    }
    last = events[-1]
    assert last["event"] == "finished" and last["status"] == "available"
    assert (last["done"], last["total"], last["failed"]) == (1, 1, 0)
    assert last["bytes"] == len("alpha\n") + 100_000
    times = [e["time"] for e in events]
    assert times == sorted(times)

    # A restore that fails (a non-empty target): the error is in its task's event.
    target = tmp_path / "busy"
    target.mkdir()
    (target / "x").write_text("x")
    params = tmp_path / "r.json"
    params.write_text(json.dumps({DIR: {"target": str(target)}}))
    assert main(["restore", cp["id"], "--parameters", str(params), "--json"]) == 1
    events = json_events(capsys.readouterr().err)  # the CLI's own error line too
    failed = next(e for e in events if e["event"] == "task_finished")
    assert "not empty" in failed["error"]
    assert events[-2]["event"] == "finished" and events[-2]["status"] == "error"
    assert events[-1]["event"] == "error" and "ended in error" in events[-1]["message"]
    # An error before any operation runs: one JSON line too.
    assert main(["restore", "00000000-0000-7000-8000-000000000000", "--json"]) == 1
    [event] = json_events(capsys.readouterr().err)
    assert event["event"] == "error" and "no provider's bank holds" in event["message"]


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


def test_a_clean_protect_exits_0_without_warnings(setup):
    proc = subprocess.run(
        [sys.executable, "-m", "tutela", "protect", "-q", "--resource", f"{DIR}={setup}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "incomplete" not in proc.stderr
    cp_id = proc.stdout.strip()
    show = subprocess.run(
        [sys.executable, "-m", "tutela", "checkpoints", "show", cp_id, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(show.stdout)
    assert data["status"] == "available" and data["warnings"] == []
    assert [r["warnings"] for r in data["resources"]] == [[]]


def test_a_protect_that_left_a_file_out_exits_3(setup, tmp_path, capsys, delete_after_listing):
    """A file deleted between the listing and the read: the checkpoint is available, the
    id printed as usual, and the exit status 3 says it is incomplete."""
    delete_after_listing("a.txt")
    assert main(["protect", "-q", "--resource", f"{DIR}={setup}"]) == 3
    out, err = capsys.readouterr()
    cp_id = out.strip()
    assert err.strip().splitlines()[-1] == (
        f"tutela: checkpoint {cp_id} is incomplete: "
        f"{DIR}#{setup}: 1 file deleted while read (left out)"
    )
    (setup / "c.txt").write_text("new\n")  # the next one reads it, and leaves nothing out
    delete_after_listing(None)
    code, summary = run_json(capsys, "protect", "-q", "--resource", f"{DIR}={setup}")
    assert code == 0 and "warnings" not in summary
    assert main(["checkpoints", "list"]) == 0
    listed = capsys.readouterr().out
    assert "available (incomplete)" in listed and listed.count("(incomplete)") == 1


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


# -- review fixes: prune keeps, store locks, names, pipes, help, saved-info lists --------
def _cp(capsys, src) -> str:
    code, cp = run_json(capsys, "protect", "--resource", f"{DIR}={src}", "-q")
    assert code == 0, cp
    return cp["id"]


def _usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    return err


@pytest.mark.parametrize("rule", ["last", "daily", "weekly", "monthly"])
def test_prune_refuses_negative_keep_naming_the_option(setup, capsys, rule):
    first, second = _cp(capsys, setup), _cp(capsys, setup)
    err = _usage_error(capsys, ["prune", f"--keep-{rule}", "-1", "--dry-run"])
    assert f"--keep-{rule}" in err
    _, listed = run_json(capsys, "checkpoints", "list")
    assert sorted(c["id"] for c in listed) == sorted([first, second])


def test_prune_refuses_a_policy_that_keeps_nothing(setup, capsys):
    cp = _cp(capsys, setup)
    for argv in (
        ["prune", "-q"],
        ["prune", "--keep-last", "0", "-q"],
        ["prune", "--keep-last", "0", "--keep-daily", "0", "--keep-weekly", "0", "-q"],
    ):
        assert "--keep-last" in _usage_error(capsys, argv)
    code, listed = run_json(capsys, "checkpoints", "list")
    assert [c["id"] for c in listed] == [cp]
    # 0 for one rule is fine when another keeps something
    code, result = run_json(capsys, "prune", "--keep-last", "1", "--keep-daily", "0", "--dry-run")
    assert code == 0 and result["groups"][0]["keep"] == {cp: ["last"]}


def test_retention_policy_refuses_negative_values():
    from tutela.retention import Policy, select

    with pytest.raises(ValueError, match="keep_last"):
        Policy(keep_last=-1)
    assert Policy(keep_last=0, keep_daily=1).empty() is False
    with pytest.raises(ValueError):
        select([("a", "2026-01-01T00:00:00Z", "available")], Policy())


def _locks(tmp_path) -> list[str]:
    folder = tmp_path / "bank" / "objects" / "content" / "locks"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_cli_leaves_no_store_lock_behind(setup, tmp_path, capsys):
    first = _cp(capsys, setup)
    assert _locks(tmp_path) == []
    (setup / "new.txt").write_bytes(os.urandom(50_000))
    second = _cp(capsys, setup)
    assert _locks(tmp_path) == []
    code, _ = run_json(capsys, "checkpoints", "ls", second)
    assert code == 0 and _locks(tmp_path) == []
    code, deleted = run_json(capsys, "delete", first, "-q")
    assert code == 0 and deleted["status"] == "deleted"
    assert _locks(tmp_path) == []
    third = _cp(capsys, setup)
    code, result = run_json(capsys, "prune", "--keep-last", "1", "-q")
    assert code == 0 and result["deleted"] == [second]
    assert _locks(tmp_path) == []
    code, listed = run_json(capsys, "checkpoints", "list")
    assert [c["id"] for c in listed] == [third]


def _tutela(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tutela", *argv], capture_output=True, check=False, **kwargs
    )


def test_checkpoints_ls_shows_odd_names_one_per_line(setup, tmp_path, capsys):
    raw = os.fsencode(setup)
    for name in (b"bad\xffname", b"new\nline", b"back\\slash", b"tab\there", b"caf\xc3\xa9"):
        with open(os.path.join(raw, name), "wb") as fh:
            fh.write(b"x")
    cp = _cp(capsys, setup)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = _tutela("checkpoints", "ls", cp, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr
    names = [line.split(b"  ")[-1] for line in proc.stdout.splitlines()]
    assert b"bad\\377name" in names
    assert b"new\\nline" in names
    assert b"back\\\\slash" in names
    assert b"tab\\there" in names
    assert "café".encode() in names
    entries = run_json(capsys, "checkpoints", "ls", cp)[1]
    assert len(proc.stdout.splitlines()) == len(entries)  # one line per entry
    # an output encoding that cannot show a name gets its UTF-8 bytes in octal, no crash
    proc = _tutela("checkpoints", "ls", cp, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"caf\\303\\251" in proc.stdout.split()


def test_shown_escapes_like_ls_b():
    from tutela.cli import shown

    assert shown("plain name.txt", "utf-8") == "plain name.txt"
    assert shown(os.fsdecode(b"bad\xffname"), "utf-8") == "bad\\377name"
    assert shown("a\nb\\c\x1b", "utf-8") == "a\\nb\\\\c\\033"
    assert shown("café", "utf-8") == "café"
    assert shown("café", "ascii") == "caf\\303\\251"


@pytest.mark.parametrize(
    "argv",
    [["providers"], ["checkpoints", "list"], ["checkpoints", "list", "--json"], ["ls"]],
)
def test_closed_stdout_ends_quietly_with_sigpipe_status(setup, capsys, argv):
    if argv == ["ls"]:
        argv = ["checkpoints", "ls", _cp(capsys, setup)]
    else:
        _cp(capsys, setup)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tutela", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr.decode()
    assert proc.stderr == b""


def _walk(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            names = list(action.choices)
            helped = {a.dest for a in action._choices_actions if a.help}
            assert helped == set(names), (path, set(names) - helped)
            if path:
                assert action.metavar == "|".join(names), path
            for name, child in action.choices.items():
                yield from _walk(child, (*path, name))
        else:
            yield path, action


def test_every_option_and_subcommand_has_help():
    from tutela.cli import build_parser

    missing = [
        (" ".join(path), action.option_strings or action.dest)
        for path, action in _walk(build_parser())
        if not action.help
    ]
    assert missing == []


def test_help_lists_every_exit_status(capsys):
    """A script calling tutela learns from `--help` what each exit status means: every one
    the CLI can return is there."""
    from tutela import cli

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    statuses = {0, 1, 2, cli.EXIT_INCOMPLETE, 130, 143, cli.EXIT_BROKEN_PIPE}
    for status in sorted(statuses):
        assert re.search(rf"\b{status} ", text.split("exit status:", 1)[1]), status


def test_checkpoints_usage_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["checkpoints", "--help"])
    assert info.value.code == 0
    assert "list|show|ls" in capsys.readouterr().out


def test_usage_errors_exit_2(setup, tmp_path, capsys):
    cp = _cp(capsys, setup)
    assert "--resource" in _usage_error(capsys, ["protect", "-q"])
    assert "TYPE=ID" in _usage_error(capsys, ["protect", "--resource", "nonsense", "-q"])
    assert "--parameters" in _usage_error(capsys, ["delete", cp, "--parameters", "x.json"])
    assert "--max-workers" in _usage_error(capsys, ["restore", cp, "--max-workers", "0"])
    assert "--resource" in _usage_error(capsys, ["flow"])
    # the console script too, with its usage on stderr
    proc = _tutela("protect", "-q", text=True)
    assert proc.returncode == 2 and "usage: tutela protect" in proc.stderr
    _, listed = run_json(capsys, "checkpoints", "list")
    assert [c["id"] for c in listed] == [cp]


def test_checkpoints_show_lists_list_values(setup, env_config_dir, tmp_path, capsys):
    # a group's saved info holds its members, a list
    members = [f"{DIR}={setup / 'sub'}", f"{DIR}={setup}"]
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(f"[groups.app]\nmembers = {json.dumps(members)}\n")
    conf = env_config_dir / "p.conf"
    conf.write_text(conf.read_text() + f"\n[group]\ninventory = {inventory}\n")
    code, cp = run_json(capsys, "protect", "--resource", "Tutela::Group=app", "-q")
    assert code == 0, cp
    _, data = run_json(capsys, "checkpoints", "show", cp["id"])
    info = next(r for r in data["resources"] if r["resource"]["type"] == "Tutela::Group")
    keys = info["saved_info"]["members"]
    assert len(keys) == 2
    assert main(["checkpoints", "show", cp["id"]]) == 0
    out = capsys.readouterr().out
    assert f"      members: 2 ({keys[0]}, {keys[1]})" in out


def test_checkpoints_show_reads_back_the_encrypted_name_lists(setup, capsys):
    """Only counts are in the clear; `checkpoints show` reads the names from the store."""
    with socket.socket(socket.AF_UNIX) as sock:  # left out by design; the file stays
        sock.bind(str(setup / "a sock"))
    code, cp = run_json(capsys, "protect", "--resource", f"{DIR}={setup}", "-q")
    assert code == 0, cp
    _, data = run_json(capsys, "checkpoints", "show", cp["id"])
    [info] = [r["saved_info"] for r in data["resources"] if r["resource"]["type"] == DIR]
    assert info["skipped_count"] == 1 and info["skipped"] == ["a sock"]
    assert data["warnings"] == []  # left out by design: not an incomplete checkpoint
    assert main(["checkpoints", "show", cp["id"]]) == 0
    assert "      skipped: 1 (a sock)" in capsys.readouterr().out


def test_checkpoints_ls_of_a_path_that_is_not_there_fails(setup, capsys):
    code, cp = run_json(capsys, "protect", "--resource", f"{DIR}={setup}", "-q")
    assert code == 0, cp
    assert main(["checkpoints", "ls", cp["id"], "no/such/path"]) == 1
    assert "has no path 'no/such/path'" in capsys.readouterr().err
    assert main(["checkpoints", "ls", cp["id"], "."]) == 0


def test_saved_info_lines_show_lists_abbreviated():
    from tutela.cli import saved_info_lines

    info = {
        "path": "/srv",
        "files": 3,
        "bytes": 2048,
        "skipped": ["fifo", "sock"],
        "vanished": [f"f{i}" for i in range(8)],
        "changed_while_read": [],
        "extra": {"a": 1},
    }
    lines = saved_info_lines(info)
    assert lines[0] == "saved: path=/srv, files=3, bytes=2.0 KiB"
    assert "skipped: 2 (fifo, sock)" in lines
    assert "vanished: 8 (f0, f1, f2, f3, f4, ... 3 more)" in lines
    assert "changed_while_read: 0" in lines
    assert 'extra: {"a": 1}' in lines


def test_only_the_program_itself_tunes_the_garbage_collector(tmp_path):
    """`tutela` (main() reading sys.argv) freezes what the imports made and makes young
    collections rarer; an application calling main() with its arguments keeps its own GC."""
    code = textwrap.dedent(
        """
        import gc, sys
        from tutela.cli import main
        before = gc.get_threshold()
        main(["providers"])
        assert gc.get_threshold() == before and gc.get_freeze_count() == 0
        sys.argv = ["tutela", "providers"]
        main()
        print(gc.get_threshold()[0], gc.get_freeze_count() > 0)
        """
    )
    env = {**os.environ, "TUTELA_PROVIDER_CONFIG_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[-2:] == ["50000", "True"]
