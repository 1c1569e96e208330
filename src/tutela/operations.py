"""One lifecycle for protect, restore and delete, driven by a table instead of three copies:
build the flow, hold the bank lease, run the engine, record every resource, then set the final
status (last, and only while the lease is still ours)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tutela.checkpoint import (
    AVAILABLE,
    DELETED,
    ERROR,
    ERROR_DELETING,
    SUCCESS,
    Checkpoint,
    RestoreRecord,
)
from tutela.engine import Engine, EngineListener, ExecutorPolicy
from tutela.errors import (
    BankError,
    Cancelled,
    HookError,
    LeaseError,
    OperationFailed,
    TutelaError,
)
from tutela.flow import Flow
from tutela.plugin import HOOKS, call_hook, has_abort
from tutela.resource import Resource
from tutela.scheduler import durations_from_records

if TYPE_CHECKING:
    from tutela.provider import Provider

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperationSpec:
    kind: str
    ok_status: str
    error_status: str
    resource_ok: str
    section_writable: bool


SPECS = {
    "protect": OperationSpec("protect", AVAILABLE, ERROR, "available", True),
    "restore": OperationSpec("restore", SUCCESS, ERROR, "restored", False),
    "delete": OperationSpec("delete", DELETED, ERROR_DELETING, "deleted", True),
}


class Progress:
    """What an operation reports while it runs (the CLI renders it).  Calls may come from
    hook threads; implementations must be thread-safe."""

    def started(self, kind: str, record_id: str, resources: int, tasks: int) -> None: ...

    def task_started(self, resource: Resource, hook: str) -> None: ...

    def task_finished(self, resource: Resource, hook: str, error: BaseException | None) -> None: ...

    def bytes_moved(self, count: int) -> None: ...

    def message(self, text: str) -> None: ...

    def finished(self, status: str) -> None: ...


#: A warning's message is one line of at most this many characters (it is stored in the clear).
WARNING_MESSAGE_MAX = 300


def make_warning(
    resource: Resource, message: str, counts: dict[str, int] | None = None
) -> dict[str, Any]:
    """A warning as recorded: `{"resource", "message", "counts"}`.  Checked here, so that a
    plugin's mistake fails its hook (naming it) rather than the final status write."""
    if not isinstance(resource, Resource):
        raise TypeError(f"warn: resource must be a Resource, not {type(resource).__name__}")
    if not isinstance(message, str) or not message.strip():
        raise ValueError("warn: message must be a non-empty string")
    text = " ".join(message.split())  # one line: it ends up on one line of stderr
    if len(text) > WARNING_MESSAGE_MAX:
        text = text[: WARNING_MESSAGE_MAX - 3] + "..."
    warning: dict[str, Any] = {"resource": resource.to_dict(), "message": text}
    if counts:
        if not isinstance(counts, dict):
            raise TypeError(f"warn: counts must be a dict, not {type(counts).__name__}")
        for key, value in counts.items():
            if not isinstance(key, str) or type(value) is not int or value < 0:
                raise ValueError(
                    f"warn: counts maps names to integers >= 0, not {key!r}: {value!r}"
                )
        warning["counts"] = dict(counts)
    return warning


