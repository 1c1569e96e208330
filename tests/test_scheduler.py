"""The scheduler's choices, on a virtual clock (deterministic; no timing in the test)."""

from __future__ import annotations

import random
from array import array

from recording import operation_class
from tutela import Resource
from tutela.flow import Flow
from tutela.graph import build_graph
from tutela.plugin import HOOKS
from tutela.scheduler import (
    DEFAULT_WEIGHTS,
    ReadyQueue,
    durations_from_records,
    longest_remaining_path,
    lower_bound,
    node_weights,
    simulate,
)

PB, PF, MAIN, COMPLETE = HOOKS


def make_flow(graph: dict[str, list[str]], roots: list[str], hooks: dict[str, set[str]]):
    g = build_graph(
        [Resource("T", r) for r in roots], lambda r: [Resource("T", c) for c in graph.get(r.id, [])]
    )
    ops = [operation_class(frozenset(hooks[r.id]))() for r in g.nodes]
    return Flow("protect", g, ops, [{}] * len(g)), g


def durations_for(flow: Flow, g, table: dict[tuple[str, str], float]) -> array:
    d = array("d", bytes(8 * flow.node_count))
    for (rid, hook), seconds in table.items():
        d[(g.index(Resource("T", rid)) << 2) | HOOKS.index(hook)] = seconds
    return d


def test_the_critical_task_starts_when_a_worker_frees_up():
    # P depends on K: K main (3) then P complete (2) is the critical path (5).
    # Q and R are independent mains of 4.  Two workers.
    graph = {"P": ["K"]}
    hooks = {"P": {COMPLETE}, "K": {MAIN}, "Q": {MAIN}, "R": {MAIN}}
    flow, g = make_flow(graph, ["Q", "R", "P"], hooks)
    d = durations_for(flow, g, {("K", MAIN): 3, ("P", COMPLETE): 2, ("Q", MAIN): 4, ("R", MAIN): 4})
    lp = longest_remaining_path(flow, d)
    k_main = (g.index(Resource("T", "K")) << 2) | 2
    q_main = (g.index(Resource("T", "Q")) << 2) | 2
    assert lp[k_main] == 5 and lp[q_main] == 4
    # With both free at t=0 the critical K starts first; at t=3 R (4 left) beats P (2).
    assert simulate(flow, d, workers=2) == 7
    # Arrival order (Q, R first) is what a FIFO pool would do: 2 time units worse.
    fifo = array("d", bytes(8 * flow.node_count))
    assert simulate(flow, d, workers=2, priorities=fifo) == 9


def test_ready_queue_pops_longest_remaining_path_first_then_fifo():
    q = ReadyQueue(array("d", [1.0, 5.0, 5.0, 2.0]))
    for node in (0, 1, 2, 3):
        q.push(node)
    assert [q.pop() for _ in range(4)] == [1, 2, 3, 0]


def test_makespan_near_the_bound_on_a_random_forest():
    rng = random.Random(7)
    graph: dict[str, list[str]] = {}
    roots = []
    for r in range(10):
        roots.append(f"r{r}")
        graph[f"r{r}"] = [f"r{r}c{i}" for i in range(10)]
        for i in range(10):
            graph[f"r{r}c{i}"] = [f"r{r}c{i}g{j}" for j in range(3)]
    hooks = {rid: set(HOOKS) for rid in graph} | {
        c: set(HOOKS) for kids in graph.values() for c in kids
    }
    flow, _g = make_flow(graph, roots, hooks)
    d = array("d", bytes(8 * flow.node_count))
    for node in range(flow.node_count):
        d[node] = rng.uniform(0.05, 2.0) if node & 3 == 2 else rng.uniform(0.001, 0.02)
    for workers in (4, 8, 32, 1000):
        ratio = simulate(flow, d, workers) / lower_bound(flow, d, workers)
        assert ratio >= 1.0 - 1e-9
        assert ratio <= 1.15, (workers, ratio)


