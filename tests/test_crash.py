"""Crash safety: SIGKILL a protect, a delete or a prune at chosen writes (tests/crashbank.py)
and at random moments; every checkpoint that says `available` must still verify and restore
byte-identical, no killed operation may ever show `available`, and the interrupted operation
can be finished afterwards, freeing its space at once."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tutela import Provider, ProviderConfig, Resource
from tutela.retention import Policy

HERE = Path(__file__).parent
DIR = "Tutela::Directory"


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    rng = random.Random(4)
    for i in range(8):
        (src / "d" / f"f{i}").write_bytes(rng.randbytes(1_000_000))
    conf = tmp_path / "providers.d" / "p.conf"
    conf.parent.mkdir()
    conf.write_text(
        textwrap.dedent(
            f"""
            [provider]
            id = crash
            bank = filesystem
            plugin = directory
            plugin = recording:RecordingPlugin
            protectable = recording:RecordingProtectable
            executor = threads

            [filesystem_bank]
            root = {tmp_path / "bank"}

            [content_store]
            pack_size = 1M
            """
        )
    )
    return src, conf


def provider(conf: Path) -> Provider:
    return Provider.from_config(ProviderConfig.read(conf))


def run_cli(
    conf: Path,
    args: list[str],
    graph: dict,
    kill_after: float | None = None,
    extra_env: dict[str, str] | None = None,
) -> int:
    env = {
        **os.environ,
        "TUTELA_PROVIDER_CONFIG_DIR": str(conf.parent),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "TUTELA_TEST_GRAPH": json.dumps(graph),
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tutela", *args, "-q"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    return proc.returncode


def check_invariants(conf: Path, src: Path, tmp_path: Path, good: str) -> None:
    p = provider(conf)
    try:
        for cp in p.checkpoints.list(include_deleted=True):
            if cp.status == "available":
                report = p.verify(cp.id, read_data=True)
                assert report["ok"], (cp.id, report["problems"])
        assert p.checkpoints.get(good).status == "available"
        out = tmp_path / f"restore-{time.monotonic_ns()}"
        p.restore(good, {DIR: {"target": str(out)}})
        for i in range(8):
            assert (out / "d" / f"f{i}").read_bytes() == (src / "d" / f"f{i}").read_bytes()
    finally:
        p.close()


@pytest.mark.parametrize("hook", ["on_prepare_begin", "on_main", "on_complete"])
def test_kill_during_protect_at_each_phase(setup, tmp_path, hook):
    src, conf = setup
    p = provider(conf)
    good = p.protect([Resource(DIR, str(src))]).id
    p.close()
    for i in range(8):
        (src / "new" / str(i)).parent.mkdir(exist_ok=True)
        (src / "new" / str(i)).write_bytes(os.urandom(500_000))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"Test::Node": {"kill_in": hook}}))
    # killer depends on the directory: its complete runs after the directory's data and
    # manifest are written, just before the checkpoint's final status.
    graph = {"killer": [f"{DIR}={src}"]}
    code = run_cli(
        conf, ["protect", "--resource", "Test::Node=killer", "--parameters", str(params)], graph
    )
    assert code == -signal.SIGKILL
    p = provider(conf)
    statuses = [c.status for c in p.checkpoints.list()]
    p.close()
    assert statuses.count("available") == 1  # only the good one; the killed one is protecting
    assert "protecting" in statuses
    # New files were not in the good checkpoint; restore must give the old tree.
    for i in range(8):
        (src / "new" / str(i)).unlink()
    (src / "new").rmdir()
    check_invariants(conf, src, tmp_path, good)


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5])
def test_kill_protect_and_delete_at_random_moments(setup, tmp_path, delay):
    src, conf = setup
    p = provider(conf)
    good = p.protect([Resource(DIR, str(src))]).id
    victim = p.protect([Resource(DIR, str(src))]).id
    p.close()
    for i in range(12):
        (src / "extra" / str(i)).parent.mkdir(exist_ok=True)
        (src / "extra" / str(i)).write_bytes(os.urandom(400_000))
    run_cli(conf, ["protect", "--resource", f"{DIR}={src}"], {}, kill_after=delay)
    run_cli(conf, ["delete", victim], {}, kill_after=delay / 2)
    for i in range(12):
        (src / "extra" / str(i)).unlink()
    (src / "extra").rmdir()
    check_invariants(conf, src, tmp_path, good)
    # A stale delete can be finished later, and frees its space safely.
    p = provider(conf)
    try:
        status = p.checkpoints.get(victim).status
        if status != "deleted":
            p.delete(victim)
        assert p.checkpoints.get(victim).status == "deleted"
    finally:
        p.close()
    check_invariants(conf, src, tmp_path, good)


def test_ctrl_c_cancels_like_a_failure(setup, tmp_path):
    """SIGINT: no new task starts, the hook in flight finishes (this one has no check to stop
    at), the checkpoint is `error`, and the exit status is 130 (128 + SIGINT)."""
    _, conf = setup
    marker = tmp_path / "marker"
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"Test::Node": {"marker": str(marker), "sleep": 2}}))
    env = {
        **os.environ,
        "TUTELA_PROVIDER_CONFIG_DIR": str(conf.parent),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "TUTELA_TEST_GRAPH": json.dumps({"parent": ["child"]}),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tutela",
            "protect",
            "--resource",
            "Test::Node=parent",
            "--parameters",
            str(params),
            "--json",
            "-q",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored
        # SIGINT ignored: give the CLI the disposition a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    result = json.loads(out)
    p = provider(conf)
    try:
        cp = p.checkpoints.get(result["id"])
        assert cp.status == "error"
        assert "cancelled" in json.dumps(cp.index["errors"])
        ran = {k: v.get("hooks", {}) for k, v in cp.resource_records().items()}
        # One main was running when Ctrl-C came; it finished.  Nothing started afterwards:
        # the parent's complete hook never ran.
        assert "on_complete" not in ran.get("Test::Node#parent", {})
    finally:
        p.close()


# -- deterministic crash points -------------------------------------------------------------
LEASE = 3.0  # the crash bank's lease_expire_window: a killed owner's lease lapses this fast


@pytest.fixture
def crash_setup(setup, tmp_path):
    """Three checkpoints of one tree (each replaces some files) on the crashing bank."""
    src, conf = setup
    text = conf.read_text().replace("bank = filesystem", "bank = crashbank:CrashingBank")
    text = text.replace(
        "[filesystem_bank]",
        "[filesystem_bank]\nlease_expire_window = 3\nlease_validity_window = 2.5\n"
        "lease_renew_window = 0.5",
    )
    conf.write_text(text)
    p = provider(conf)
    ids = []
    rng = random.Random(5)  # the same chunks and packs every run: a sweep that repacks
    for round_ in range(3):
        for i in range(round_ * 2, round_ * 2 + 3):
            (src / "d" / f"f{i}").write_bytes(rng.randbytes(1_000_000))
        ids.append(p.protect([Resource(DIR, str(src))]).id)
    p.close()
    return src, conf, ids


POINTS = [
    pytest.param("protect", "put content/packs/* 3", id="protect-after-two-packs"),
    pytest.param("protect", "put content/index/* 1", id="protect-before-the-index"),
    pytest.param("protect", "put checkpoints/*/records/* 1", id="protect-before-the-records"),
    pytest.param("protect", "put checkpoints/*/index.json 2", id="protect-before-available"),
    pytest.param("delete", "put checkpoints/*/index.json 2", id="delete-before-deleted"),
    pytest.param("delete", "put content/index/* 1", id="delete-sweep-before-the-new-index"),
    pytest.param("delete", "delete content/packs/* 1", id="delete-sweep-before-the-packs"),
    pytest.param("delete", "delete content/packs/* 2", id="delete-sweep-among-the-packs"),
    pytest.param("prune", "put checkpoints/*/index.json 3", id="prune-between-two-deletes"),
    pytest.param("prune", "delete content/packs/* 2", id="prune-sweep-among-the-packs"),
]


@pytest.mark.parametrize(("operation", "spec"), POINTS)
def test_kill_at_each_write_point(crash_setup, tmp_path, operation, spec):
    src, conf, (old, mid, good) = crash_setup
    if operation == "protect":
        (src / "new").mkdir()
        for i in range(6):
            (src / "new" / str(i)).write_bytes(os.urandom(700_000))
        args = ["protect", "--resource", f"{DIR}={src}"]
    elif operation == "delete":
        args = ["delete", old]
    else:
        args = ["prune", "--keep-last", "1"]
    code = run_cli(conf, args, {}, extra_env={"TUTELA_TEST_CRASH": spec})
    assert code == -signal.SIGKILL  # the crash point was reached: the test proves something
    if operation == "protect":
        shutil.rmtree(src / "new")
    p = provider(conf)
    try:
        listed = {c.id: c for c in p.checkpoints.list(include_deleted=True)}
        if operation == "protect":
            [killed] = [c for i, c in listed.items() if i not in (old, mid, good)]
            assert killed.status == "protecting"
            if spec.startswith("put checkpoints/*/index.json"):  # all but the status written
                assert f"{DIR}#{src}" in killed.resource_records()
    finally:
        p.close()
    check_invariants(conf, src, tmp_path, good)

    # Finish what was interrupted; the killed process's store lock does not hold up the
    # space for 30 minutes, so every pack left is indexed and every chunk reads back.
    time.sleep(LEASE + 0.5)  # the killed owner's lease lapses (a stale checkpoint)
    p = provider(conf)
    try:
        if operation == "protect":
            p.delete(killed.id)
        elif operation == "delete":
            if p.checkpoints.get(old).status != "deleted":
                p.delete(old)
        else:
            p.prune(Policy(keep_last=1))
        assert p.collect_garbage() is not None  # not refused for the dead writer's lock
        remaining = [c.id for c in p.checkpoints.list(status="available")]
        assert remaining == (
            [good, mid, old]
            if operation == "protect"
            else [good]
            if operation == "prune"
            else [good, mid]
        )
        report = p.content_store().verify(read_data=True, referenced=p.referenced_chunks())
        assert report.ok, report.errors
        assert report.unindexed_packs == []
    finally:
        p.close()
    check_invariants(conf, src, tmp_path, good)
