"""Crash safety: SIGKILL a protect or a delete at several points; every checkpoint that says
`available` must still verify and restore byte-identical, and no killed operation may ever
show `available`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tutela import Provider, ProviderConfig, Resource

HERE = Path(__file__).parent
DIR = "Tutela::Directory"


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(8):
        (src / "d" / f"f{i}").write_bytes(os.urandom(1_000_000))
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


def run_cli(conf: Path, args: list[str], graph: dict, kill_after: float | None = None) -> int:
    env = {
        **os.environ,
        "TUTELA_PROVIDER_CONFIG_DIR": str(conf.parent),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "TUTELA_TEST_GRAPH": json.dumps(graph),
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
    """SIGINT: no new task starts, the hook in flight finishes, the checkpoint is `error`."""
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
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
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
