"""Flow overhead: build and run no-op flows of 1k, 10k and 100k resources.

The graph is a forest: each root has 10 children, each child 3 grandchildren, and every 7th
grandchild is also a dependent of a second parent (a diamond).  Every resource implements all
four hooks as no-ops, so the figures are pure orchestration cost.  Each size runs in its own
process so that peak memory (max RSS) is per size.

    python benchmarks/flow_overhead.py                 # 1k, 10k, 100k
    python benchmarks/flow_overhead.py --sizes 1000 --repeat 3
    python benchmarks/flow_overhead.py --provider      # also a whole `protect` on a fs bank
    python benchmarks/flow_overhead.py --compare taskflow --sizes 1000 10000
                                                       # the same flow in taskflow, and a bare
                                                       # graphlib loop, side by side (ratios)
    python benchmarks/flow_overhead.py --chain 1000000 # a chain one million deep

taskflow is a benchmark extra (`pip install -e .[bench]`), never a runtime dependency.  Stock
taskflow is quadratic in four places (about 2 minutes and 2.4 GB at 1k resources, hours at
10k): `graph_flow.link()` copies and re-checks the whole graph per edge, its compiler merges
child graphs one copy at a time, its in-memory store re-checks its folders by a linear search
on every state change, and its engine finds every atom in the hierarchy tree by a depth-first
search of the whole tree.  Here the flow gets every edge in one step, validated once, the
merge runs in one pass, the store checks its folders once per backend, and the tree lookup
uses a table built once; the compiled flow and the stored states are the same.  taskflow's
figures are its best case (10k: about 45 s and 415 MB; 100k: about 14 minutes and 3.8 GB).

Prints, per size: graph build, flow build, run time (serial and threads), tasks/s, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from peak import peak_rss_bytes

from tutela import Operation, Protectable, ProtectionPlugin, Resource
from tutela.engine import Engine, SerialPolicy, ThreadsPolicy
from tutela.flow import Flow
from tutela.graph import build_graph

TYPE = "Bench::Node"
FOREST: dict[str, list[str]] = {}


def make_forest(n: int) -> tuple[list[str], dict[str, list[str]]]:
    """Roots and child lists for about n resources."""
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    count = 0
    grand = 0
    all_children: list[str] = []
    r = 0
    while count < n:
        root = f"r{r}"
        roots.append(root)
        children[root] = []
        count += 1
        for i in range(10):
            child = f"r{r}c{i}"
            children[root].append(child)
            children[child] = []
            all_children.append(child)
            count += 1
            for j in range(3):
                g = f"r{r}c{i}g{j}"
                children[child].append(g)
                children[g] = []
                count += 1
                grand += 1
                if grand % 7 == 0 and len(all_children) > 1:
                    # A second parent: the previous child (another subtree when i == 0).
                    children[all_children[-2]].append(g)
        r += 1
    return roots, children


class Noop(Operation):
    def on_prepare_begin(self, checkpoint, context, resource, parameters, **kwargs):
        pass

    def on_prepare_finish(self, checkpoint, context, resource, parameters, **kwargs):
        pass

    def on_main(self, checkpoint, context, resource, parameters, **kwargs):
        pass

    def on_complete(self, checkpoint, context, resource, parameters, **kwargs):
        pass


NOOP = Noop()


class NoopPlugin(ProtectionPlugin):
    def get_supported_resources_types(self):
        return [TYPE]

    def get_protect_operation(self, resource):
        return NOOP

    def get_saved_info(self, metadata_store, resource):
        return None


class ForestProtectable(Protectable):
    def get_resource_type(self):
        return TYPE

    def get_parent_resource_types(self):
        return [TYPE]

    def get_dependent_resources(self, context, parent_resource):
        return [Resource(TYPE, c) for c in FOREST.get(parent_resource.id, ())]


def measure(n: int, repeat: int, with_provider: bool) -> dict:
    roots, children = make_forest(n)
    FOREST.clear()
    FOREST.update(children)
    out: dict = {"resources": len(children)}
    t0 = time.perf_counter()
    graph = build_graph(
        [Resource(TYPE, r) for r in roots],
        lambda res: [Resource(TYPE, c) for c in children[res.id]],
    )
    out["graph_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    flow = Flow("protect", graph, [NOOP] * len(graph), [{}] * len(graph))
    flow.indegrees()
    _ = graph.parents
    out["flow_build_s"] = time.perf_counter() - t0
    out["tasks"] = flow.task_count
    out["edges"] = graph.edge_count()

    def run_task(node: int) -> None:
        op = flow.operations[node >> 2]
        getattr(op, ("on_prepare_begin", "on_prepare_finish", "on_main", "on_complete")[node & 3])(
            checkpoint=None, context=None, resource=flow.graph.nodes[node >> 2], parameters={}
        )

    for name, policy in (("serial", SerialPolicy()), ("threads", ThreadsPolicy(2))):
        best = None
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = Engine(flow, run_task, policy).run()
            dt = time.perf_counter() - t0
            assert result.ok and result.completed == flow.task_count
            best = dt if best is None else min(best, dt)
        out[f"run_{name}_s"] = best
        out[f"tasks_per_s_{name}"] = flow.task_count / best
    if with_provider:
        from tutela import Provider, ProviderConfig
        from tutela.operations import Progress

        with tempfile.TemporaryDirectory() as tmp:
            provider = Provider.from_config(
                ProviderConfig.from_dict(
                    {
                        "provider": {
                            "id": "bench",
                            "bank": "filesystem",
                            "plugin": "flow_overhead:NoopPlugin",
                            "protectable": "flow_overhead:ForestProtectable",
                            "executor": "threads",
                            "max_workers": 2,
                        },
                        "filesystem_bank": {"root": tmp, "fsync": "true"},
                    }
                )
            )
            import flow_overhead

            flow_overhead.FOREST.update(children)
            t0 = time.perf_counter()
            cp = provider.protect([Resource(TYPE, r) for r in roots], progress=Progress())
            out["protect_s"] = time.perf_counter() - t0
            assert cp.status == "available"
            out["protect_tasks_per_s"] = flow.task_count / out["protect_s"]
    out["peak_rss_mb"] = peak_rss_bytes() / 2**20
    return out


def measure_taskflow(n: int) -> dict:
    """The same forest, four no-op tasks per resource, the six rules as explicit links."""
    from taskflow import engines, task
    from taskflow import flow as tf_flow
    from taskflow.patterns import graph_flow
    from taskflow.types import graph as tf_graph

    def merge_graphs_linear(graph, *graphs, **kwargs):
        """taskflow's merge_graphs composes one child graph at a time, copying the whole
        graph each time (quadratic); this merges them all in one pass (same result)."""
        if not graphs:
            return graph
        merged = tf_graph.DiGraph(graph)
        for g in graphs:
            merged.add_nodes_from(g.nodes(data=True))
            merged.add_edges_from(g.edges(data=True))
        merged.name = graph.name
        return merged

    tf_graph.merge_graphs = merge_graphs_linear

    # Its in-memory persistence opens a connection per state change, and each connection
    # re-checks its three folders with a linear search of everything stored so far
    # (quadratic again); checking them once per backend gives the same store.
    from taskflow.persistence import path_based

    upgraded: set[int] = set()
    original_upgrade = path_based.PathBasedConnection.upgrade

    def upgrade_once(self):
        if id(self._backend) not in upgraded:
            upgraded.add(id(self._backend))
            original_upgrade(self)

    path_based.PathBasedConnection.upgrade = upgrade_once

    # The engine compiles each atom with a ScopeWalker that finds the atom in the flow's
    # hierarchy tree by a depth-first search of the whole tree (quadratic again); every atom
    # appears once in that tree, so a lookup table built once per tree finds the same node.
    from taskflow.types import tree as tf_tree

    original_find = tf_tree.Node.find
    tables: dict[int, tuple[object, dict]] = {}

    def find_indexed(self, item, only_direct=False, include_self=True):
        if only_direct or not include_self:
            return original_find(self, item, only_direct, include_self)
        cached = tables.get(id(self))
        if cached is None or cached[0] is not self:
            table: dict = {}
            for node in self.dfs_iter(include_self=True):
                table.setdefault(node.item, node)
            cached = tables[id(self)] = (self, table)
        return cached[1].get(item)

    tf_tree.Node.find = find_indexed

    class NoopTask(task.Task):
        def execute(self):
            pass

    roots, children = make_forest(n)
    out: dict = {"resources": len(children)}
    t0 = time.perf_counter()
    graph = build_graph(
        [Resource(TYPE, r) for r in roots],
        lambda res: [Resource(TYPE, c) for c in children[res.id]],
    )
    flow = Flow("protect", graph, [NOOP] * len(graph), [{}] * len(graph))
    tasks = [NoopTask(name=f"n{node}") for node in range(flow.node_count)]
    gf = graph_flow.Flow("bench")
    g = tf_graph.DiGraph(gf._graph)
    g.add_nodes_from(tasks)
    for node in range(flow.node_count):
        for succ in flow.successors(node):
            g.add_edge(tasks[node], tasks[succ], **{tf_flow.LINK_MANUAL: True})
    gf._swap(g)
    out["flow_build_s"] = time.perf_counter() - t0
    out["tasks"] = len(tasks)
    for name, kind in (("serial", "serial"), ("parallel", "parallel")):
        t0 = time.perf_counter()
        engine = (
            engines.load(gf, engine=kind, max_workers=2) if kind == "parallel" else engines.load(gf)
        )
        engine.compile()
        engine.prepare()
        out[f"compile_{name}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine.run()
        out[f"run_{name}_s"] = time.perf_counter() - t0
        out[f"tasks_per_s_{name}"] = len(tasks) / (out[f"run_{name}_s"] + out[f"compile_{name}_s"])
    out["peak_rss_mb"] = peak_rss_bytes() / 2**20
    return out


def measure_chain(n: int) -> dict:
    """A chain n resources deep (each the only dependent of the one before): no recursion
    anywhere on the path, so it must build and run at any depth."""
    out: dict = {"depth": n}
    t0 = time.perf_counter()
    graph = build_graph(
        [Resource(TYPE, "0")],
        lambda r: [Resource(TYPE, str(int(r.id) + 1))] if int(r.id) < n - 1 else [],
    )
    flow = Flow("protect", graph, [NOOP] * len(graph), [{}] * len(graph))
    out["build_s"] = time.perf_counter() - t0
    out["tasks"] = flow.task_count
    for name, policy in (("serial", SerialPolicy()), ("threads", ThreadsPolicy(max_workers=2))):
        t0 = time.perf_counter()
        result = Engine(flow, lambda node: None, policy).run()
        assert result.ok and result.completed == flow.task_count, result
        out[f"run_{name}_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = peak_rss_bytes() / 2**20
    return out


def measure_graphlib(n: int) -> dict:
    """A bare graphlib.TopologicalSorter loop over the same tasks: the floor for an engine."""
    import concurrent.futures as cf
    import graphlib

    roots, children = make_forest(n)
    graph = build_graph(
        [Resource(TYPE, r) for r in roots],
        lambda res: [Resource(TYPE, c) for c in children[res.id]],
    )
    flow = Flow("protect", graph, [NOOP] * len(graph), [{}] * len(graph))
    names = ("on_prepare_begin", "on_prepare_finish", "on_main", "on_complete")

    def run(node: int) -> None:
        getattr(NOOP, names[node & 3])(checkpoint=None, context=None, resource=None, parameters={})

    out: dict = {}
    for mode in ("serial", "pool2"):
        ts: graphlib.TopologicalSorter = graphlib.TopologicalSorter()
        for node in range(flow.node_count):
            ts.add(node, *flow.predecessors(node))
        ts.prepare()
        t0 = time.perf_counter()
        if mode == "serial":
            while ts.is_active():
                for node in ts.get_ready():
                    run(node)
                    ts.done(node)
        else:
            with cf.ThreadPoolExecutor(2) as ex:
                pending: set = set()
                while ts.is_active():
                    for node in ts.get_ready():
                        fut = ex.submit(run, node)
                        fut.node = node  # type: ignore[attr-defined]
                        pending.add(fut)
                    finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in finished:
                        ts.done(fut.node)  # type: ignore[attr-defined]
        out[f"tasks_per_s_{mode}"] = flow.node_count / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--provider", action="store_true", help="also time a whole protect")
    ap.add_argument("--compare", choices=["taskflow"], help="also run the same flow in taskflow")
    ap.add_argument("--chain", type=int, help="instead: build and run a chain this deep")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--what", default="tutela", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.chain:
        print(json.dumps(measure_chain(args.chain)))
        return
    if args.one:
        if args.what == "taskflow":
            print(json.dumps(measure_taskflow(args.one)))
        elif args.what == "graphlib":
            print(json.dumps(measure_graphlib(args.one)))
        else:
            print(json.dumps(measure(args.one, args.repeat, args.provider)))
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    header = (
        f"{'resources':>9} {'tasks':>7} {'graph s':>8} {'flow s':>7} {'serial s':>8} "
        f"{'tasks/s':>9} {'threads s':>9} {'tasks/s':>9} {'peak MB':>8}"
    )
    if args.provider:
        header += f" {'protect s':>9} {'tasks/s':>8}"
    print(header)
    results: dict = {}
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--repeat", str(args.repeat)]
        if args.provider:
            cmd.append("--provider")
        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        line = (
            f"{res['resources']:>9} {res['tasks']:>7} {res['graph_build_s']:>8.3f} {res['flow_build_s']:>7.3f} "
            f"{res['run_serial_s']:>8.3f} {res['tasks_per_s_serial']:>9.0f} {res['run_threads_s']:>9.3f} "
            f"{res['tasks_per_s_threads']:>9.0f} {res['peak_rss_mb']:>8.0f}"
        )
        if args.provider:
            line += f" {res['protect_s']:>9.3f} {res['protect_tasks_per_s']:>8.0f}"
        print(line, flush=True)
        if args.compare:
            results[n] = res
    if args.compare:
        compare(args, results)


def _child(what: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--one", str(n), "--what", what]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def compare(args, results: dict) -> None:
    print(
        "\ntaskflow (graph flow, explicit links; serial and parallel engines, 2 workers) and bare graphlib:"
    )
    print(
        f"{'resources':>9} {'tf build s':>10} {'tf serial s':>11} {'tf par s':>9} {'tf tasks/s':>10} "
        f"{'tf MB':>6} {'glib ser/s':>10} {'glib pool/s':>11} | {'threads/tf':>10} {'protect/tf':>10} "
        f"{'threads/glib':>12}"
    )
    for n, res in results.items():
        tf = _child("taskflow", n)
        gl = _child("graphlib", n)
        tf_rate = max(tf["tasks_per_s_serial"], tf["tasks_per_s_parallel"])
        tf_total_serial = tf["compile_serial_s"] + tf["run_serial_s"]
        tf_total_par = tf["compile_parallel_s"] + tf["run_parallel_s"]
        # Tutela's end to end: graph + flow build + threaded run (or a whole protect).
        tutela_rate = res["tasks"] / (
            res["graph_build_s"] + res["flow_build_s"] + res["run_threads_s"]
        )
        line = (
            f"{res['resources']:>9} {tf['flow_build_s']:>10.2f} {tf_total_serial:>11.2f} {tf_total_par:>9.2f} "
            f"{tf_rate:>10.0f} {tf['peak_rss_mb']:>6.0f} {gl['tasks_per_s_serial']:>10.0f} "
            f"{gl['tasks_per_s_pool2']:>11.0f} | {tutela_rate / tf_rate:>9.1f}x "
        )
        line += (
            f"{res['protect_tasks_per_s'] / tf_rate:>9.1f}x "
            if "protect_tasks_per_s" in res
            else f"{'-':>10} "
        )
        line += f"{res['tasks_per_s_threads'] / gl['tasks_per_s_pool2']:>11.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
