"""The engine: runs a flow's tasks in dependency order through an executor policy.

A ready-set loop in graphlib's shape (take ready, submit, mark done).  All bookkeeping stays
on the calling thread; only hook calls go to the executor, which may be anything shaped like
`concurrent.futures.Executor` (serial runs inline; threads is a pool; a distributed policy
plugs in through the `tutela.executors` entry-point group).  A failing hook stops new tasks
from starting while tasks in flight finish; Ctrl-C cancels the same way, and sets `cancel` so
that hooks in flight stop at their next check (`context.check_cancelled()`).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from array import array
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from tutela.errors import Cancelled, PluginError, TutelaError
from tutela.flow import Flow
from tutela.loader import entry_points
from tutela.scheduler import ReadyQueue, StackQueue, longest_remaining_path, node_weights

EXECUTOR_GROUP = "tutela.executors"
#: A hook kind whose mean duration is below this many seconds is batched.
CHEAP = 0.0005
MAX_BATCH = 64


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
    """How hook tasks are executed.  `executor()` returns None to run them inline, or anything
    with an Executor's `submit(fn, arg)`; the engine never needs the returned future."""

    name = "base"
    #: Dispatch by longest remaining path (worth it only when tasks run in parallel).
    prioritise = True

    def __init__(self, max_workers: int | None = None, **options: Any):
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self.options = options

    def executor(self) -> Executor | None:
        raise NotImplementedError

    def preflight(self, flow: Flow) -> None:
        """Check, before a checkpoint or restore record is created, that the flow can run
        here (a distributed policy checks its cluster and the placement of every task)."""

    def dispatcher(self, engine: Engine, done: queue.SimpleQueue) -> Dispatcher | None:
        """What runs batches of tasks for `engine`; None runs them inline (serial)."""
        executor = self.executor()
        return None if executor is None else LocalDispatcher(executor, engine.run_task, done)

    def in_flight_limit(self) -> int:
        """Batches handed to the executor at once; the rest wait in the engine's ready queue
        so that the engine, not the executor's FIFO, decides what starts next."""
        return self.max_workers

    def describe(self) -> str:
        return self.name


class Dispatcher:
    """Runs batches of tasks somewhere and puts `[(node, t0, t1, error, extra), ...]` on the
    engine's done queue for each batch.  `extra` carries side effects of a remote hook (e.g.
    new resources of a restore, bytes moved) and is None for local ones.

    `cheap` (seconds) and `max_batch` size the batches: a hook kind whose mean duration is
    under `cheap` rides with others, up to `max_batch` tasks.  They follow the cost of one
    hand-off: a thread wake-up here, a network round trip for a remote dispatcher."""

    cheap: float = CHEAP
    max_batch: int = MAX_BATCH

    def start(self, flow: Flow) -> None:
        """Check, before anything runs, that every task can run somewhere."""

    def affinity(self, node: int) -> Any:
        """Tasks of one batch must share this (e.g. the host that holds the data)."""
        return None

    def submit(self, batch: list[int]) -> None:
        raise NotImplementedError

    def run_here(self, batch: list[int]) -> bool:
        """Run `batch` on the caller's thread, reporting it like `submit`; False when tasks
        must run elsewhere (remote workers).  The engine uses it for a lone cheap task
        when nothing else is running or ready, where a hand-off would cost more than the
        task (a long chain of no-op hooks: one thread wake-up per task)."""
        return False

    def cancel(self) -> None:
        """The run was cancelled: tell hooks running elsewhere (remote workers) to stop at
        their next check.  Local hooks see the engine's `cancel` event directly."""

    def close(self) -> None: ...


class LocalDispatcher(Dispatcher):
    """Batches as calls on a local executor (a thread pool, a process-free pool...)."""

    def __init__(self, executor: Executor, run_task: Callable[[int], Any], done: queue.SimpleQueue):
        self.executor = executor
        self.run_task = run_task
        self.done = done

    def _work(self, batch: list[int]) -> None:
        out = []
        run_task = self.run_task
        for node in batch:
            t0 = time.time()
            try:
                run_task(node)
                error = None
            except BaseException as exc:  # reported, never lost in a worker
                error = exc
            out.append((node, t0, time.time(), error, None))
        self.done.put(out)

    def submit(self, batch: list[int]) -> None:
        self.executor.submit(self._work, batch)

    def run_here(self, batch: list[int]) -> bool:
        self._work(batch)
        return True

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class SerialPolicy(ExecutorPolicy):
    name = "serial"
    prioritise = False

    def __init__(self, max_workers: int | None = None, **options: Any):
        super().__init__(1, **options)

    def executor(self) -> Executor | None:
        return None


class HookThreads(Executor):
    """A minimal thread pool: a shared queue and N daemon-free worker threads.  Lighter than
    ThreadPoolExecutor (no futures), since the engine collects results itself."""

    def __init__(self, workers: int):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"tutela-hook-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            fn, arg = item
            fn(arg)

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        self._queue.put((fn, args[0]))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join()


