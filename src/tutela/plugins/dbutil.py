"""Helpers shared by the database plugins: client subprocesses whose output is streamed (never
copied to a temporary file), connection strings that never show a password, version checks.

Why subprocesses: the vendors' dump tools (`pg_dump`, `mariadb-dump`) are the only
supported way to get a dump that their restore tools accept across versions; we stream
their stdout straight into `save_stream` and feed `open_stream` straight into their stdin.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from tutela.errors import TutelaError

CHUNK = 1 << 20
_SECRET_KEYS = ("password", "passwd", "pwd")
_SECRET_RE = re.compile(
    r"""(?ix)
    \b(password|passwd|pwd)            # the key
    (\s*=\s*)                          # '=' with optional blanks
    ('(?:[^'\\]|\\.)*'|\S+)            # a quoted or a plain value
    """
)


def redact(text: str) -> str:
    """Hide the value of every `password=` (libpq or key=value form) in a text."""
    return _SECRET_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def parse_keyvalue(conninfo: str) -> dict[str, str]:
    """A `key=value key='quoted value'` string (libpq style) as a dict."""
    out: dict[str, str] = {}
    lexer = shlex.shlex(conninfo, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise ValueError(f"cannot parse connection string {redact(conninfo)!r}: {exc}") from None
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ValueError(
                f"connection string {redact(conninfo)!r}: {redact(token)!r} is not key=value"
            )
        out[key.strip()] = value
    return out


def format_keyvalue(values: Mapping[str, Any], *, hide_password: bool = True) -> str:
    parts = []
    for key, value in values.items():
        if value is None:
            continue
        if hide_password and key.lower() in _SECRET_KEYS:
            parts.append(f"{key}=***")
            continue
        text = str(value)
        if text == "" or re.search(r"[\s'\\]", text):
            text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def read_password_file(path: str) -> str:
    """The first line of a file that holds one password (for clients without a pass file)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise TutelaError(f"cannot read password file {path!r}: {exc.strerror}") from None


def version_tuple(text: str) -> tuple[int, ...]:
    """(major, minor) from a version banner such as `pg_dump (PostgreSQL) 15.20 (Debian)`."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise TutelaError(f"cannot read a version number from {text.strip()!r}")
    return tuple(int(g) for g in m.groups() if g is not None)


def tool_version(executable: str) -> tuple[tuple[int, ...], str]:
    try:
        proc = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise TutelaError(f"client tool {executable!r} is not installed (or not on PATH)") from None
    banner = (proc.stdout or proc.stderr).strip()
    return version_tuple(banner), banner


def _tail(lines: Iterable[str], limit: int = 6) -> str:
    kept = [redact(line.strip()) for line in lines if line.strip()]
    return " | ".join(kept[-limit:])


class _StderrCollector(threading.Thread):
    """Drains a subprocess's stderr so it can never block on a full pipe; keeps the tail."""

    def __init__(self, pipe):
        super().__init__(daemon=True, name="tutela-stderr")
        self.pipe = pipe
        self.lines: deque[str] = deque(maxlen=200)
        self.start()

    def run(self) -> None:
        for raw in iter(self.pipe.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
        self.pipe.close()


class OutputStream:
    """A running client whose stdout is read as a stream of blocks.

    Iterate it (e.g. hand it to `save_stream`); after the last block it waits for the process
    and raises TutelaError with the redacted stderr tail if the exit status is not 0.  Nothing
    is buffered beyond one block, so a dump of any size never lands on local disk.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        what: str | None = None,
    ):
        self.args = list(args)
        self.what = what or os.path.basename(self.args[0])
        self._pushed: list[bytes] = []
        try:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        except FileNotFoundError:
            raise TutelaError(f"client tool {self.args[0]!r} is not installed") from None
        self.stderr = _StderrCollector(self.proc.stderr)

    def first_block(self) -> bytes:
        """Block until the tool wrote something (or ended); the block is kept for iteration."""
        block = self.proc.stdout.read1(CHUNK)  # type: ignore[union-attr]
        if block:
            self._pushed.append(block)
        return block

    def __iter__(self) -> Iterator[bytes]:
        while self._pushed:
            yield self._pushed.pop(0)
        read = self.proc.stdout.read1  # type: ignore[union-attr]
        while block := read(CHUNK):
            yield block
        self.wait()

    def wait(self) -> None:
        code = self.proc.wait()
        self.stderr.join(timeout=10)
        if code != 0:
            detail = _tail(self.stderr.lines)
            raise TutelaError(
                f"{self.what} failed (exit status {code})" + (f": {detail}" if detail else "")
            )

    def warnings(self) -> list[str]:
        return [redact(line) for line in self.stderr.lines if line.strip()]

    def kill(self) -> None:
        """Stop the tool (used when the operation fails before the stream was consumed)."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def feed_process(
    args: Sequence[str],
    blocks: Iterable[bytes],
    env: Mapping[str, str] | None = None,
    what: str | None = None,
) -> list[str]:
    """Run a client that reads `blocks` on its stdin; returns its stderr lines (redacted).

    Raises TutelaError with the stderr tail when it exits non-zero.  If producing the blocks
    fails (e.g. a damaged stream), the client is killed and that error is raised.
    """
    what = what or os.path.basename(args[0])
    try:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    except FileNotFoundError:
        raise TutelaError(f"client tool {args[0]!r} is not installed") from None
    collector = _StderrCollector(proc.stderr)
    assert proc.stdin is not None
    broken = False
    try:
        for block in blocks:
            try:
                proc.stdin.write(block)
            except BrokenPipeError:
                broken = True  # the client stopped reading: its exit status says why
                break
        try:
            proc.stdin.close()
        except BrokenPipeError:
            broken = True
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    code = proc.wait()
    collector.join(timeout=10)
    lines = [redact(line) for line in collector.lines if line.strip()]
    if code != 0 or broken:
        detail = _tail(lines)
        raise TutelaError(f"{what} failed (exit status {code})" + (f": {detail}" if detail else ""))
    return lines


def run_tool(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    what: str | None = None,
    timeout: float = 600,
) -> str:
    """Run a short client command; return its stdout, raise with the stderr tail on failure."""
    what = what or os.path.basename(args[0])
    try:
        proc = subprocess.run(
            list(args),
            env={**os.environ, **(env or {})},
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise TutelaError(f"client tool {args[0]!r} is not installed") from None
    except subprocess.TimeoutExpired:
        raise TutelaError(f"{what} timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        detail = _tail(proc.stderr.decode(errors="replace").splitlines())
        raise TutelaError(
            f"{what} failed (exit status {proc.returncode})" + (f": {detail}" if detail else "")
        )
    return proc.stdout.decode(errors="replace")
