"""Schedule quality: makespan of the engine's dispatch rule against the lower bound
max(critical path, total work / workers), on a virtual clock.

Durations are simulated and seeded: prepare and complete hooks 1-20 ms, main hooks 50 ms-2 s.
Graphs are the forest of flow_overhead.py (each root 10 children, each child 3, every 7th
grandchild shared).  Four dispatch orders are compared:
  estimates  longest remaining path from the plugins' own estimates (`estimated_duration`)
  history    longest remaining path from the hook times of the last run, as the engine takes
             them from the previous checkpoint's records; each hook's time last run differs
             from this run's by up to +-30% (seeded), as data grows and shrinks between runs
  defaults   longest remaining path from the default per-hook weights (nothing known: a
             first run)
  fifo       arrival order, as a plain executor queue would run them

    python benchmarks/schedule_quality.py [--sizes 100 1000 10000] [--workers 4 8 32] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from array import array

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flow_overhead import NOOP, TYPE, make_forest

from tutela import Resource
from tutela.flow import Flow
from tutela.graph import build_graph
from tutela.plugin import HOOKS
from tutela.scheduler import longest_remaining_path, lower_bound, node_weights, simulate


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[4, 8, 32])
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(
        f"{'resources':>9} {'workers':>7} {'bound s':>9} {'estimates':>9} {'history':>8} {'defaults':>9} {'fifo':>7}  (makespan / bound)"
    )
    worst = {"estimates": 1.0, "history": 1.0, "defaults": 1.0, "fifo": 1.0}
    for n in args.sizes:
        roots, children = make_forest(n)
        graph = build_graph(
            [Resource(TYPE, r) for r in roots],
            lambda r, ch=children: [Resource(TYPE, c) for c in ch[r.id]],
        )
        flow = Flow("protect", graph, [NOOP] * len(graph), [{}] * len(graph))
        rng = random.Random(args.seed)
        durations = array("d", bytes(8 * flow.node_count))
        for node in range(flow.node_count):
            durations[node] = rng.uniform(0.05, 2.0) if node & 3 == 2 else rng.uniform(0.001, 0.02)
        by_estimates = longest_remaining_path(flow, durations)
        history: dict[str, dict[str, float]] = {}
        for r, res in enumerate(graph.nodes):
            history[res.key] = {
                HOOKS[h]: durations[(r << 2) | h] * rng.uniform(0.7, 1.3) for h in range(4)
            }
        by_history = longest_remaining_path(flow, node_weights(flow, history=history))
        by_defaults = longest_remaining_path(flow, node_weights(flow))
        fifo = array("d", bytes(8 * flow.node_count))
        for w in args.workers:
            t0 = time.perf_counter()
            bound = lower_bound(flow, durations, w)
            ratios = {
                name: simulate(flow, durations, w, prio) / bound
                for name, prio in (
                    ("estimates", by_estimates),
                    ("history", by_history),
                    ("defaults", by_defaults),
                    ("fifo", fifo),
                )
            }
            for k, v in ratios.items():
                worst[k] = max(worst[k], v)
            print(
                f"{len(graph):>9} {w:>7} {bound:>9.1f} {ratios['estimates']:>9.3f} {ratios['history']:>8.3f} {ratios['defaults']:>9.3f} "
                f"{ratios['fifo']:>7.3f}   ({time.perf_counter() - t0:.1f} s to simulate)",
                flush=True,
            )
    print("worst ratio: " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
