"""Rendering: tables, JSON, and the live progress of long operations (kept apart from the
work itself, as restic keeps its ui package)."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any

from tutela.operations import Progress
from tutela.resource import Resource


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def print_json(value: Any, stream: IO[str] | None = None) -> None:
    stream = stream or sys.stdout
    json.dump(value, stream, indent=2, sort_keys=False, default=str)
    stream.write("\n")


def print_table(rows: list[list[Any]], headers: list[str], stream: IO[str] | None = None) -> None:
    stream = stream or sys.stdout
    cells = [[str(c) if c is not None else "" for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    stream.write(fmt.format(*headers).rstrip() + "\n")
    for row in cells:
        stream.write(fmt.format(*row).rstrip() + "\n")


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kind = ""
        self.record_id = ""
        self.total = 0
        self.done = 0
        self.failed = 0
        self.bytes = 0
        self.running: dict[tuple[Resource, str], float] = {}
        self.t0 = time.monotonic()

    def restart(self, kind: str, record_id: str, total: int) -> None:
        """Count a new operation from zero (prune runs several with one display)."""
        with self.lock:
            self.kind, self.record_id, self.total = kind, record_id, total
            self.done = self.failed = self.bytes = 0
            self.running.clear()
            self.t0 = time.monotonic()

    def task_done(self, resource: Resource, hook: str, error: BaseException | None) -> None:
        with self.lock:
            self.running.pop((resource, hook), None)
            self.done += 1
            if error is not None:
                self.failed += 1


class PlainProgress(Progress):
    """Plain lines on stderr: a start line, a status line every `interval` seconds, each
    failure, and an end line.  For logs and pipes."""

    def __init__(self, stream: IO[str] | None = None, interval: float = 5.0):
        self.stream = stream or sys.stderr
        self.interval = interval
        self.c = _Counts()
        self._last = 0.0

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def started(self, kind: str, record_id: str, resources: int, tasks: int) -> None:
        self.c.restart(kind, record_id, tasks)
        self._last = time.monotonic()
        self._line(f"{kind} {record_id}: {resources} resources, {tasks} tasks")

    def task_started(self, resource: Resource, hook: str) -> None:
        with self.c.lock:
            self.c.running[(resource, hook)] = time.monotonic()

    def task_finished(self, resource: Resource, hook: str, error: BaseException | None) -> None:
        self.c.task_done(resource, hook, error)
        due = self._due()
        if error is not None:
            self._line(f"  FAILED {resource.key} {hook}: {error}")
        elif due:
            self._status()

    def _due(self) -> bool:
        """Whether a status line is due (`interval` seconds since the last one)."""
        with self.c.lock:
            now = time.monotonic()
            if now - self._last < self.interval:
                return False
            self._last = now
            return True

    def _status(self) -> None:
        c = self.c
        elapsed = time.monotonic() - c.t0
        self._line(f"  {c.done}/{c.total} tasks, {human_bytes(c.bytes)} moved, {elapsed:.1f} s")

    def bytes_moved(self, count: int) -> None:
        with self.c.lock:
            self.c.bytes += count

    def message(self, text: str) -> None:
        self._line(f"  {text}")

    def finished(self, status: str) -> None:
        c = self.c
        elapsed = time.monotonic() - c.t0
        self._line(
            f"{c.kind} {c.record_id}: {status} ({c.done}/{c.total} tasks, "
            f"{human_bytes(c.bytes)} moved, {elapsed:.1f} s)"
        )


class LiveProgress(PlainProgress):
    """A live display on a terminal: tasks done/total, bytes moved, current resources."""

    def __init__(self, stream: IO[str] | None = None):
        super().__init__(stream, interval=1e9)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.stream)
        self.live = Live(
            console=self.console, refresh_per_second=8, transient=True, get_renderable=self._render
        )

    def _render(self):
        from rich.text import Text

        c = self.c
        with c.lock:
            elapsed = time.monotonic() - c.t0
            pct = (c.done / c.total * 100) if c.total else 100.0
            bar_w = 30
            filled = int(bar_w * pct / 100)
            rate = c.bytes / elapsed if elapsed > 0 else 0
            lines = [
                f"{c.kind} {c.record_id}",
                f"[{'#' * filled}{'.' * (bar_w - filled)}] {c.done}/{c.total} tasks  "
                f"{human_bytes(c.bytes)} ({human_bytes(rate)}/s)  {elapsed:.1f} s"
                + (f"  {c.failed} failed" if c.failed else ""),
            ]
            for (resource, hook), t in sorted(self.c.running.items(), key=lambda kv: kv[1])[:4]:
                lines.append(f"  {hook:<18} {resource.key}  {time.monotonic() - t:.1f} s")
        return Text("\n".join(lines))

    def started(self, kind: str, record_id: str, resources: int, tasks: int) -> None:
        self.c.restart(kind, record_id, tasks)
        self.live.start()

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def finished(self, status: str) -> None:
        self.live.stop()
        super().finished(status)


def json_event(event: str, **fields: Any) -> str:
    """One line of the `--json` progress stream: `{"event", "time" (Unix seconds), ...}`."""
    return json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=str)


class JsonProgress(PlainProgress):
    """JSON lines on stderr, for a frontend or a monitor (`--json`): one object per event,
    each with `event` and `time` (Unix seconds).  Events: `started` (operation, id,
    resources, tasks), `task_started` and `task_finished` (resource, hook; `error` when it
    failed), `status` (done, total, failed, bytes, elapsed) at most every `interval` seconds
    while bytes move or tasks end, `message` (text), `finished` (status and the last
    counts).  Messages are as the plain lines have them; names are never the secrets they
    are kept apart from."""

    def __init__(self, stream: IO[str] | None = None, interval: float = 1.0):
        super().__init__(stream, interval)
        self._write_lock = threading.Lock()

    def _event(self, event: str, **fields: Any) -> None:
        line = json_event(event, **fields)
        with self._write_lock:  # whole lines, whichever thread reports
            self.stream.write(line + "\n")
            self.stream.flush()

    def _counts(self) -> dict[str, Any]:
        c = self.c
        with c.lock:
            return {
                "done": c.done,
                "total": c.total,
                "failed": c.failed,
                "bytes": c.bytes,
                "elapsed": round(time.monotonic() - c.t0, 3),
            }

    def started(self, kind: str, record_id: str, resources: int, tasks: int) -> None:
        self.c.restart(kind, record_id, tasks)
        self._last = time.monotonic()
        self._event("started", operation=kind, id=record_id, resources=resources, tasks=tasks)

    def task_started(self, resource: Resource, hook: str) -> None:
        super().task_started(resource, hook)
        self._event("task_started", resource=resource.key, hook=hook)

    def task_finished(self, resource: Resource, hook: str, error: BaseException | None) -> None:
        self.c.task_done(resource, hook, error)
        fields: dict[str, Any] = {"resource": resource.key, "hook": hook}
        if error is not None:
            fields["error"] = str(error)
        self._event("task_finished", **fields)
        if self._due():
            self._event("status", **self._counts())

    def bytes_moved(self, count: int) -> None:
        super().bytes_moved(count)
        if self._due():
            self._event("status", **self._counts())

    def message(self, text: str) -> None:
        self._event("message", text=text)

    def finished(self, status: str) -> None:
        self._event(
            "finished", operation=self.c.kind, id=self.c.record_id, status=status, **self._counts()
        )


def make_progress(
    quiet: bool = False, stream: IO[str] | None = None, json_lines: bool = False
) -> Progress:
    """The progress display: none (`quiet`), JSON lines (`json_lines`, with `--json`), live
    on a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if quiet:
        return Progress()
    if json_lines:
        return JsonProgress(stream)
    if stream.isatty():
        return LiveProgress(stream)
    return PlainProgress(stream)
