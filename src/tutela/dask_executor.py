"""The `dask` executor policy: hook tasks run on the workers of a `dask.distributed` cluster.

The engine keeps ordering, priorities and failure handling on the CLI's side; only batches of
hook calls cross the wire, *by value*: the provider's configuration (sealed, so secrets never
show in Dask's task reprs or dashboard), the checkpoint id, the resource, the hook and its
parameters.  A worker rebuilds the provider from that configuration, reconnects to the bank
and runs the hook; results, bytes moved, warnings and new resources of a restore come back
with it.

Placement: a resource whose `extra_info` names a `host` runs on a worker of that host (a worker
whose `--name` is the host, or which runs on a machine of that hostname); a resource whose host
has no worker is an error before anything runs.  All hooks of one resource run on the worker
that ran its first hook, so an operation may keep state between its hooks.

Failures: a hook that raises fails the operation as with any policy.  A worker that dies while
running a hook fails it too, unless the operation lists the hook in `idempotent_hooks`, in which
case it is retried (up to 3 times) on a worker that can run it.  Dask must not re-run hooks on
its own: start the scheduler with `DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0`; another
setting is refused at start.

Only this module imports Dask, and only when the policy is chosen.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import queue
import socket
import threading
import time
import uuid
from typing import Any

from tutela.engine import Dispatcher, ExecutorPolicy
from tutela.errors import Cancelled, HookError, TutelaError
from tutela.plugin import HOOKS

MAX_RETRIES = 3


class Sealed:
    """A value whose repr reveals nothing (Dask shows task arguments in places)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return "<sealed>"

    __str__ = __repr__

    def __reduce__(self):
        return (Sealed, (self.value,))


class RemoteError(TutelaError):
    """A hook's exception, as text, from a worker."""


class DaskPolicy(ExecutorPolicy):
    name = "dask"

    def __init__(
        self, max_workers: int | None = None, scheduler_address: str | None = None, **options: Any
    ):
        super().__init__(max_workers or 1, **options)
        if not scheduler_address:
            raise TutelaError(
                "executor dask needs a scheduler address: scheduler_address = tcp://HOST:PORT in "
                "[provider], or --scheduler-address"
            )
        self.address = scheduler_address
        self.connect_timeout = float(options.get("connect_timeout", 10))
        self._limit: int | None = max_workers

    def executor(self):
        raise TutelaError("the dask policy dispatches through Dask, not a local executor")

    def preflight(self, flow) -> None:
        """Connect, check the scheduler's settings and that every task has a worker, before
        a checkpoint or restore record exists; the connection is then used for the run."""
        self._pending = DaskDispatcher(self, None, None)
        try:
            self._pending.check(flow)
        except BaseException:
            self._pending.close()
            self._pending = None
            raise

    def dispatcher(self, engine, done: queue.SimpleQueue) -> Dispatcher:
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is None:
            return DaskDispatcher(self, engine, done)
        pending.engine, pending.done = engine, done
        return pending

    def in_flight_limit(self) -> int:
        return self._limit or self.max_workers

    def describe(self) -> str:
        return f"dask (scheduler {self.address})"


def _worker_hostname() -> str:
    return socket.gethostname()


def _allowed_failures(dask_scheduler=None) -> int:
    return dask_scheduler.allowed_failures


