"""Shared machinery of the object-store banks (Swift, S3): retries and the lease protocol.

Retries: transient failures (connection refused or reset, timeouts, 5xx, 408/429) are retried
with exponential backoff and full jitter (tenacity), then surface as one `BankError` naming the
bank, the operation and the key, never a credential.

Leases: neither Swift nor Swift's s3api offers compare-and-swap on an existing object, and
Swift's `If-None-Match: *` is checked before the body is read, so two racing creators can both
get 201 (the later timestamp survives).  `LeaseProtocol` therefore decides a race by reading
the stored record back after a settle time:

1. t0 = now; read the lease record.  If it names another owner and has not expired: lost.
2. Write our record (owner, a fresh nonce, expiry) -- create-only (`If-None-Match: *`) when
   there was none and the store supports it (412: lost).
3. If this round trip took longer than `settle` seconds since t0: lost (see below).
4. Sleep `settle` seconds, read again: won if and only if the record carries our nonce.

Why at most one winner: a store with read-after-write consistency on one key (Swift with one
replica or quorum reads, AWS S3) orders it.  If B's write had not landed when A read in step 1,
B's write lands after A's t0; B gives up unless it landed within `settle` of B's own t0, which
came before A's write landed (else B would have seen A's live record).  So by the time either
reads back (settle after its own write) both writes have landed, both read the same surviving
record, and exactly one nonce is in it.  A slow writer (step 3) may make a round with no winner;
the lease then lapses after `lease_expire_window`.  A holder renewing a live lease it holds
skips the settle: nobody may write over a live record of another owner.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from tutela.bank import OWNER_LEASE, checked_lease_name
from tutela.errors import BankError, LeaseError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving up: `attempts` in all, waits growing from `initial` to
    at most `max_wait` seconds (full jitter), the whole thing bounded by `deadline` seconds."""

    attempts: int = 5
    initial: float = 0.5
    max_wait: float = 8.0
    deadline: float = 120.0

    @classmethod
    def from_config(cls, config, section: str, options: dict) -> RetryPolicy:
        """The `RETRY_KEYS` of `section`, keyword `options` first; defaults as above."""

        def pick(key: str, field: str) -> float:
            if options.get(key) is not None:
                return float(options[key])
            return float(config.get_float(section, key, getattr(cls, field)))

        picked = {field: pick(key, field) for key, field in _RETRY_FIELDS.items()}
        return cls(
            attempts=max(1, int(picked["attempts"])),
            initial=picked["initial"],
            max_wait=picked["max_wait"],
            deadline=picked["deadline"],
        )


#: A bank section's retry keys -> the `RetryPolicy` field each sets.
_RETRY_FIELDS = {
    "retry_attempts": "attempts",
    "retry_initial_wait": "initial",
    "retry_max_wait": "max_wait",
    "retry_deadline": "deadline",
}
#: The retry keys an object-store bank reads from its section (`RetryPolicy.from_config`).
RETRY_KEYS = frozenset(_RETRY_FIELDS)


class Transient(Exception):
    """Raised inside a retried call to say "worth another try"; wraps the cause."""

    def __init__(self, summary: str, cause: BaseException | None = None):
        super().__init__(summary)
        self.summary = summary
        self.cause = cause


def checked_range(data: bytes, expected: int, asked: int, what: str) -> bytes:
    """The body of a ranged GET: shorter than its Content-Length is worth another try, more
    than the range asked for is refused."""
    if len(data) != expected:
        raise Transient(f"short read ({len(data)} of {expected} bytes)")
    if len(data) > asked:
        raise BankError(f"{what} answered more than asked")
    return data


def call_with_retry(
    policy: RetryPolicy,
    what: str,
    fn: Callable[[], T],
    classify: Callable[[BaseException], Transient | BaseException | None],
    before_retry: Callable[[], None] | None = None,
) -> T:
    """Run `fn`, retrying what `classify` calls transient.

    `classify(exc)` returns a `Transient` to retry, another exception to raise instead (already
    secret-free), or None to let `exc` propagate unchanged.  `what` ("swift bank: put of 'k'")
    heads the final error.  `before_retry` resets state (rewinds a body, drops a token).
    """

    def attempt() -> T:
        try:
            return fn()
        except (BankError, Transient):
            raise
        except Exception as exc:
            verdict = classify(exc)
            if verdict is None:
                raise
            raise verdict from None

    def reset(_state: tenacity.RetryCallState) -> None:
        if before_retry is not None:
            before_retry()

    retryer = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts)
        | tenacity.stop_after_delay(policy.deadline),
        wait=tenacity.wait_random_exponential(multiplier=policy.initial, max=policy.max_wait),
        retry=tenacity.retry_if_exception_type(Transient),
        before_sleep=reset,
        reraise=True,
    )
    try:
        return retryer(attempt)
    except Transient as exc:
        tries = retryer.statistics.get("attempt_number", policy.attempts)
        raise BankError(f"{what} failed after {tries} attempt(s): {exc.summary}") from None


# -- leases -------------------------------------------------------------------------------------
@dataclass
class LeaseRecord:
    owner: str
    nonce: str
    expires: float  # wall clock (time.time()) of the writer

    def live(self) -> bool:
        return self.expires > time.time()

    def dumps(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "nonce": self.nonce,
                "expires": self.expires,
                "renewed": time.time(),
            }
        ).encode()

    @classmethod
    def loads(cls, data: bytes) -> LeaseRecord | None:
        try:
            raw = json.loads(data)
            return cls(str(raw["owner"]), str(raw["nonce"]), float(raw["expires"]))
        except (ValueError, KeyError, TypeError):
            return None  # a torn or foreign record counts as none


