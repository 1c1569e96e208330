"""Bank-level faults against the real Swift all-in-one: its object server is stopped (by PID,
through `scripts/swift-aio stop-server object`) in the middle of a streamed upload."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

from tutela.bank import Bank
from tutela.errors import BankError, ObjectNotFound

pytestmark = [pytest.mark.swift, pytest.mark.slow]

#: Fast but real retries: 4 attempts, waits drawn from up to 0.2, 0.4, 0.8 s.
RETRY = {"retry_attempts": 4, "retry_initial_wait": 0.2, "retry_max_wait": 1.0}
MiB = 1 << 20


def _make(kind: str, service, tag: str):
    if kind == "s3":
        from tutela.bank.s3 import S3Bank

        return S3Bank(
            **service.s3_options(bucket="tutela-faults", prefix=tag, part_size="5M", **RETRY)
        )
    from tutela.bank.swift import SwiftBank

    segment = "1M" if kind == "swift-segmented" else "256M"
    return SwiftBank(**service.swift_options(container=tag, segment_size=segment, **RETRY))


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie not yet reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_until_serving(bank: Bank, key: str, expected: bytes, timeout: float = 30) -> None:
    """The proxy error-limits a node that failed for `error_suppression_interval` (1 s here)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert bank.get_object(key) == expected
            return
        except BankError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.parametrize("kind", ["swift-single", "swift-segmented", "s3"])
def test_object_server_dies_mid_upload(swift_service, kind: str) -> None:
    tag = f"fault{uuid.uuid4().hex[:10]}"
    plugin = _make(kind, swift_service, tag)
    bank = Bank(plugin)
    earlier = os.urandom(3 * MiB + 17)
    bank.update_object("earlier", earlier)
    old_pid = swift_service.pid("object")
    assert old_pid is not None
    stopped = False

    def source() -> Iterator[bytes]:
        nonlocal stopped
        for i in range(12):
            if i == 6:  # half-way: 6 MiB sent (several segments/parts for the chunked kinds)
                swift_service.run("stop-server", "object")
                stopped = True
            yield os.urandom(MiB)

    try:
        started = time.monotonic()
        with pytest.raises(BankError) as info:
            bank.update_object_stream("victim", source())
        took = time.monotonic() - started
        assert stopped
        message = str(info.value)
        assert "'victim'" in message, message
        assert "failed" in message, message
        assert swift_service.key not in message.replace(swift_service.user, "")
        assert swift_service.s3_secret_key not in message.replace(swift_service.s3_access_key, "")
        assert took < 60, f"giving up took {took:.1f} s"
        assert _gone(old_pid), f"object server {old_pid} still running"
    finally:
        swift_service.run("start-server", "object")
    assert swift_service.pid("object") != old_pid
    try:
        _wait_until_serving(bank, "earlier", earlier)
        # Nothing under the key, neither readable nor listed.
        with pytest.raises(ObjectNotFound):
            bank.get_object("victim")
        listed = bank.list_objects()
        assert listed == ["earlier"], listed
        # A new write succeeds and the earlier object is still byte-identical.
        fresh = os.urandom(7 * MiB + 3)
        chunks = [fresh[i : i + MiB] for i in range(0, len(fresh), MiB)]
        assert bank.update_object_stream("victim", iter(chunks)) == len(fresh)
        assert bank.get_object("victim") == fresh
        assert bank.get_object("earlier") == earlier
    finally:
        plugin.purge()


def test_read_fails_cleanly_while_object_server_is_down(swift_service) -> None:
    tag = f"fault{uuid.uuid4().hex[:10]}"
    plugin = _make("swift-single", swift_service, tag)
    bank = Bank(plugin)
    bank.update_object("k", b"value")
    swift_service.run("stop-server", "object")
    try:
        started = time.monotonic()
        with pytest.raises(BankError) as info:
            bank.get_object("k")
        assert not isinstance(info.value, ObjectNotFound)
        assert "'k'" in str(info.value)
        assert time.monotonic() - started < 30
    finally:
        swift_service.run("start-server", "object")
    try:
        _wait_until_serving(bank, "k", b"value")
    finally:
        plugin.purge()


@pytest.mark.parametrize("kind", ["swift-single", "swift-segmented", "s3"])
def test_download_resumes_across_object_server_restart(swift_service, kind: str) -> None:
    tag = f"fault{uuid.uuid4().hex[:10]}"
    plugin = _make(kind, swift_service, tag)
    plugin.retry = type(plugin.retry)(attempts=8, initial=0.3, max_wait=1.5, deadline=60)
    bank = Bank(plugin)
    data = os.urandom(48 * MiB)
    bank.update_object("big", data)
    try:
        stream = bank.get_object_stream("big", chunk_size=MiB)
        got = [next(stream)]
        swift_service.run("stop-server", "object")
        swift_service.run("start-server", "object")
        got.extend(stream)  # broke off; resumed with a ranged GET pinned to the ETag
        assert b"".join(got) == data
    finally:
        if swift_service.pid("object") is None:
            swift_service.run("start-server", "object")
        _wait_until_serving(bank, "big", data)
        plugin.purge()