class DaskDispatcher(Dispatcher):
    #: A Dask round trip costs 10-20 ms here (a thread hand-off about 50 us): a hook under
    #: 5 ms is cheaper to ship with others than alone.
    cheap = 0.005
    max_batch = 256

    def __init__(self, policy: DaskPolicy, engine, done: queue.SimpleQueue):
        try:
            from distributed import Client
        except ImportError:
            raise TutelaError(
                "executor dask needs the 'distributed' package: pip install 'tutela[dask]'"
            ) from None
        self.policy = policy
        self.engine = engine
        self.done = done
        try:
            self.client = Client(
                policy.address, timeout=policy.connect_timeout, set_as_default=False
            )
        except (OSError, TimeoutError) as exc:
            raise TutelaError(
                f"cannot reach the Dask scheduler at {policy.address}: {exc}"
            ) from None
        try:
            allowed = self.client.run_on_scheduler(_allowed_failures)
            if allowed != 0:
                raise TutelaError(
                    f"the Dask scheduler at {policy.address} re-runs tasks of lost workers "
                    f"(allowed-failures = {allowed}); hooks must not run twice behind Tutela's back: "
                    "start it with DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0"
                )
            info = self.client.scheduler_info()["workers"]
            if not info:
                raise TutelaError(f"the Dask scheduler at {policy.address} has no workers")
            hostnames = self.client.run(_worker_hostname)
        except BaseException:
            self.client.close()
            raise
        self.hosts: dict[str, list[str]] = {}
        threads = 0
        for addr, w in info.items():
            threads += int(w.get("nthreads", 1))
            for alias in {str(w.get("name")), hostnames.get(addr)}:
                if alias and alias != "None":
                    self.hosts.setdefault(alias, []).append(addr)
        policy.max_workers = max(1, threads)
        if policy._limit is None:
            policy._limit = 2 * threads
        self.pinned: dict[int, str] = {}  # resource index -> worker address
        self.seq = itertools.count()
        self.prefix = f"tutela-hook-{uuid.uuid4().hex[:8]}"
        self.attempts: dict[int, int] = {}
        self.retry_q: queue.SimpleQueue = queue.SimpleQueue()
        # Bytes moved by running hooks arrive as Dask events on this topic.
        self.topic = f"{self.prefix}-progress"
        self.client.subscribe_topic(self.topic, self._on_progress)
        self.closed = False
        self.retrier = threading.Thread(
            target=self._retry_loop, name="tutela-dask-retry", daemon=True
        )
        self.retrier.start()

    def start(self, flow) -> None:
        if self.engine.describe_task is None:
            raise TutelaError("this engine cannot describe its tasks for a distributed executor")
        self.check(flow)

    def check(self, flow) -> None:
        self.flow = flow
        missing = {}
        for r, resource in enumerate(flow.graph.nodes):
            host = resource.extra_info.get("host")
            if host and flow.mask[r] and host not in self.hosts:
                missing.setdefault(host, resource)
        if missing:
            host, resource = next(iter(missing.items()))
            known = ", ".join(sorted(self.hosts)) or "none"
            raise TutelaError(
                f"{resource.key} must run on host {host!r}, but no Dask worker runs there "
                f"(worker names and hosts: {known})"
            )

    def _workers_for(self, node: int) -> list[str] | None:
        r = node >> 2
        pinned = self.pinned.get(r)
        if pinned is not None:
            return [pinned]
        host = self.flow.graph.nodes[r].extra_info.get("host")
        return sorted(self.hosts[host]) if host else None

    def affinity(self, node: int) -> Any:
        workers = self._workers_for(node)
        return tuple(workers) if workers else None

    def _on_progress(self, event) -> None:
        _, message = event
        report = getattr(self.engine, "report_bytes", None)
        if report is not None and isinstance(message, dict):
            report(int(message.get("bytes", 0)))

    def submit(self, batch: list[int]) -> None:
        common = {**self.engine.describe_common(), "progress_topic": self.topic}
        tasks = [self.engine.describe_task(n) for n in batch]
        workers = self._workers_for(batch[0])
        key = f"{self.prefix}-{next(self.seq)}"
        future = self.client.submit(
            run_batch,
            Sealed({**common, "tasks": tasks}),
            key=key,
            workers=workers,
            allow_other_workers=False,
            pure=False,
        )
        future.add_done_callback(lambda f, b=batch: self._finished(f, b))

    def _finished(self, future, batch: list[int]) -> None:
        """On Dask's event loop: hand results to the engine (thread-safe queue)."""
        try:
            if future.status == "finished":
                items = []
                for node, t0, t1, error, extra in future.result():
                    self.pinned.setdefault(node >> 2, extra.pop("worker"))
                    err = None
                    if error is not None:
                        resource = self.flow.graph.nodes[node >> 2]
                        cancelled = self.engine.cancel.is_set() and error.startswith("cancelled")
                        cause = Cancelled(error) if cancelled else RemoteError(error)
                        err = HookError(resource, HOOKS[node & 3], cause)
                    items.append((node, t0, t1, err, extra))
                self.done.put(items)
                return
            exc = future.exception()
        except BaseException as caught:  # never let a callback die silently
            exc = caught
        now = time.time()
        retry = not self.closed and all(
            self.engine.is_idempotent(n) and self.attempts.get(n, 0) < MAX_RETRIES for n in batch
        )
        if retry:
            for n in batch:
                self.attempts[n] = self.attempts.get(n, 0) + 1
                self.pinned.pop(n >> 2, None)
            self.retry_q.put(batch)
            return
        items = []
        for node in batch:
            resource = self.flow.graph.nodes[node >> 2]
            hook = HOOKS[node & 3]
            reason = f"the Dask worker running it was lost or failed ({type(exc).__name__}: {exc})"
            if not self.engine.is_idempotent(node):
                reason += "; the hook is not marked idempotent, so it is not retried"
            items.append((node, now, now, HookError(resource, hook, RemoteError(reason)), None))
        self.done.put(items)

    def cancel(self) -> None:
        """Set the operation's cancel event on every worker, so that its hooks running there
        stop at their next check (`check_cancelled`, `report_bytes`), as local ones do."""
        record_id = self.engine.describe_common()["record_id"]
        with contextlib.suppress(Exception):  # a lost worker runs nothing more anyway
            self.client.run(_cancel_remote, record_id)

    def _retry_loop(self) -> None:
        while True:
            batch = self.retry_q.get()
            if batch is None:
                return
            try:
                self.submit(batch)
            except Exception as exc:
                now = time.time()
                self.done.put([(n, now, now, exc, None) for n in batch])

    def close(self) -> None:
        self.closed = True
        self.retry_q.put(None)
        with contextlib.suppress(Exception):
            self.client.run(_forget_cancel, self.engine.describe_common()["record_id"])
        # Workers keep providers between batches; their content stores announce a writer
        # lock that would hold back space-freeing sweeps, so end them with the operation.
        with contextlib.suppress(Exception):
            self.client.run(_close_stores)
        with contextlib.suppress(Exception):
            self.client.close()