class LeaseStore:
    """What a bank provides for `LeaseProtocol`."""

    def lease_read(self, name: str) -> LeaseRecord | None:
        raise NotImplementedError

    def lease_write(self, name: str, record: LeaseRecord, create_only: bool) -> bool:
        """Store `record`; with `create_only`, False if an object is already there."""
        raise NotImplementedError

    def lease_delete(self, name: str) -> None:
        raise NotImplementedError


class LeasedStore(LeaseStore):
    """The `BankPlugin` lease methods for a bank that keeps its leases as objects through a
    `LeaseProtocol` (`self.leases`, owner `self._owner_id`).  List it before `BankPlugin` in
    the bases, so these methods take the place of the abstract ones."""

    leases: LeaseProtocol
    _owner_id: str

    def get_owner_id(self) -> str:
        return self._owner_id

    def _lease(self, name: str | None) -> str:
        return checked_lease_name(self, name)

    def acquire_lease(self, name: str | None = OWNER_LEASE) -> bool:
        return self.leases.acquire(self._lease(name))

    def renew_lease(self, name: str | None = OWNER_LEASE) -> None:
        self.leases.renew(self._lease(name))

    def check_lease_validity(self, name: str | None = OWNER_LEASE) -> bool:
        return self.leases.check_validity(self._lease(name))

    def release_lease(self, name: str | None = OWNER_LEASE) -> None:
        self.leases.release(self._lease(name))

    def get_lease_owner(self, name: str | None = OWNER_LEASE) -> str | None:
        return self.leases.owner(self._lease(name))


class LeaseProtocol:
    """The lease rules of `BankPlugin` over a `LeaseStore` (see the module docstring)."""

    def __init__(
        self,
        store: LeaseStore,
        owner_id: str,
        expire_window: float,
        validity_window: float,
        settle: float,
    ):
        self.store = store
        self.owner_id = owner_id
        self.expire_window = expire_window
        self.validity_window = validity_window
        self.settle = settle
        self._renewed: dict[str, float] = {}
        self._lock = threading.Lock()

    def _record(self) -> LeaseRecord:
        return LeaseRecord(self.owner_id, uuid.uuid4().hex, time.time() + self.expire_window)

    def _contend(self, name: str, t0: float, current: LeaseRecord | None) -> bool:
        """Steps 2-4: write our record and see whether it survived."""
        mine = self._record()
        if not self.store.lease_write(name, mine, create_only=current is None):
            # A retried create can be refused because its first try landed: look.
            stored = self.store.lease_read(name)
            if stored is None or stored.nonce != mine.nonce:
                return False
        if time.monotonic() - t0 > self.settle:
            return False
        time.sleep(self.settle * (1 + 0.1 * random.random()))
        stored = self.store.lease_read(name)
        return stored is not None and stored.nonce == mine.nonce

    def acquire(self, name: str) -> bool:
        t0 = time.monotonic()
        current = self.store.lease_read(name)
        if current is not None and current.live() and current.owner != self.owner_id:
            return False
        if (
            current is not None
            and current.owner == self.owner_id
            and self._fast_renew(name, t0, current)
        ):
            return True
        if not self._contend(name, t0, current):
            return False
        with self._lock:
            self._renewed[name] = t0
        return True

    def _fast_renew(self, name: str, t0: float, current: LeaseRecord) -> bool:
        """Rewrite a live record of ours without a race: nobody else may write over it while
        it is live, so it is enough that our write lands before it expires."""
        remaining = current.expires - time.time()
        if remaining <= self.settle:
            return False
        self.store.lease_write(name, self._record(), create_only=False)
        if time.monotonic() - t0 >= remaining:
            return False  # landed too late to be sure: fall back to the contended path
        with self._lock:
            self._renewed[name] = t0
        return True

    def renew(self, name: str) -> None:
        t0 = time.monotonic()
        current = self.store.lease_read(name)
        if current is not None and current.live() and current.owner != self.owner_id:
            with self._lock:
                self._renewed.pop(name, None)
            raise LeaseError(f"lease {name!r} was taken by {current.owner}")
        held = name in self._renewed
        if not held and not (current is not None and current.owner == self.owner_id):
            raise LeaseError(f"lease {name!r} is not held by this owner")
        ours = current is not None and current.owner == self.owner_id
        if ours and self._fast_renew(name, t0, current):  # type: ignore[arg-type]
            return
        if not self._contend(name, t0, current):
            with self._lock:
                self._renewed.pop(name, None)
            raise LeaseError(f"lease {name!r} lapsed and could not be renewed")
        with self._lock:
            self._renewed[name] = t0

    def check_validity(self, name: str) -> bool:
        renewed = self._renewed.get(name)
        if renewed is None or time.monotonic() - renewed > self.validity_window:
            return False
        current = self.store.lease_read(name)
        return current is not None and current.live() and current.owner == self.owner_id

    def release(self, name: str) -> None:
        """Delete our record, but only while it is live: a lapsed record may already have
        been replaced by another owner's between our read and our delete (deletes are not
        conditional), and it goes away by itself anyway."""
        current = self.store.lease_read(name)
        if (
            current is not None
            and current.owner == self.owner_id
            and current.expires - time.time() > self.settle
        ):
            self.store.lease_delete(name)
        with self._lock:
            self._renewed.pop(name, None)

    def owner(self, name: str) -> str | None:
        current = self.store.lease_read(name)
        return current.owner if current is not None and current.live() else None