class OperationContext:
    """The `context` handed to hooks: who is running what, and a way to report progress
    and incomplete work."""

    def __init__(self, provider: Provider, kind: str, record_id: str, progress: Progress):
        self.provider = provider
        self.provider_id = provider.id
        self.config = provider.config
        self.operation = kind
        self.record_id = record_id
        self.progress = progress
        #: Restore: old resource key ("TYPE#ID") -> the new resource created for it, so a
        #: parent's complete hook can find what its children became.
        self.new_resources: dict[str, Any] = {}
        #: Resource key -> the warnings its hooks reported (see `warn`).
        self.warnings: dict[str, list[dict[str, Any]]] = {}
        self.cancelled = threading.Event()
        #: Which signal cancelled the operation (SIGINT: Ctrl-C; SIGTERM: a service manager
        #: stopping it), and how the record says so.
        self.cancel_signal: int = signal.SIGINT
        self.cancel_reason = "cancelled by the user"
        #: True while `on_abort` hooks run: cancelling no longer raises (see check_cancelled).
        self.cleaning_up = False
        self._lock = threading.Lock()
        self._previous: list[Checkpoint] | None = None

    @property
    def content_store(self):
        """The bank's deduplicating content store (see tutela.contentstore)."""
        return self.provider.content_store()

    def previous_checkpoint(self, resource: Resource) -> Checkpoint | None:
        """The newest `available` checkpoint of this provider holding `resource`, for
        incremental protection; None if there is none."""
        with self._lock:
            if self._previous is None:
                self._previous = [
                    cp
                    for cp in self.provider.checkpoints.list(
                        provider_id=self.provider.id, status="available"
                    )
                    if cp.id != self.record_id
                ]
            candidates = list(self._previous)
        for cp in candidates:
            if resource in cp.graph():
                return cp
        return None

    def report_bytes(self, count: int) -> None:
        """Count `count` bytes moved, for the progress display.  Raises `Cancelled` once the
        operation is cancelled, so a hook that reports progress stops there."""
        self.progress.bytes_moved(count)
        self.check_cancelled()

    def check_cancelled(self) -> None:
        """Raise `Cancelled` once the operation is cancelled (Ctrl-C).  A hook that runs
        long calls it now and then (between files, between blocks) and lets it propagate:
        the operation then ends in error, "cancelled by the user", and its abort hooks run
        (in which it never raises: a cleanup runs to its end)."""
        if self.cancelled.is_set() and not self.cleaning_up:
            raise Cancelled(self.cancel_reason)

    def warn(self, resource: Resource, message: str, counts: dict[str, int] | None = None) -> None:
        """Report that `resource` was protected incompletely (e.g. files left out), or
        restored other than the checkpoint has it (e.g. a hard link written as a file), while
        the operation still succeeds: the warning is kept in the resource's record and in the
        checkpoint (`checkpoints show` lists it) or the restore record, and `tutela protect`
        or `tutela restore` exits 3.  The message is one line kept in the clear: say how
        many, never which (no file names, no data); `counts` are integers by name
        (`{"unreadable": 2}`)."""
        self.add_warnings([make_warning(resource, message, counts)])

    def add_warnings(self, warnings: list[dict[str, Any]]) -> None:
        """Keep warnings made by `make_warning` (here, or by a hook in another process)."""
        with self._lock:
            for w in warnings:
                key = f"{w['resource']['type']}#{w['resource']['id']}"
                self.warnings.setdefault(key, []).append(w)

    def take_warnings(self) -> list[dict[str, Any]]:
        """The warnings kept so far, forgotten here (a worker sends them with its results)."""
        with self._lock:
            taken = [w for ws in self.warnings.values() for w in ws]
            self.warnings = {}
        return taken

    def all_warnings(self) -> list[dict[str, Any]]:
        with self._lock:
            return [w for ws in self.warnings.values() for w in ws]

    def set_new_resource(self, old: Resource, new: Any) -> None:
        with self._lock:
            self.new_resources[old.key] = new

    def show_resource(self, resource_type: str, resource_id: str) -> Resource:
        return self.provider.show_resource(resource_type, resource_id, context=self)


class HookCheckpoint:
    """The checkpoint as one hook sees it: its own resource's section (writable for protect
    and delete, read-only for restore) and read-only views of other resources' sections."""

    __slots__ = ("_checkpoint", "_resource", "_section", "_writable")

    def __init__(self, checkpoint: Checkpoint, resource: Resource, writable: bool):
        self._checkpoint = checkpoint
        self._resource = resource
        self._writable = writable
        self._section = None

    @property
    def bank_section(self):
        """This resource's own section of the checkpoint (made on first use)."""
        if self._section is None:
            self._section = self._checkpoint.resource_section(self._resource, self._writable)
        return self._section

    @property
    def id(self) -> str:
        return self._checkpoint.id

    @property
    def provider_id(self) -> str:
        return self._checkpoint.provider_id

    @property
    def created_at(self) -> str:
        return self._checkpoint.created_at

    @property
    def status(self) -> str:
        return self._checkpoint.status

    @property
    def resource_graph(self):
        return self._checkpoint.graph()

    def dependents(self) -> list[Resource]:
        """The resources this resource depends on in the checkpoint's graph (its children)."""
        return self._checkpoint.graph().dependents(self._resource)

    def get_resource_bank_section(self, resource: Resource):
        writable = self._writable and resource == self._resource
        return self._checkpoint.resource_section(resource, writable)

    def get_saved_info(self, resource: Resource) -> Any:
        return self._checkpoint.resource_records().get(resource.key, {}).get("saved_info")


