"""Ctrl-C cancels a running operation promptly: a first one sets the context's `cancelled`
event (a second one interrupts at once), no new task starts, a long hook stops at its next
check (`context.check_cancelled()`, or
`context.report_bytes()`), the operation ends in error ("cancelled by the user") and
`tutela` exits 130.  Earlier checkpoints stay restorable and the next protect works.

The interrupt is a real SIGINT sent to this process while a hook runs on a worker thread
(Linux hands a process's signal to its main thread first, as it does for a terminal's
Ctrl-C), where the operation's handler sets the event."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tutela import OperationFailed, Resource
from tutela.cli import main
from tutela.operations import Progress

DIR = "Tutela::Directory"
FILES = 300
SIZE = 256 << 10


class CtrlC(Progress):
    """Sends SIGINT (or `sig`) to this process once `after` bytes were reported, and counts
    them."""

    def __init__(self, after: int = 1, sig: int = signal.SIGINT):
        self.after = after
        self.sig = sig
        self.moved = 0
        self.sent = False
        self._lock = threading.Lock()

    def bytes_moved(self, count: int) -> None:
        with self._lock:
            self.moved += count
            if self.sent or self.moved < self.after:
                return
            self.sent = True
        os.kill(os.getpid(), self.sig)


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    for i in range(FILES):
        folder = src / f"d{i // 50}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:03d}").write_bytes(os.urandom(SIZE))
    return src


@pytest.fixture(autouse=True)
def default_signals():
    """Python's own SIGINT and SIGTERM dispositions, whatever ran the tests: those an
    operation replaces while it runs (and puts back)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGINT, old)
    signal.signal(signal.SIGTERM, old_term)


@pytest.mark.parametrize("executor", ["threads", "serial"])
def test_ctrl_c_stops_a_protect_in_its_hook_and_keeps_earlier_checkpoints(
    make_provider, tree, tmp_path, executor
):
    """With either policy: on the serial one the hook runs on the main thread itself, and a
    first Ctrl-C only asks (no KeyboardInterrupt in the middle of the store's work)."""
    provider = make_provider(executor=executor, max_workers=2)
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "a").write_text("a\n")
    earlier = provider.protect([Resource(DIR, str(tmp_path / "small"))])

    progress = CtrlC()
    with pytest.raises(OperationFailed) as info:
        provider.protect([Resource(DIR, str(tree))], progress=progress)
    assert info.value.cancelled
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert "cancelled by the user" in str(info.value)
    assert "Cancelled:" not in str(info.value)  # said once, not as a class name
    # The hook stopped at a check: far from every byte was read.
    assert progress.sent and progress.moved < FILES * SIZE // 2
    cp = provider.checkpoints.get(info.value.record_id)
    assert cp.status == "error"
    record = cp.resource_records()[f"{DIR}#{tree}"]
    assert record["status"] == "error" and "cancelled by the user" in record["error"]["message"]

    # The earlier checkpoint restores; the next protect runs to the end and restores.
    out = tmp_path / "out-small"
    provider.restore(earlier.id, {DIR: {"target": str(out)}})
    assert (out / "a").read_text() == "a\n"
    again = provider.protect([Resource(DIR, str(tree))])
    assert again.status == "available"
    out = tmp_path / "out"
    provider.restore(again.id, {DIR: {"target": str(out)}})
    assert (out / "d3" / "f150").read_bytes() == (tree / "d3" / "f150").read_bytes()


def test_ctrl_c_stops_a_restore_and_leaves_no_torn_file(make_provider, tree, tmp_path):
    provider = make_provider(max_workers=2)
    cp = provider.protect([Resource(DIR, str(tree))])
    out = tmp_path / "out"
    progress = CtrlC()
    with pytest.raises(OperationFailed) as info:
        provider.restore(cp.id, {DIR: {"target": str(out)}}, progress=progress)
    assert info.value.cancelled and "cancelled by the user" in str(info.value)
    assert progress.moved < FILES * SIZE // 2
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) < FILES
    for path in written:  # every file there is whole: a cancelled write is removed
        assert path.read_bytes() == (tree / path.relative_to(out)).read_bytes()
    # The restore can be run again, over what the cancelled one left.
    provider.restore(cp.id, {DIR: {"target": str(out), "overwrite": True}})
    assert len([p for p in out.rglob("*") if p.is_file()]) == FILES


def test_tutela_exits_130_when_cancelled(tree, tmp_path, env_config_dir, monkeypatch, capsys):
    (env_config_dir / "p.conf").write_text(
        "[provider]\nid = test-provider\nbank = filesystem\nplugin = directory\n"
        "executor = threads\nmax_workers = 2\n"
        f"[filesystem_bank]\nroot = {tmp_path / 'bank'}\nfsync = false\n"
    )
    monkeypatch.setattr("tutela.cli.make_progress", lambda **kw: CtrlC())
    assert main(["protect", "--resource", f"{DIR}={tree}"]) == 130
    err = capsys.readouterr().err
    assert "ended in error" in err and "cancelled by the user" in err
    monkeypatch.undo()
    monkeypatch.setenv("TUTELA_PROVIDER_CONFIG_DIR", str(env_config_dir))
    assert main(["checkpoints", "list", "--json"]) == 0
    assert '"status": "error"' in capsys.readouterr().out


