"""Which ready task runs next.

Hooks are not free: main hooks move data for seconds or hours.  When workers are scarce, the
order in which ready tasks start decides the makespan, so parallel policies dispatch by the
*longest remaining path* (critical path first): the weight of a node plus the heaviest path
from it to the end of the flow.  Weights come from `Operation.estimated_duration(hook)` when a
plugin knows (e.g. from the data size), else from how long the same hook of the same resource
took last time (the hook times a checkpoint's records keep), else from the mean of the known
durations of that hook, and from per-hook defaults only when nothing is known at all.

The serial policy has no choice to make that changes the makespan, so it uses a plain stack.
"""

from __future__ import annotations

import contextlib
import heapq
from array import array
from collections import deque
from collections.abc import Mapping
from typing import Any

from tutela.flow import COMPLETE, MAIN, PB, PF, Flow
from tutela.plugin import HOOKS

#: Default weights (relative): main hooks move data, the others are short by design.
DEFAULT_WEIGHTS = (1.0, 1.0, 20.0, 1.0)


def resource_order(flow: Flow) -> list[int]:
    """Resources with every parent before its children (Kahn's algorithm, no recursion)."""
    graph = flow.graph
    parents = graph.parents
    pending = [len(p) for p in parents]
    order = [r for r in range(len(graph)) if pending[r] == 0]
    i = 0
    while i < len(order):
        for c in graph.children[order[i]]:
            pending[c] -= 1
            if pending[c] == 0:
                order.append(c)
        i += 1
    return order


def durations_from_records(records: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """`TYPE#ID` -> hook -> seconds, from a checkpoint's per-resource records."""
    history: dict[str, dict[str, float]] = {}
    for key, record in records.items():
        hooks = record.get("hooks")
        if not isinstance(hooks, dict):
            continue
        times = {}
        for hook, span in hooks.items():
            if isinstance(span, list | tuple) and len(span) == 2:
                with contextlib.suppress(TypeError, ValueError):
                    times[hook] = max(0.0, float(span[1]) - float(span[0]))
        if times:
            history[key] = times
    return history


def node_weights(
    flow: Flow,
    defaults: tuple[float, ...] = DEFAULT_WEIGHTS,
    history: Mapping[str, Mapping[str, float]] | None = None,
) -> array:
    """Weight of every node (0 for pass-through): the plugin's estimate, else the hook's
    duration last time (`history`), else the mean known duration of that hook.  With nothing
    known, the relative `defaults`; when some durations are known, the defaults are scaled to
    them, so that seconds and relative weights never mix."""
    weights = array("d", bytes(8 * flow.node_count))
    unknown: list[array] = [array("q") for _ in range(4)]
    mask = flow.mask
    nodes = flow.graph.nodes
    sums = [0.0] * 4
    counts = [0] * 4
    for r, op in enumerate(flow.operations):
        m = mask[r]
        if not m:
            continue
        estimate = getattr(op, "estimated_duration", None)
        past = history.get(nodes[r].key) if history else None
        for h in range(4):
            if not m >> h & 1:
                continue
            value = estimate(HOOKS[h]) if estimate is not None else None
            if value is None and past is not None:
                value = past.get(HOOKS[h])
            if value is None:
                unknown[h].append((r << 2) | h)
            else:
                weights[(r << 2) | h] = float(value)
                sums[h] += float(value)
                counts[h] += 1
    if not any(counts):
        fill = list(defaults)
    else:
        # Scale the defaults by how known durations compare with them, hook by hook where
        # that hook has any, else overall.
        scale = sum(sums) / sum(defaults[h] * counts[h] for h in range(4) if counts[h]) or 1.0
        fill = [sums[h] / counts[h] if counts[h] else defaults[h] * scale for h in range(4)]
    for h in range(4):
        value = fill[h]
        for node in unknown[h]:
            weights[node] = value
    return weights


def longest_remaining_path(flow: Flow, weights: array) -> array:
    """For every node, its weight plus the heaviest path to the end of the flow."""
    graph = flow.graph
    parents, children = graph.parents, graph.children
    order = resource_order(flow)
    lp = array("d", bytes(8 * flow.node_count))
    # complete and prepare_finish lead to the parents' ones: go parents first.
    for r in order:
        b = r << 2
        lp[b | COMPLETE] = weights[b | COMPLETE] + max(
            (lp[(p << 2) | COMPLETE] for p in parents[r]), default=0.0
        )
        lp[b | MAIN] = weights[b | MAIN] + lp[b | COMPLETE]
        lp[b | PF] = weights[b | PF] + max(
            lp[b | MAIN], max((lp[(p << 2) | PF] for p in parents[r]), default=0.0)
        )
    # prepare_begin leads to the children's prepare_begin: go children first.
    for r in reversed(order):
        b = r << 2
        lp[b | PB] = weights[b | PB] + max(
            lp[b | PF], max((lp[(c << 2) | PB] for c in children[r]), default=0.0)
        )
    return lp


class ReadyQueue:
    """Ready nodes; `pop` returns the one with the longest remaining path (ties: first in)."""

    __slots__ = ("_heap", "_lp", "_seq")

    def __init__(self, priorities: array):
        self._lp = priorities
        self._heap: list[tuple[float, int, int]] = []
        self._seq = 0

    def push(self, node: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (-self._lp[node], self._seq, node))

    def pop(self) -> int:
        return heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return len(self._heap)


class StackQueue(deque):
    """Ready nodes for the serial policy: last in, first out (depth first)."""

    push = deque.append


def simulate(flow: Flow, durations: array, workers: int, priorities: array | None = None) -> float:
    """Makespan of the engine's dispatch rule on a virtual clock: whenever a worker is free,
    start the ready task with the longest remaining path (by `priorities`, default: from the
    true durations).  Deterministic; used by the schedule-quality benchmark and tests."""
    if priorities is None:
        priorities = longest_remaining_path(flow, durations)
    counts = flow.indegrees()
    mask = flow.mask
    parents = flow.graph.parents
    ready = ReadyQueue(priorities)
    for r in range(len(flow.graph)):
        if not parents[r]:
            ready.push(r << 2)
    running: list[tuple[float, int]] = []
    now = 0.0

    def finish(node: int) -> None:
        for s in flow.successors(node):
            counts[s] -= 1
            if counts[s] == 0:
                ready.push(s)

    while ready or running:
        while ready and len(running) < workers:
            node = ready.pop()
            if not (mask[node >> 2] >> (node & 3)) & 1:
                finish(node)
                continue
            heapq.heappush(running, (now + durations[node], node))
        if not running:
            continue
        now, node = heapq.heappop(running)
        finish(node)
    return now


def lower_bound(flow: Flow, durations: array, workers: int) -> float:
    """No schedule beats max(critical path, total work / workers)."""
    lp = longest_remaining_path(flow, durations)
    critical = max(lp) if len(lp) else 0.0
    return max(critical, sum(durations) / workers)


__all__ = [
    "DEFAULT_WEIGHTS",
    "ReadyQueue",
    "StackQueue",
    "durations_from_records",
    "longest_remaining_path",
    "lower_bound",
    "node_weights",
    "simulate",
]