class LeaseKeeper:
    """Holds this process's liveness lease on the bank and renews it in the background."""

    def __init__(self, provider: Provider):
        self.plugin = provider.bank.plugin
        self.interval = float(getattr(self.plugin, "renew_window", 30) or 30)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        if not self.plugin.acquire_lease(None):
            raise LeaseError("could not take this process's bank lease")
        self._thread = threading.Thread(target=self._renew, name="tutela-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.plugin.renew_lease(None)
            except Exception as exc:  # noted; checked before the final status write
                self.lost = f"{type(exc).__name__}: {exc}"

    def valid(self) -> bool:
        return self.lost is None and self.plugin.check_lease_validity(None)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):
            self.plugin.release_lease(None)


@contextlib.contextmanager
def _signals_cancel(
    context: OperationContext,
    say: Callable[[str], None] | None = None,
    wake: Callable[[], None] | None = None,
) -> Iterator[None]:
    """While an operation runs, a first Ctrl-C (SIGINT) or SIGTERM (systemd, a container
    runtime stopping the service) asks it to stop: no new task starts and hooks stop at
    their next check (`check_cancelled`), so nothing is cut off mid-way and `on_abort` still
    runs (a group's quiesce is released).  A second signal interrupts at once
    (KeyboardInterrupt).  Only on the main thread, and only for a signal that has Python's
    default disposition (an application embedding Tutela keeps its own handlers; a
    background job's ignored SIGINT stays ignored)."""
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = [sig for sig, default in defaults.items() if signal.getsignal(sig) is default]

    def first_asks(signum: int, frame: Any) -> None:
        if context.cancelled.is_set():
            raise KeyboardInterrupt
        context.cancel_signal = signum
        if signum != signal.SIGINT:
            context.cancel_reason = f"cancelled by {signal.Signals(signum).name}"
        context.cancelled.set()
        if wake is not None:
            wake()
        if say is not None:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            say(
                f"{name}: cancelling, running hooks stop at their next check "
                f"({name} again: at once)"
            )

    for sig in taken:
        signal.signal(sig, first_asks)
    try:
        yield
    finally:
        for sig in taken:
            signal.signal(sig, defaults[sig])


def _error_text(error: BaseException) -> str:
    if isinstance(error, Cancelled):
        return str(error)  # "cancelled by the user": a reason, not a failure to explain
    if isinstance(error, KeyboardInterrupt):  # a second Ctrl-C, in a hook on this thread
        return str(Cancelled())
    return f"{type(error).__name__}: {error}"


class _Recorder(EngineListener):
    """Turns engine events into per-resource records and progress."""

    def __init__(self, run: OperationRun):
        self.run = run
        self.flow = run.flow
        self.failed: dict[int, tuple[str, BaseException]] = {}

    def task_started(self, node: int) -> None:
        self.run.progress.task_started(self.flow.resource(node), self.flow.hook_name(node))

    def task_finished(self, node: int, error: BaseException | None) -> None:
        resource = self.flow.resource(node)
        hook = self.flow.hook_name(node)
        if error is not None:
            self.failed[node >> 2] = (hook, error)
        self.run.progress.task_finished(resource, hook, error)

    def resource_done(self, index: int) -> None:
        self.run.record_resource(index, None)


