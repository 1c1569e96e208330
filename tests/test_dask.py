"""The dask executor against a real scheduler and real workers (separate processes on
127.0.0.1); each worker has its own folder and name, standing in for a host."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dask_cluster import Cluster, free_port
from recording import TYPE
from tutela import OperationFailed, Provider, ProviderConfig, Resource, TutelaError

pytestmark = pytest.mark.dask
HERE = Path(__file__).parent


def start_worker(cluster: Cluster, name: str) -> None:
    """A worker whose recording hooks report `name` as the host they ran on."""
    cluster.start_worker(name, env={"TUTELA_TEST_WORKER": name})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("dask"), pythonpath=[HERE])
    try:
        start_worker(c, "hostA")
        start_worker(c, "hostB")
        yield c
    finally:
        c.stop()


def provider_for(cluster, tmp_path, inventory: Path | None = None) -> Provider:
    conf = tmp_path / "p.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            [provider]
            id = dask-test
            bank = filesystem
            plugin = recording:RecordingPlugin
            plugin = directory
            plugin = group
            protectable = recording:RecordingProtectable
            executor = dask
            scheduler_address = {cluster.address}

            [filesystem_bank]
            root = {tmp_path / "bank"}
            fsync = false
            """
        )
        + (f"\n[group]\ninventory = {inventory}\n" if inventory else "")
    )
    return Provider.from_config(ProviderConfig.read(conf))


def test_directories_on_two_hosts_protect_and_restore(cluster, tmp_path):
    dirs = {}
    for host in ("hostA", "hostB"):
        d = tmp_path / f"{host}-data"
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "f.bin").write_bytes(os.urandom(200_000))
        (d / "empty").write_bytes(b"")
        (d / "link").symlink_to("sub/f.bin")
        dirs[host] = d
    inventory = tmp_path / "inv.toml"
    members = ", ".join(f'"Tutela::Directory={h}:{d}"' for h, d in dirs.items())
    inventory.write_text(f"[groups.app]\nmembers = [{members}]\n")
    provider = provider_for(cluster, tmp_path, inventory)
    cp = provider.protect([Resource("Tutela::Group", "app")])
    assert cp.status == "available"
    # The workers' content stores were closed with the operation: no writer lock is left to
    # hold back a later delete's sweep.
    assert provider.bank.list_objects("content/locks/") == []
    params = {
        f"Tutela::Directory#{h}:{d}": {"target": str(tmp_path / f"restored-{h}")}
        for h, d in dirs.items()
    }
    record = provider.restore(cp.id, params)
    assert record.status == "success"
    for h, d in dirs.items():
        restored = tmp_path / f"restored-{h}"
        assert (restored / "sub" / "f.bin").read_bytes() == (d / "sub" / "f.bin").read_bytes()
        assert os.readlink(restored / "link") == "sub/f.bin"
        assert (restored / "empty").stat().st_size == 0
    new = {r["resource"]["id"]: r.get("new_resource") for r in record.resource_records().values()}
    assert new[f"hostA:{dirs['hostA']}"]["id"] == f"hostA:{tmp_path / 'restored-hostA'}"


def test_hooks_run_on_the_worker_of_their_host(cluster, scenario, tmp_path):
    scenario.reset({"p": ["a", "b", "free"]})
    scenario.hosts = {"a": "hostA", "b": "hostB", "p": "hostA"}
    provider = provider_for(cluster, tmp_path)
    cp = provider.protect([Resource(TYPE, "p")])
    workers = {k.split("#")[1]: v["saved_info"]["worker"] for k, v in cp.resource_records().items()}
    assert workers["a"] == "hostA" and workers["b"] == "hostB" and workers["p"] == "hostA"
    assert workers["free"] in ("hostA", "hostB")


def test_a_host_without_worker_is_refused_before_anything_runs(cluster, scenario, tmp_path):
    scenario.reset({"p": ["a"]})
    scenario.hosts = {"a": "nowhere"}
    provider = provider_for(cluster, tmp_path)
    with pytest.raises(TutelaError) as info:
        provider.protect([Resource(TYPE, "p")])
    assert "no Dask worker runs there" in str(info.value) and "nowhere" in str(info.value)
    assert provider.checkpoints.list() == []


def test_unreachable_scheduler_is_a_clear_error(scenario, tmp_path):
    scenario.reset({"p": []})

    class Gone:
        address = f"tcp://127.0.0.1:{free_port()}"

    provider = provider_for(Gone, tmp_path)
    provider.policy.connect_timeout = 2
    with pytest.raises(TutelaError) as info:
        provider.protect([Resource(TYPE, "p")])
    assert "cannot reach the Dask scheduler" in str(info.value)
    assert provider.checkpoints.list() == []