def test_a_second_ctrl_c_interrupts_at_once():
    from types import SimpleNamespace

    from tutela.operations import _signals_cancel

    context = SimpleNamespace(
        cancelled=threading.Event(), cancel_signal=0, cancel_reason="cancelled by the user"
    )
    said = []
    with pytest.raises(KeyboardInterrupt), _signals_cancel(context, said.append):
        os.kill(os.getpid(), signal.SIGINT)  # the first asks...
        assert context.cancelled.wait(5)
        assert said == [
            "Ctrl-C: cancelling, running hooks stop at their next check (Ctrl-C again: at once)"
        ]
        os.kill(os.getpid(), signal.SIGINT)  # ... the second interrupts
        threading.Event().wait(5)  # (the handler runs here, in the wait)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    # Where SIGINT is ignored (a background job), it stays ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with _signals_cancel(context):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_sigterm_cancels_like_ctrl_c_and_exits_143(
    make_provider, tree, tmp_path, env_config_dir, monkeypatch, capsys
):
    """A service manager stops Tutela with SIGTERM: the operation is cancelled the same way
    (so `on_abort` runs: a quiesce is released), says so, and the exit status is 143."""
    provider = make_provider(max_workers=2)
    with pytest.raises(OperationFailed) as info:
        provider.protect([Resource(DIR, str(tree))], progress=CtrlC(sig=signal.SIGTERM))
    assert info.value.cancelled == signal.SIGTERM
    assert "cancelled by SIGTERM" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back
    assert provider.checkpoints.get(info.value.record_id).status == "error"

    (env_config_dir / "p.conf").write_text(
        "[provider]\nid = test-provider\nbank = filesystem\nplugin = directory\n"
        "executor = threads\nmax_workers = 2\n"
        f"[filesystem_bank]\nroot = {tmp_path / 'bank2'}\nfsync = false\n"
    )
    monkeypatch.setattr("tutela.cli.make_progress", lambda **kw: CtrlC(sig=signal.SIGTERM))
    assert main(["protect", "--resource", f"{DIR}={tree}"]) == 143
    assert "cancelled by SIGTERM" in capsys.readouterr().err


def test_abort_hooks_run_to_their_end_after_a_cancel(make_provider, scenario):
    """After a cancel, `on_abort` (a release, a cleanup) may wait and report progress:
    `check_cancelled` and `report_bytes` no longer raise there."""
    scenario.reset({"app": ["db"], "db": []})
    provider = make_provider(max_workers=2)
    progress = CtrlC()
    params = {"Test::Node": {"report_bytes": 1, "wait_cancel": 30}}
    with pytest.raises(OperationFailed) as info:
        provider.protect([Resource("Test::Node", "app")], params, progress=progress)
    assert info.value.cancelled and progress.sent
    # Both had started (db's main checked and stopped; app's prepare hooks ran): both
    # aborted, neither abort raised.
    assert sorted(scenario.aborts) == ["app", "db"]
    assert not any(c["hook"] == "on_complete" for c in scenario.calls)


def bank_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_the_next_protect_reuses_what_a_cancelled_one_stored(make_provider, tree, tmp_path):
    """What a cancelled first protect stored (packs, and the index naming them, written as
    the store closed) is deduplicated against by the next protect: the run is resumed at the
    data level, not redone."""
    provider = make_provider(max_workers=2)
    progress = CtrlC(after=FILES * SIZE // 3)
    with pytest.raises(OperationFailed):
        provider.protect([Resource(DIR, str(tree))], progress=progress)
    provider.close()
    cancelled = bank_bytes(tmp_path / "bank")
    assert cancelled > FILES * SIZE // 4  # a third of the (random) data was stored

    provider = make_provider(max_workers=2)
    cp = provider.protect([Resource(DIR, str(tree))])
    provider.close()
    both = bank_bytes(tmp_path / "bank")

    fresh = make_provider(max_workers=2, root=str(tmp_path / "fresh"))
    fresh.protect([Resource(DIR, str(tree))])
    fresh.close()
    whole = bank_bytes(tmp_path / "fresh")
    # Without reuse the bank would hold the cancelled third and a whole protect again.
    assert both < whole + cancelled // 10
    assert provider.checkpoints.get(cp.id).status == "available"


def test_ctrl_c_stops_a_hanging_quiesce_command(make_provider, tmp_path):
    """A group's quiesce command that hangs is stopped by a cancel as its timeout would stop
    it (killed, no release: the window never opened), not waited for."""
    pid_file = tmp_path / "pid"
    log = tmp_path / "log"
    inventory = tmp_path / "inv.toml"
    inventory.write_text(
        "[groups.app]\nmembers = []\n"
        f'prepare_begin_command = ["sh", "-c", "echo $$ > {pid_file}; exec sleep 60"]\n'
        f'prepare_finish_command = ["sh", "-c", "echo release >> {log}"]\n'
        "command_timeout = 120\n"
    )
    provider = make_provider(max_workers=2, extra={"group": {"inventory": str(inventory)}})

    def ctrl_c_once_running() -> None:
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=ctrl_c_once_running)
    t0 = time.monotonic()
    sender.start()
    try:
        with pytest.raises(OperationFailed) as info:
            provider.protect([Resource("Tutela::Group", "app")])
    finally:
        sender.join()
    assert time.monotonic() - t0 < 20  # not the command's 60 s
    assert info.value.cancelled and "cancelled by the user" in str(info.value)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # the command is gone (killed, and reaped)
        os.kill(pid, 0)
    assert not log.exists()