class OperationRun:
    """One run of one operation over one flow, writing into one record."""

    def __init__(
        self,
        provider: Provider,
        flow: Flow,
        record: Checkpoint | RestoreRecord,
        checkpoint: Checkpoint,
        policy: ExecutorPolicy,
        progress: Progress,
    ):
        self.provider = provider
        self.flow = flow
        self.spec = SPECS[flow.kind]
        self.record = record
        self.checkpoint = checkpoint
        self.policy = policy
        self.progress = progress
        self.context = OperationContext(provider, flow.kind, record.id, progress)
        self.result_arrays = None

    def run_task(self, node: int) -> None:
        flow = self.flow
        r = node >> 2
        resource = flow.graph.nodes[r]
        hook = HOOKS[node & 3]
        view = HookCheckpoint(self.checkpoint, resource, self.spec.section_writable)
        kwargs = {
            "checkpoint": view,
            "context": self.context,
            "resource": resource,
            "parameters": flow.parameters[r],
        }
        if flow.kind == "restore":
            kwargs["restore"] = self.record
            kwargs["new_resources"] = self.context.new_resources
        try:
            call_hook(flow.operations[r], hook, kwargs)
        except TutelaError:
            raise
        except Exception as exc:
            raise HookError(resource, hook, exc) from exc

    # -- by value, for executors that run hooks in other processes -------------------------
    def describe_common(self) -> dict[str, Any]:
        return {
            "config": self.provider.config.to_wire(),
            "kind": self.flow.kind,
            "checkpoint_id": self.checkpoint.id,
            "record_id": self.record.id,
            "new_resources": {
                k: v.to_dict() if isinstance(v, Resource) else v
                for k, v in self.context.new_resources.items()
            },
        }

    def describe_task(self, node: int) -> tuple[int, dict[str, Any], int, dict[str, Any], bool]:
        r, h = node >> 2, node & 3
        last = self.flow.mask[r] >> (h + 1) == 0
        return (node, self.flow.graph.nodes[r].to_dict(), h, self.flow.parameters[r], last)

    def absorb(self, node: int, extra: dict[str, Any]) -> None:
        if extra.get("bytes"):
            self.progress.bytes_moved(extra["bytes"])
        for key, value in extra.get("new", {}).items():
            if isinstance(value, dict) and "type" in value and "id" in value:
                value = Resource.from_dict(value)
            self.context.new_resources[key] = value
        if extra.get("warnings"):
            self.context.add_warnings(extra["warnings"])

    def is_idempotent(self, node: int) -> bool:
        op = self.flow.operations[node >> 2]
        return HOOKS[node & 3] in (getattr(op, "idempotent_hooks", None) or ())

    def history(self) -> dict[str, dict[str, float]] | None:
        """Hook durations to dispatch by: a protect takes them from this provider's newest
        available checkpoint, a restore from the protect of the checkpoint it restores (a
        resource that took long to save is the one likely to take long to restore).  Advisory:
        a checkpoint that cannot be read only means no history."""
        try:
            if self.flow.kind == "protect":
                source = next(
                    iter(
                        self.provider.checkpoints.list(
                            provider_id=self.provider.id, status="available", limit=1
                        )
                    ),
                    None,
                )
            elif self.flow.kind == "restore":
                source = self.checkpoint
            else:
                return None
            if source is None:
                return None
            return durations_from_records(source.resource_records())
        except Exception as exc:  # an ordering hint, never a reason to fail
            log.debug("no hook durations from earlier runs: %s", exc)
            return None

    def record_resource(self, index: int, error: tuple[str, BaseException] | None) -> None:
        resource = self.flow.graph.nodes[index]
        record: dict[str, Any] = {"resource": resource.to_dict()}
        hooks = {}
        res = self.result_arrays
        if res is not None:
            started, finished = res
            base = index << 2
            for h in range(4):
                if finished[base | h]:
                    hooks[HOOKS[h]] = [round(started[base | h], 6), round(finished[base | h], 6)]
        if hooks:
            record["hooks"] = hooks
        warnings = self.context.warnings.get(resource.key)
        if warnings:
            record["warnings"] = [{k: v for k, v in w.items() if k != "resource"} for w in warnings]
        if error is None:
            record["status"] = self.spec.resource_ok
            if self.flow.kind == "protect" and self.flow.mask[index]:
                record["saved_info"] = self.provider.saved_info(self.checkpoint, resource)
            if self.flow.kind == "restore":
                new = self.context.new_resources.get(resource.key)
                if new is not None:
                    record["new_resource"] = new.to_dict() if isinstance(new, Resource) else new
        else:
            hook, exc = error
            record["status"] = "error"
            record["error"] = {"hook": hook, "message": _error_text(_unwrap(exc))}
            if self.flow.kind == "protect":
                # What was saved before the failure (e.g. a snapshot id) helps to clean up.
                with contextlib.suppress(Exception):
                    record["saved_info"] = self.provider.saved_info(self.checkpoint, resource)
        self.record.records.add(record)

    def execute(self) -> None:
        flow = self.flow
        self.progress.started(flow.kind, self.record.id, len(flow.graph), flow.task_count)
        recorder = _Recorder(self)
        engine = Engine(flow, self.run_task, self.policy, recorder)
        engine.describe_common = self.describe_common
        engine.describe_task = self.describe_task
        engine.absorb = self.absorb
        engine.is_idempotent = self.is_idempotent
        engine.report_bytes = self.progress.bytes_moved
        engine.cancel = self.context.cancelled
        if self.policy.prioritise:
            engine.history = self.history()
        self.result_arrays = (engine.started, engine.finished)
        with (
            LeaseKeeper(self.provider) as lease,
            _signals_cancel(self.context, self.progress.message, engine.wake),
        ):
            try:
                engine_result = engine.run()
            except Exception as exc:
                # The executor could not start (e.g. a cluster went away after preflight).
                message = _error_text(exc)
                with contextlib.suppress(BankError):
                    self._persist(
                        lambda: self.record.set_status(
                            self.spec.error_status, error={"message": message}
                        )
                    )
                self.progress.finished(self.spec.error_status)
                raise OperationFailed(
                    f"{flow.kind} {self.record.id} ended in {self.spec.error_status}: {message}",
                    self.record.id,
                ) from exc
            failures = engine_result.failures
            if failures or engine_result.cancelled:
                self._finish_failed(engine_result, recorder)
                return
            try:
                self.record.records.flush()
            except BankError as exc:
                recorder.failed.setdefault(0, ("(records)", exc))
                self._finish_failed(engine_result, recorder)
                return
            if not lease.valid():
                message = f"lost the bank lease ({lease.lost or 'not renewed in time'})"
                self.record.set_status(self.spec.error_status, error={"message": message})
                self.progress.finished(self.spec.error_status)
                raise OperationFailed(f"{flow.kind} {self.record.id}: {message}", self.record.id)
            self.record.set_status(self.spec.ok_status, **self._warning_fields())
            self.progress.finished(self.spec.ok_status)

    def _warning_fields(self) -> dict[str, Any]:
        """`warnings` for the final status of a protect or restore.  A delete keeps them out of
        the checkpoint's index: those there are its protect's."""
        warnings = self.context.all_warnings()
        if not warnings or self.flow.kind == "delete":
            return {}
        return {"warnings": warnings}

    def _persist(self, write: Callable[[], None]) -> None:
        """Write a status or records after a failure, which is often the bank's own: retry
        for up to `status_retry_seconds` (default 60) so a short outage still ends in a
        recorded `error`; if the bank stays away the checkpoint keeps its old status, and
        its owner's lapsed lease marks it stale."""
        deadline = time.monotonic() + self.provider.status_retry_seconds
        while True:
            try:
                write()
                return
            except BankError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)

    def _finish_failed(self, result, recorder: _Recorder) -> None:
        flow = self.flow
        errors = []
        touched = {node >> 2 for node in result.ran}
        for index, (hook, exc) in recorder.failed.items():
            self.record_resource(index, (hook, exc))
            errors.append(
                {
                    "resource": flow.graph.nodes[index].to_dict(),
                    "hook": hook,
                    "message": _error_text(_unwrap(exc)),
                }
            )
        aborted = 0
        for index in sorted(touched - set(recorder.failed)):
            # Started but not finished: record as interrupted.
            base = index << 2
            finished_all = all(
                not flow.mask[index] >> h & 1 or base | h in result.ran for h in range(4)
            )
            if not finished_all:
                self.record_resource(index, ("(interrupted)", TutelaError("operation stopped")))
        self.context.cleaning_up = True  # every hook has returned: only on_abort runs now
        for index in sorted(touched):
            op = flow.operations[index]
            if op is not None and has_abort(op):
                resource = flow.graph.nodes[index]
                try:
                    call_hook(
                        op,
                        "on_abort",
                        {
                            "checkpoint": HookCheckpoint(
                                self.checkpoint, resource, self.spec.section_writable
                            ),
                            "context": self.context,
                            "resource": resource,
                            "parameters": flow.parameters[index],
                            "error": errors[0]["message"] if errors else "cancelled",
                        },
                    )
                    aborted += 1
                except Exception as exc:
                    self.progress.message(f"{resource.key}: on_abort failed: {_error_text(exc)}")
        if result.cancelled and not errors:
            errors.append({"message": self.context.cancel_reason})
        with contextlib.suppress(BankError):
            self._persist(self.record.records.flush)
        try:
            self._persist(
                lambda: self.record.set_status(
                    self.spec.error_status,
                    errors=errors,
                    error=errors[0] if errors else None,
                    **self._warning_fields(),
                )
            )
        except BankError as exc:
            errors.append({"message": f"the status could not be written: {exc}"})
        self.progress.finished(self.spec.error_status)
        first = errors[0] if errors else {"message": "failed"}
        where = ""
        if "resource" in first:
            where = f"{first['resource']['type']}#{first['resource']['id']} {first['hook']}: "
        raise OperationFailed(
            f"{flow.kind} {self.record.id} ended in {self.spec.error_status}: {where}{first['message']}",
            self.record.id,
            errors,
            cancelled=self.context.cancel_signal if result.cancelled else 0,
        )


def _unwrap(exc: BaseException) -> BaseException:
    return exc.error if isinstance(exc, HookError) else exc


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