# -- the worker side -----------------------------------------------------------------------
_PROVIDERS: dict[str, Any] = {}
_OPERATIONS: dict[tuple[str, str], Any] = {}
_RECORDS: dict[tuple[int, str, str], Any] = {}
_LOCK = threading.Lock()


class _Counter:
    """Progress on a worker: bytes moved go to the CLI as Dask events about twice a second
    while a hook runs (so a long main hook shows progress), the rest with the results."""

    INTERVAL = 0.5

    def __init__(self, topic: str | None, worker) -> None:
        self.topic = topic
        self.worker = worker
        self.bytes = 0  # not yet reported
        self.last = 0.0
        self.lock = threading.Lock()

    def bytes_moved(self, count: int) -> None:
        with self.lock:
            self.bytes += count
            if self.topic is None or time.monotonic() - self.last < self.INTERVAL:
                return
            sent, self.bytes = self.bytes, 0
            self.last = time.monotonic()
        with contextlib.suppress(Exception):
            self.worker.log_event(self.topic, {"bytes": sent})

    def take(self) -> int:
        with self.lock:
            sent, self.bytes = self.bytes, 0
            return sent

    def message(self, text: str) -> None:
        pass

    def __getattr__(self, name: str):
        return lambda *a, **k: None


#: record id -> its cancel event, shared by the contexts of that operation's hooks here.
_CANCELS: dict[str, threading.Event] = {}


