"""A protect and a delete at the same time, on two providers sharing one bank (as two
processes would): the shape of every "delete never loses what a protect needs" test."""

from __future__ import annotations

import threading

from tutela import Provider, Resource


def protect_during_delete(protector: Provider, deleter: Provider, resource: Resource, doomed: str):
    """Start a protect of `resource` on a thread, delete checkpoint `doomed` meanwhile, and
    return the new checkpoint (re-raising the protect's error here, not losing it)."""
    outcome: dict[str, object] = {}

    def protect() -> None:
        try:
            outcome["checkpoint"] = protector.protect([resource])
        except BaseException as exc:
            outcome["error"] = exc

    t = threading.Thread(target=protect)
    t.start()
    try:
        deleter.delete(doomed)
    finally:
        t.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["checkpoint"]
