"""A filesystem bank that SIGKILLs its own process just before a chosen write: deterministic
crash points for tests/test_crash.py, where a timer could only hit somewhere.

`TUTELA_TEST_CRASH="put|delete GLOB N"`: die before the Nth put (or delete) of a key that
matches GLOB (fnmatch, `*` crosses `/`); or `crash=` the same in-process, with `fail=True` to
raise `Crashed` there instead.  Unset, it is the filesystem bank unchanged.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import threading

from tutela.bank.filesystem import FilesystemBank


class Crashed(Exception):
    """Raised instead of dying (`fail=True`): the same bank state as a kill, in-process."""


class CrashingBank(FilesystemBank):
    def __init__(self, config=None, *, crash: str | None = None, fail: bool = False, **options):
        super().__init__(config, **options)
        spec = (crash or os.environ.get("TUTELA_TEST_CRASH", "")).split()
        self._crash = (spec[0], spec[1], int(spec[2])) if spec else None
        self._fail = fail
        self._seen = 0
        self._count_lock = threading.Lock()

    def _maybe_die(self, what: str, key: str) -> None:
        if self._crash is None:
            return
        kind, pattern, nth = self._crash
        if kind != what or not fnmatch.fnmatchcase(key, pattern):
            return
        with self._count_lock:
            self._seen += 1
            hit = self._seen == nth
        if hit and self._fail:
            raise Crashed(f"{what} {key}")
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)

    def update_object(self, key, value):
        self._maybe_die("put", key)
        return super().update_object(key, value)

    def update_object_parts(self, key, parts):
        self._maybe_die("put", key)
        return super().update_object_parts(key, parts)

    def update_object_stream(self, key, stream):
        self._maybe_die("put", key)
        return super().update_object_stream(key, stream)

    def delete_object(self, key):
        self._maybe_die("delete", key)
        return super().delete_object(key)