def _kill_when_marked(cluster, marker: Path) -> threading.Thread:
    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                cluster.kill_worker(marker.read_text().split()[0])
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_worker_killed_during_main_ends_in_error(cluster, scenario, tmp_path):
    start_worker(cluster, "hostC")
    scenario.reset({"victim": []})
    scenario.hosts = {"victim": "hostC"}
    marker = tmp_path / "marker"
    provider = provider_for(cluster, tmp_path)
    watcher = _kill_when_marked(cluster, marker)
    with pytest.raises(OperationFailed) as info:
        provider.protect([Resource(TYPE, "victim")], {TYPE: {"marker": str(marker), "sleep": 20}})
    watcher.join()
    assert "not marked idempotent" in str(info.value)
    cp = provider.checkpoints.get(info.value.record_id)
    assert cp.status == "error"
    assert provider.checkpoints.list(status="available") == []


def test_idempotent_hook_is_retried_on_another_worker(cluster, scenario, tmp_path):
    start_worker(cluster, "hostD")
    scenario.reset({"idem-1": []})
    marker = tmp_path / "marker"
    provider = provider_for(cluster, tmp_path)
    # The first attempt sleeps on some worker, which is killed; the retry does not sleep.
    watcher = _kill_when_marked(cluster, marker)
    cp = provider.protect(
        [Resource(TYPE, "idem-1")], {TYPE: {"marker": str(marker), "sleep": 20, "once": True}}
    )
    watcher.join()
    assert cp.status == "available"
    attempts = marker.read_text().split()
    assert len(attempts) == 2 and attempts[0] != attempts[1]


def test_core_never_imports_dask_unless_chosen(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from tutela import Provider, ProviderConfig, Resource
        p = Provider.from_config(ProviderConfig.from_dict({{
            "provider": {{"id": "x", "bank": "filesystem", "plugin": "directory", "executor": "threads"}},
            "filesystem_bank": {{"root": "{tmp_path / "bank"}"}}}}))
        p.protect([Resource("Tutela::Directory", "{tmp_path}")])
        from tutela.cli import main
        assert not [m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")], "dask imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bytes_moved_reach_the_cli_while_the_hook_runs(cluster, scenario, tmp_path):
    from tutela.operations import Progress

    class Recorder(Progress):
        def __init__(self):
            self.bytes = []
            self.finished_at = {}

        def bytes_moved(self, count):
            self.bytes.append((time.monotonic(), count))

        def task_finished(self, resource, hook, error):
            self.finished_at[(resource.id, hook)] = time.monotonic()

    scenario.reset({"slow": []})
    provider = provider_for(cluster, tmp_path)
    progress = Recorder()
    provider.protect(
        [Resource(TYPE, "slow")], {TYPE: {"report_bytes": 12345, "sleep": 2}}, progress=progress
    )
    assert sum(n for _, n in progress.bytes) == 12345
    first = progress.bytes[0][0]
    assert first < progress.finished_at[("slow", "on_main")] - 1.0  # live, not at the end


def test_a_warning_made_on_a_worker_reaches_the_checkpoint(cluster, scenario, tmp_path):
    # No host pinned: an earlier test may have killed any one worker of the module's cluster.
    scenario.reset({"p": ["a"]})
    provider = provider_for(cluster, tmp_path)
    params = {f"{TYPE}#a": {"warn": "3 files left out", "warn_counts": {"files": 3}}}
    cp = provider.protect([Resource(TYPE, "p")], params)
    assert cp.status == "available"
    [warning] = provider.checkpoints.get(cp.id).warnings
    assert warning["resource"]["id"] == "a"
    assert (warning["message"], warning["counts"]) == ("3 files left out", {"files": 3})
    records = cp.resource_records()
    assert records[f"{TYPE}#a"]["saved_info"]["worker"] != "local"  # ran on a worker
    assert records[f"{TYPE}#a"]["warnings"] == [
        {"message": "3 files left out", "counts": {"files": 3}}
    ]
    assert "warnings" not in records[f"{TYPE}#p"]


def test_ctrl_c_reaches_hooks_running_on_the_workers(cluster, scenario, tmp_path):
    """A first Ctrl-C sets the operation's cancel event on every worker too: a hook there
    that checks (`context.check_cancelled`) stops at once instead of running to its end."""
    import signal

    from tutela.operations import Progress

    class CtrlC(Progress):
        sent = False

        def bytes_moved(self, count):  # the hook is running on its worker
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)

    scenario.reset({"long": []})
    provider = provider_for(cluster, tmp_path)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    try:
        with pytest.raises(OperationFailed) as info:
            provider.protect(
                [Resource(TYPE, "long")],
                {TYPE: {"report_bytes": 1, "wait_cancel": 60}},
                progress=CtrlC(),
            )
    finally:
        signal.signal(signal.SIGINT, old)
    assert time.monotonic() - t0 < 30  # not the hook's 60 s
    assert info.value.cancelled == signal.SIGINT
    message = str(info.value)
    assert message.endswith("on_main: cancelled by the user") and "RemoteError" not in message
    record = provider.checkpoints.get(info.value.record_id).resource_records()[f"{TYPE}#long"]
    assert record["status"] == "error"