def _cancel_event(record_id: str) -> threading.Event:
    with _LOCK:
        return _CANCELS.setdefault(record_id, threading.Event())


def _cancel_remote(record_id: str) -> None:
    """On a worker (client.run): the operation `record_id` was cancelled."""
    _cancel_event(record_id).set()


def _forget_cancel(record_id: str) -> None:
    """On a worker (client.run): the operation ended."""
    with _LOCK:
        _CANCELS.pop(record_id, None)


def _close_stores() -> int:
    """On a worker: close the content stores its cached providers opened."""
    closed = 0
    with _LOCK:
        _RECORDS.clear()
        for provider in _PROVIDERS.values():
            if provider._store is not None:
                provider._store.close()
                provider._store = None
                closed += 1
    return closed


def _provider(wire):
    from tutela.config import ProviderConfig
    from tutela.provider import Provider

    digest = hashlib.sha256(repr(wire).encode()).hexdigest()
    with _LOCK:
        provider = _PROVIDERS.get(digest)
        if provider is None:
            provider = _PROVIDERS[digest] = Provider.from_config(ProviderConfig.from_wire(wire))
    return provider


def run_batch(sealed: Sealed) -> list[tuple[int, float, float, str | None, dict[str, Any]]]:
    """Run a batch of hooks on this worker (called by Dask)."""
    from distributed import get_worker

    from tutela.operations import HookCheckpoint, OperationContext
    from tutela.plugin import call_hook
    from tutela.provider import OPERATION_GETTERS
    from tutela.resource import Resource

    job = sealed.value
    provider = _provider(job["config"])
    kind = job["kind"]
    # One read of the checkpoint (and its graph) per worker and operation, not per batch.
    key = (id(provider), job["checkpoint_id"], job["record_id"])
    with _LOCK:
        cached = _RECORDS.get(key)
    if cached is None:
        checkpoint = provider.checkpoints.get(job["checkpoint_id"])
        record = (
            provider.checkpoints.get_restore(job["record_id"]) if kind == "restore" else checkpoint
        )
        with _LOCK:
            _RECORDS[key] = cached = (checkpoint, record)
    checkpoint, record = cached
    worker_obj = get_worker()
    counter = _Counter(job.get("progress_topic"), worker_obj)
    context = OperationContext(provider, kind, job["record_id"], counter)  # type: ignore[arg-type]
    context.cancelled = _cancel_event(job["record_id"])  # set by DaskDispatcher.cancel
    context.new_resources.update(
        {
            k: Resource.from_dict(v) if isinstance(v, dict) and "type" in v else v
            for k, v in job["new_resources"].items()
        }
    )
    before = dict(context.new_resources)
    writable = kind != "restore"
    worker = worker_obj.address
    out = []
    for node, res, hook_index, params, last in job["tasks"]:
        resource = Resource.from_dict(res)
        key = (job["record_id"], resource.key)
        op = _OPERATIONS.get(key)
        if op is None:
            op = getattr(provider.type_map[resource.type], OPERATION_GETTERS[kind])(resource)
            _OPERATIONS[key] = op
        kwargs = {
            "checkpoint": HookCheckpoint(checkpoint, resource, writable),
            "context": context,
            "resource": resource,
            "parameters": params,
        }
        if kind == "restore":
            kwargs["restore"] = record
            kwargs["new_resources"] = context.new_resources
        t0 = time.time()
        try:
            call_hook(op, HOOKS[hook_index], kwargs)
            error = None
        except Cancelled as exc:  # said as it is: not a failure to explain
            error = str(exc)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        t1 = time.time()
        if last or error:
            _OPERATIONS.pop(key, None)
        new = {
            k: (v.to_dict() if isinstance(v, Resource) else v)
            for k, v in context.new_resources.items()
            if before.get(k) is not v
        }
        extra = {"bytes": counter.take(), "new": new, "worker": worker}
        warnings = context.take_warnings()
        if warnings:
            extra["warnings"] = warnings
        out.append((node, t0, t1, error, extra))
    return out
