"""Which checkpoints a retention policy keeps (`tutela prune`).

Like restic's `forget`: keep the newest N (`keep_last`), and the newest checkpoint of each of
the N most recent days, ISO weeks and months that have one.  Only `available` checkpoints count
and can be kept, so the last good checkpoint of a resource set is never selected for deletion
while any keep rule is set; `error` checkpoints are always selected (they cannot be restored).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, not {value!r}")

    def empty(self) -> bool:
        """True when no rule keeps anything: such a policy would delete every checkpoint,
        and `select` refuses it."""
        return max(self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly) < 1


def _when(created_at: str) -> datetime:
    return datetime.fromisoformat(created_at.replace("Z", "+00:00"))


def select(
    checkpoints: list[tuple[str, str, str]], policy: Policy
) -> tuple[list[str], dict[str, list[str]]]:
    """`checkpoints` are (id, created_at, status).  Returns (ids to delete, id -> reasons kept)."""
    if policy.empty():
        raise ValueError("a retention policy needs at least one keep rule")
    good = sorted((c for c in checkpoints if c[2] == "available"), key=lambda c: c[1], reverse=True)
    kept: dict[str, list[str]] = {}
    for i, (cid, _, _) in enumerate(good):
        if i < policy.keep_last:
            kept.setdefault(cid, []).append("last")
    buckets = (
        ("daily", policy.keep_daily, lambda d: d.strftime("%Y-%m-%d")),
        ("weekly", policy.keep_weekly, lambda d: "{}-W{:02d}".format(*d.isocalendar()[:2])),
        ("monthly", policy.keep_monthly, lambda d: d.strftime("%Y-%m")),
    )
    for name, count, bucket in buckets:
        seen: set[str] = set()
        for cid, created, _ in good:
            if len(seen) >= count:
                break
            key = bucket(_when(created))
            if key not in seen:
                seen.add(key)
                kept.setdefault(cid, []).append(name)
    delete = [c[0] for c in checkpoints if c[0] not in kept and c[2] in ("available", "error")]
    return delete, kept
