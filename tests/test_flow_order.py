"""Hook order on trees, diamonds and deep chains, checked against the six rules from the
start and end times the hooks themselves recorded; parallel mains; absent hooks."""

from __future__ import annotations

import itertools
import sys

import pytest

from recording import TYPE
from tutela import Resource
from tutela.graph import build_graph
from tutela.plugin import HOOKS

PB, PF, MAIN, COMPLETE = HOOKS


def rule_edges(graph: dict[str, list[str]], hooks: dict[str, set[str]]):
    """The six rules, written out independently of tutela.flow, over *virtual* hooks; then
    the required order between implemented hooks is reachability through absent ones."""
    nodes = set(graph) | {c for kids in graph.values() for c in kids}
    succ: dict[tuple[str, str], list[tuple[str, str]]] = {}

    def edge(a, b):
        succ.setdefault(a, []).append(b)

    for r in nodes:
        edge((r, PB), (r, PF))  # rule 2
        edge((r, PF), (r, MAIN))  # rule 4
        edge((r, MAIN), (r, COMPLETE))  # rule 5
        for c in graph.get(r, []):
            edge((r, PB), (c, PB))  # rule 1
            edge((c, PF), (r, PF))  # rule 3
            edge((c, COMPLETE), (r, COMPLETE))  # rule 6

    def real(n):
        return n[1] in hooks.get(n[0], set(HOOKS))

    required = []
    for start in [(r, h) for r in nodes for h in HOOKS]:
        if not real(start):
            continue
        seen = set()
        stack = list(succ.get(start, []))
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if real(n):
                required.append((start, n))
            else:
                stack.extend(succ.get(n, []))
    return required


def check_order(scenario, graph, op="protect"):
    times = {(c["id"], c["hook"]): (c["start"], c["end"]) for c in scenario.calls if c["op"] == op}
    required = rule_edges(graph, scenario.hooks)
    assert required, "the scenario must have ordering constraints"
    for a, b in required:
        assert a in times and b in times, f"{a} or {b} did not run"
        assert times[a][1] <= times[b][0], f"{b} started before {a} ended"
    return times


def protect(provider, roots, **kw):
    return provider.protect([Resource(TYPE, r) for r in roots], **kw)


TREE = {
    "root": ["a", "b", "c"],
    "a": ["a1", "a2"],
    "b": ["b1", "b2"],
    "c": ["c1", "c2"],
}


@pytest.mark.parametrize("executor", ["serial", "threads"])
def test_tree_order_follows_the_six_rules(scenario, make_provider, executor):
    scenario.reset(TREE)
    scenario.sleep[("*", MAIN)] = 0.002
    provider = make_provider(executor=executor)
    cp = protect(provider, ["root"])
    assert cp.status == "available"
    times = check_order(scenario, TREE)
    assert len(times) == 10 * 4  # every hook of every resource ran exactly once
    assert len(scenario.calls) == 40


def test_diamond_shared_child_is_one_node(scenario, make_provider):
    graph = {"top": ["left", "right"], "left": ["shared"], "right": ["shared"], "shared": ["leaf"]}
    scenario.reset(graph)
    provider = make_provider()
    cp = protect(provider, ["top"])
    assert cp.status == "available"
    assert len(cp.graph()) == 5
    shared_calls = [c for c in scenario.calls if c["id"] == "shared"]
    assert sorted(c["hook"] for c in shared_calls) == sorted(HOOKS)
    check_order(scenario, graph)


def test_stacked_diamonds_are_linear_not_exponential(scenario, make_provider):
    # 30 stacked diamonds: a re-descending walk (Karbor's) would visit 2**30 paths.
    graph: dict[str, list[str]] = {}
    for i in range(30):
        graph[f"d{i}"] = [f"l{i}", f"r{i}"]
        graph[f"l{i}"] = [f"d{i + 1}"]
        graph[f"r{i}"] = [f"d{i + 1}"]
    scenario.reset(graph)
    provider = make_provider(executor="serial")
    cp = protect(provider, ["d0"])
    assert len(cp.graph()) == 91
    check_order(scenario, graph)