class ThreadsPolicy(ExecutorPolicy):
    name = "threads"

    def executor(self) -> Executor | None:
        return HookThreads(self.max_workers)

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
        #: For remote dispatchers: describe a task by value, and take back its side effects.
        self.describe_task: Callable[[int], Any] | None = None
        self.describe_common: Callable[[], dict[str, Any]] | None = None
        self.absorb: Callable[[int, Any], None] | None = None
        self.is_idempotent: Callable[[int], bool] = lambda node: False
        self.report_bytes: Callable[[int], None] | None = None
        #: Set when the run is cancelled (Ctrl-C), for hooks in flight to see; then call
        #: `wake()`, so that a run waiting for its tasks hears of it at once.
        self.cancel = threading.Event()
        self._done: queue.SimpleQueue | None = None
        #: How long each resource's hooks took last time (`TYPE#ID` -> hook -> seconds), so
        #: that the dispatch priority knows which tasks are long before they run.
        self.history: dict[str, dict[str, float]] | None = None
        #: Start and end time of every node that ran (0.0 for the others); filled before the
        #: listener hears of the task, so listeners may read them.
        self.started = array("d", bytes(8 * flow.node_count))
        self.finished = array("d", bytes(8 * flow.node_count))

    def wake(self) -> None:
        """Make a parallel run that waits for its tasks look at `cancel` now (safe from a
        signal handler: one put on a SimpleQueue)."""
        done = self._done
        if done is not None:
            done.put(None)

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
        successors = flow.successors
        done: queue.SimpleQueue = queue.SimpleQueue()
        self._done = done
        dispatcher = self.policy.dispatcher(self, done)
        if dispatcher is not None:
            try:
                dispatcher.start(flow)
            except BaseException:
                dispatcher.close()
                raise
        if dispatcher is not None and self.policy.prioritise:
            ready: Any = ReadyQueue(
                longest_remaining_path(flow, node_weights(flow, history=self.history))
            )
        else:
            ready = StackQueue()
        push, pop = ready.push, ready.pop
        for r in range(len(graph) - 1, -1, -1):
            if not parents[r]:
                push(r << 2)

        def advance(node: int) -> None:
            r = node >> 2
            remaining[r] -= 1
            if remaining[r] == 0:
                listener.resource_done(r)
            for s in successors(node):
                counts[s] -= 1
                if counts[s] == 0:
                    push(s)

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

        stopping = False
        try:
            if dispatcher is None:
                while ready and not stopping:
                    if self.cancel.is_set():  # Ctrl-C (operations.py): no new task
                        break
                    node = pop()
                    if not (mask[node >> 2] >> (node & 3)) & 1:
                        advance(node)
                        continue
                    listener.task_started(node)
                    t0 = time.time()
                    try:
                        self.run_task(node)
                        error = None
                    except KeyboardInterrupt:
                        self.cancel.set()  # result.cancelled: in run()'s finally
                        error = Cancelled()
                    except Exception as exc:
                        error = exc
                    settle(node, t0, time.time(), error)
                    stopping = error is not None
                return result
            return self._run_parallel(dispatcher, done, ready, settle, advance, result)
        except KeyboardInterrupt:
            self.cancel.set()  # result.cancelled: in run()'s finally
            return result
        finally:
            if dispatcher is not None:
                dispatcher.close()
            if self.cancel.is_set():  # by Ctrl-C, here or in a hook's thread
                result.cancelled = True

    def _run_parallel(
        self,
        dispatcher: Dispatcher,
        done: queue.SimpleQueue,
        ready,
        settle,
        advance,
        result: EngineResult,
    ) -> EngineResult:
        """Hand batches to the executor; cheap tasks (measured, under `dispatcher.cheap`) travel
        together, so thousands of no-op hooks do not cost thousands of round trips, while
        slow hooks go one by one and never wait behind each other."""
        flow = self.flow
        mask = flow.mask
        listener = self.listener
        pop = ready.pop
        affinity = dispatcher.affinity
        absorb = self.absorb
        held: list[int] = []  # popped but of another affinity than the batch being built
        cheap, max_batch = dispatcher.cheap, dispatcher.max_batch
        cost = [cheap * 4] * 4  # mean seconds per hook kind, learned as tasks finish
        limit = max(1, self.policy.in_flight_limit())
        workers = max(1, self.policy.max_workers)
        inflight = 0
        stopping = False
        told = False  # whether the dispatcher heard of a cancel
        while True:
            if self.cancel.is_set():  # Ctrl-C (operations.py): no new task
                stopping = True
                if not told:
                    told = True
                    dispatcher.cancel()
            while ready and not stopping and inflight < limit:
                batch: list[int] = []
                key = None
                while ready and len(batch) < max_batch:
                    node = pop()
                    if not (mask[node >> 2] >> (node & 3)) & 1:
                        advance(node)
                        continue
                    if batch and affinity(node) != key:
                        held.append(node)
                        continue
                    key = affinity(node)
                    listener.task_started(node)
                    batch.append(node)
                    # Keep filling only with cheap tasks, and only while others remain for
                    # the other workers.
                    if cost[node & 3] >= cheap or len(ready) <= workers:
                        break
                for node in held:
                    ready.push(node)
                held.clear()
                if not batch:
                    continue
                try:
                    # A lone cheap task with nothing else running or ready (a chain) runs
                    # here: nothing could run beside it, and a hand-off costs more.
                    if not (
                        inflight == 0
                        and not ready
                        and len(batch) == 1
                        and cost[batch[0] & 3] < cheap
                        and dispatcher.run_here(batch)
                    ):
                        dispatcher.submit(batch)
                except Exception as exc:
                    now = time.time()
                    for node in batch:
                        settle(node, now, now, exc)
                    stopping = True
                    break
                inflight += 1
            if inflight == 0:
                break
            try:
                items = done.get()
            except KeyboardInterrupt:
                self.cancel.set()  # result.cancelled: in run()'s finally
                stopping = True
                continue
            if items is None:  # wake(): look at `cancel`
                continue
            inflight -= 1
            for node, t0, t1, error, extra in items:
                h = node & 3
                cost[h] = cost[h] * 0.9 + (t1 - t0) * 0.1
                if extra is not None and absorb is not None:
                    absorb(node, extra)
                settle(node, t0, t1, error)
                if error is not None:
                    stopping = True
                    if isinstance(error, KeyboardInterrupt):  # hit a task run here
                        self.cancel.set()  # result.cancelled: in run()'s finally
        return result
