"""A real Dask cluster on 127.0.0.1: `dask scheduler` and `dask worker` as separate processes,
each worker with its own folder (standing in for a host).  Shared by tests/test_dask.py and
benchmarks/dask_overhead.py, so that both measure and test the same set-up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DASK = str(Path(sys.executable).parent / "dask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Cluster:
    """A scheduler started at once; workers by `start_worker`.  `pythonpath` is where the
    workers find the plugin modules the hooks need."""

    def __init__(self, root: Path, pythonpath: list[str | Path], nthreads: int = 2):
        self.root = root
        self.nthreads = nthreads
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
            # The workers' sampling profiler calls sys._current_frames() every 10 ms, which
            # deadlocks Python 3.11 before 3.11.9 (CPython gh-106883, dask/distributed#8616):
            # a worker of this suite hung so, holding a task for ever.
            "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
            "PYTHONPATH": os.pathsep.join(
                [*map(str, pythonpath), os.environ.get("PYTHONPATH", "")]
            ),
        }
        self.workers: dict[str, subprocess.Popen] = {}
        log = open(root / "scheduler.log", "w")  # noqa: SIM115 - lives as long as the cluster
        self.scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port)

    def start_worker(self, name: str, env: dict[str, str] | None = None) -> None:
        """Start a worker named `name` in its own folder and wait until it has joined."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115
        self.workers[name] = subprocess.Popen(
            [
                *(DASK, "worker", self.address, "--name", name),
                *("--nthreads", str(self.nthreads), "--no-nanny", "--no-dashboard"),
                *("--host", "127.0.0.1", "--local-directory", str(folder)),
            ],
            env={**self.env, **(env or {})},
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                names = {w.get("name") for w in client.scheduler_info()["workers"].values()}
                if name in names:
                    return
                time.sleep(0.2)
        raise RuntimeError(f"worker {name} did not join; see {self.root / (name + '.log')}")

    def kill_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        procs = [*self.workers.values(), self.scheduler]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