def test_deep_chain_beyond_the_recursion_limit(scenario, make_provider):
    depth = sys.getrecursionlimit() * 3
    graph = {f"n{i}": [f"n{i + 1}"] for i in range(depth)}
    scenario.reset(graph)
    scenario.hooks = {f"n{i}": {MAIN} for i in range(depth + 1)}
    scenario.hooks["n0"] = set(HOOKS)
    provider = make_provider(executor="serial")
    cp = protect(provider, ["n0"])
    assert cp.status == "available"
    assert len(scenario.calls) == depth + 4


def test_build_graph_handles_a_chain_of_200k_without_recursion():
    n = 200_000
    graph = build_graph(
        [Resource("T", "0")], lambda r: [Resource("T", str(int(r.id) + 1))] if int(r.id) < n else []
    )
    assert len(graph) == n + 1


def test_absent_hooks_keep_ordering_through_them(scenario, make_provider):
    # Parent has only complete; children have only main: parent complete must wait for
    # the children's mains although the children have no complete hook.
    graph = {"p": ["c1", "c2"], "c1": ["g"], "c2": []}
    scenario.reset(graph)
    scenario.hooks = {"p": {COMPLETE, PB}, "c1": {MAIN}, "c2": {MAIN}, "g": {PF, MAIN}}
    scenario.sleep[("*", MAIN)] = 0.01
    provider = make_provider()
    cp = protect(provider, ["p"])
    assert cp.status == "available"
    times = check_order(scenario, graph)
    # Unimplemented hooks are no task at all.
    assert set(times) == {
        ("p", PB),
        ("p", COMPLETE),
        ("c1", MAIN),
        ("c2", MAIN),
        ("g", PF),
        ("g", MAIN),
    }
    assert times[("p", COMPLETE)][0] >= max(
        times[("c1", MAIN)][1], times[("c2", MAIN)][1], times[("g", MAIN)][1]
    )
    flow = provider.build_flow("protect", cp.graph())
    assert flow.task_count == 6


def test_main_hooks_run_in_parallel(scenario, make_provider):
    graph = {"p": ["a", "b", "c", "d"]}
    scenario.reset(graph)
    for x in "abcd":
        scenario.sleep[(x, MAIN)] = 0.3
    provider = make_provider(executor="threads", max_workers=5)
    protect(provider, ["p"])
    times = scenario.times()
    mains = [times[(x, MAIN)] for x in "abcd"]
    # All four overlap: the last to start started before the first to end ended.
    assert max(s for s, _ in mains) < min(e for _, e in mains)


def test_serial_executor_never_overlaps(scenario, make_provider):
    scenario.reset({"p": ["a", "b", "c"]})
    scenario.sleep[("*", MAIN)] = 0.02
    provider = make_provider(executor="serial")
    protect(provider, ["p"])
    spans = sorted((c["start"], c["end"]) for c in scenario.calls)
    for (_s1, e1), (s2, _) in itertools.pairwise(spans):
        assert e1 <= s2


def test_flow_export_shows_only_implemented_hooks(scenario, make_provider):
    scenario.reset({"p": ["c"]})
    scenario.hooks = {"p": {PB, PF}, "c": {MAIN}}
    provider = make_provider()
    flow = provider.build_flow("protect", provider.build_graph([Resource(TYPE, "p")]))
    data = flow.to_json()
    assert [(t["resource"]["id"], t["hook"]) for t in data["tasks"]] == [
        ("p", PB),
        ("c", MAIN),
        ("p", PF),
    ]
    # c main after p prepare_begin (through c's absent prepare hooks); p PF after p PB.
    names = {t["id"]: (t["resource"]["id"], t["hook"]) for t in data["tasks"]}
    edges = {(names[a], names[b]) for a, b in data["edges"]}
    assert (("p", PB), ("c", MAIN)) in edges
    assert (("p", PB), ("p", PF)) in edges
    dot = flow.to_dot()
    assert dot.startswith("digraph") and dot.count("->") == len(data["edges"])