def test_weights_prefer_estimates_then_history_then_the_known_mean():
    hooks = {"A": {MAIN}, "B": {MAIN}, "C": {MAIN, COMPLETE}}
    flow, g = make_flow({}, ["A", "B", "C"], hooks)

    class Estimating(type(flow.operations[0])):
        def estimated_duration(self, hook):
            return 9.0 if hook == MAIN else None

    flow.operations[g.index(Resource("T", "A"))] = Estimating()
    history = {"T#A": {MAIN: 1.0}, "T#B": {MAIN: 3.0}}
    w = node_weights(flow, history=history)

    def node(rid, hook):
        return (g.index(Resource("T", rid)) << 2) | HOOKS.index(hook)

    assert w[node("A", MAIN)] == 9.0  # the plugin's estimate beats last time's duration
    assert w[node("B", MAIN)] == 3.0  # last time's duration
    assert w[node("C", MAIN)] == 6.0  # unknown: the mean of the known main hooks
    # No complete hook is known: the default, scaled as the known mains compare with theirs.
    assert w[node("C", COMPLETE)] == DEFAULT_WEIGHTS[3] * 12.0 / (2 * DEFAULT_WEIGHTS[2])
    assert w[node("A", PB)] == 0.0  # not implemented: a pass-through weighs nothing
    # Nothing known at all: the relative defaults.
    plain = make_flow({}, ["A", "B", "C"], hooks)[0]
    assert node_weights(plain)[node("B", MAIN)] == DEFAULT_WEIGHTS[2]


def test_durations_from_records_skips_what_it_cannot_read():
    records = {
        "T#a": {"hooks": {MAIN: [10.0, 12.5], COMPLETE: [12.5, 12.75]}},
        "T#b": {"status": "error"},
        "T#c": {"hooks": {MAIN: "garbage", PB: [1, "x"]}},
    }
    assert durations_from_records(records) == {"T#a": {MAIN: 2.5, COMPLETE: 0.25}}


def test_the_next_protect_dispatches_what_took_longest_last_time_first(scenario, make_provider):
    # Two independent resources and one worker: the order of their main hooks is the
    # dispatcher's choice.  Each run makes the other one slow; the next run must start the
    # one that was slow first (both orders are seen, so arrival order cannot pass this).
    scenario.reset({"a": [], "b": []})
    provider = make_provider(executor="threads", max_workers=1)
    roots = [Resource("Test::Node", "a"), Resource("Test::Node", "b")]

    previous = None
    for slow in ("b", "a", "b"):
        scenario.calls.clear()
        scenario.sleep = {(slow, MAIN): 0.05}
        provider.protect(roots)
        order = [c["id"] for c in scenario.calls if c["hook"] == MAIN]
        if previous is not None:
            assert order == [previous, "a" if previous == "b" else "b"], order
        previous = slow


def test_engine_thread_runs_a_lone_cheap_task_and_never_beside_another():
    """On the threads policy, a lone cheap task with nothing else running or ready (a
    chain, its tail) runs on the engine's own thread instead of costing a hand-off; never
    while another task runs."""
    import threading
    import time

    from tutela.engine import Engine, ThreadsPolicy

    chain = {str(i): [str(i + 1)] for i in range(399)}
    wide = {"w": [f"w{i}" for i in range(200)]}
    everything = set(chain) | {"399"} | set(wide) | set(wide["w"])
    flow, _ = make_flow({**chain, **wide}, ["0", "w"], {r: set(HOOKS) for r in everything})
    ran: dict[int, tuple[float, float, bool]] = {}
    main = threading.current_thread()

    def run_task(node: int) -> None:
        t0 = time.perf_counter()
        ran[node] = (t0, time.perf_counter(), threading.current_thread() is main)

    result = Engine(flow, run_task, ThreadsPolicy(max_workers=2)).run()
    assert result.ok and result.completed == flow.task_count == len(ran)
    here = [n for n, (_, _, on_main) in ran.items() if on_main]
    assert len(here) > 100  # chain tasks with nothing beside them, once known cheap
    spans = sorted((t0, t1, n) for n, (t0, t1, _) in ran.items())
    for n in here:
        t0, t1, _ = ran[n]
        assert not [m for s0, s1, m in spans if m != n and s0 < t1 and s1 > t0]
