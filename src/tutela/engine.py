"""The engine: runs a flow's tasks in dependency order through an executor policy.

A ready-set loop in graphlib's shape (take ready, submit, mark done).  All bookkeeping stays
on the calling thread; only hook calls go to the executor, which may be anything shaped like
`concurrent.futures.Executor` (serial runs inline; threads is a pool; a distributed policy
plugs in through the `tutela.executors` entry-point group).  A failing hook stops new tasks
from starting while tasks in flight finish; Ctrl-C cancels the same way.
"""

from __future__ import annotations

import os
import queue
import time
from array import array
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from tutela.errors import PluginError, TutelaError
from tutela.flow import Flow

EXECUTOR_GROUP = "tutela.executors"


class EngineListener:
    """Engine events, all delivered on the engine's own thread."""

    def task_started(self, node: int) -> None: ...

    def task_finished(self, node: int, error: BaseException | None) -> None: ...

    def resource_done(self, index: int) -> None: ...


@dataclass
class EngineResult:
    completed: int = 0
    failures: list[tuple[int, BaseException]] = field(default_factory=list)
    cancelled: bool = False
    started: array | None = None
    finished: array | None = None
    ran: set[int] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.cancelled


class ExecutorPolicy:
    """How hook tasks are executed.  `executor()` returns None to run them inline."""

    name = "base"

    def __init__(self, max_workers: int | None = None, **options: Any):
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self.options = options

    def executor(self) -> Executor | None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class SerialPolicy(ExecutorPolicy):
    name = "serial"

    def __init__(self, max_workers: int | None = None, **options: Any):
        super().__init__(1, **options)

    def executor(self) -> Executor | None:
        return None


class ThreadsPolicy(ExecutorPolicy):
    name = "threads"

    def executor(self) -> Executor | None:
        return ThreadPoolExecutor(self.max_workers, thread_name_prefix="tutela-hook")

    def describe(self) -> str:
        return f"threads (max_workers={self.max_workers})"


BUILTIN_POLICIES: dict[str, type[ExecutorPolicy]] = {
    "serial": SerialPolicy,
    "threads": ThreadsPolicy,
}


def make_policy(name: str, max_workers: int | None = None, **options: Any) -> ExecutorPolicy:
    """A policy by name: built in, or from the `tutela.executors` entry-point group."""
    cls = BUILTIN_POLICIES.get(name)
    if cls is None:
        found = [ep for ep in entry_points(group=EXECUTOR_GROUP) if ep.name == name]
        if not found:
            known = sorted(
                {*BUILTIN_POLICIES, *(ep.name for ep in entry_points(group=EXECUTOR_GROUP))}
            )
            raise TutelaError(f"unknown executor {name!r} (known: {', '.join(known)})")
        try:
            cls = found[0].load()
        except Exception as exc:
            raise PluginError(f"executor {name!r} cannot be loaded: {exc}") from None
    return cls(max_workers, **options)


class Engine:
    """Runs one flow once."""

    def __init__(
        self,
        flow: Flow,
        run_task: Callable[[int], Any],
        policy: ExecutorPolicy,
        listener: EngineListener | None = None,
    ):
        self.flow = flow
        self.run_task = run_task
        self.policy = policy
        self.listener = listener or EngineListener()
        #: Start and end time of every node that ran (0.0 for the others); filled before the
        #: listener hears of the task, so listeners may read them.
        self.started = array("d", bytes(8 * flow.node_count))
        self.finished = array("d", bytes(8 * flow.node_count))

    def run(self) -> EngineResult:
        flow = self.flow
        graph = flow.graph
        listener = self.listener
        counts = flow.indegrees()
        mask = flow.mask
        remaining = bytearray(b"\x04") * len(graph)
        started = self.started
        finished = self.finished
        result = EngineResult(started=started, finished=finished)
        parents = graph.parents
        ready = [r << 2 for r in range(len(graph) - 1, -1, -1) if not parents[r]]
        successors = flow.successors

        def advance(node: int) -> None:
            r = node >> 2
            remaining[r] -= 1
            if remaining[r] == 0:
                listener.resource_done(r)
            for s in successors(node):
                counts[s] -= 1
                if counts[s] == 0:
                    ready.append(s)

        def settle(node: int, t0: float, t1: float, error: BaseException | None) -> None:
            started[node] = t0
            finished[node] = t1
            result.ran.add(node)
            listener.task_finished(node, error)
            if error is None:
                result.completed += 1
                advance(node)
            else:
                result.failures.append((node, error))

        executor = self.policy.executor()
        stopping = False
        try:
            if executor is None:
                while ready and not stopping:
                    node = ready.pop()
                    if not (mask[node >> 2] >> (node & 3)) & 1:
                        advance(node)
                        continue
                    listener.task_started(node)
                    t0 = time.time()
                    try:
                        self.run_task(node)
                        error = None
                    except KeyboardInterrupt:
                        result.cancelled = True
                        error = TutelaError("cancelled")
                    except Exception as exc:
                        error = exc
                    settle(node, t0, time.time(), error)
                    stopping = error is not None
                return result

            done: queue.SimpleQueue = queue.SimpleQueue()
            run_task = self.run_task

            def work(node: int) -> None:
                t0 = time.time()
                try:
                    run_task(node)
                    error = None
                except BaseException as exc:  # reported, never lost in a worker
                    error = exc
                done.put((node, t0, time.time(), error))

            limit = max(1, self.policy.max_workers)
            inflight = 0
            while True:
                while ready and not stopping and inflight < limit:
                    node = ready.pop()
                    if not (mask[node >> 2] >> (node & 3)) & 1:
                        advance(node)
                        continue
                    listener.task_started(node)
                    try:
                        executor.submit(work, node)
                    except Exception as exc:
                        settle(node, time.time(), time.time(), exc)
                        stopping = True
                        break
                    inflight += 1
                if inflight == 0:
                    break
                try:
                    item = done.get()
                except KeyboardInterrupt:
                    result.cancelled = True
                    stopping = True
                    continue
                inflight -= 1
                node, t0, t1, error = item
                settle(node, t0, t1, error)
                if error is not None:
                    stopping = True
            return result
        except KeyboardInterrupt:
            result.cancelled = True
            return result
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
