"""Dask overhead: the 1k-resource no-op forest of flow_overhead.py on a real local Dask cluster.

A scheduler and two workers are started as separate processes on 127.0.0.1 (as
tests/test_dask.py does: `dask scheduler`, `dask worker --no-nanny --name wN`,
DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0, PYTHONPATH with benchmarks/ so that the
workers import `flow_overhead`), then, side by side in each repetition:

  plain-dask   the same 4 no-op tasks per resource with the same dependencies, as one
               dict-of-tasks graph (`client.get`), keys `HOOK-RESOURCE` (Dask's name-suffix
               convention, so Dask groups them by hook)
  dask-submit  the same with `client.submit` and futures as dependencies
  dask-policy  Tutela's `dask` executor: a whole `protect` through the provider (filesystem
               bank, flow_overhead's NoopPlugin / ForestProtectable)
  threads      Tutela's `threads` executor (2 threads), for reference

Printed: tasks/s (of the whole call, and for Tutela also of the engine run alone, which
leaves out graph build, checkpoint records and the Dask connection), CPU seconds of this
process + scheduler + workers, and the ratio plain-dask / dask-policy in tasks/s (how many
times slower the policy is; target at most 1.5).  `--profile` adds where the policy's time
goes: batches and their sizes, pickled payload per batch, and on the workers the time per
batch spent outside the hooks (the payload is pickled once more on the client for that, so
run it apart from the timed comparison).  Every process started here is stopped at the end.

    .venv/bin/python benchmarks/dask_overhead.py                 # 1k resources, 3 repetitions
    .venv/bin/python benchmarks/dask_overhead.py --repeat 1 --profile   # where the time goes
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' real Dask cluster

from dask_cluster import Cluster  # noqa: E402

HOOK_NAMES = ("prepare_begin", "prepare_finish", "main", "complete")
METHODS = ("on_prepare_begin", "on_prepare_finish", "on_main", "on_complete")


def run_noop(hook: int, *deps) -> None:
    """One no-op hook, as plain Dask runs it (the same method Tutela's workers call)."""
    from flow_overhead import NOOP

    getattr(NOOP, METHODS[hook])(checkpoint=None, context=None, resource=None, parameters={})


# -- the cluster ----------------------------------------------------------------------------
class BenchCluster(Cluster):
    """The tests' cluster (tests/dask_cluster.py) with `workers` workers, and CPU accounting."""

    def __init__(self, root: Path, workers: int, nthreads: int):
        super().__init__(root, pythonpath=[HERE, HERE.parent / "src"], nthreads=nthreads)
        for i in range(1, workers + 1):
            self.start_worker(f"w{i}")

    def cpu(self) -> tuple[float, float, float]:
        """CPU seconds (user+sys) so far of this process, the scheduler, and the workers."""
        import psutil

        ru = resource.getrusage(resource.RUSAGE_SELF)
        out = [ru.ru_utime + ru.ru_stime, 0.0, 0.0]
        for i, p in enumerate([self.scheduler, *self.workers.values()]):
            t = psutil.Process(p.pid).cpu_times()
            out[1 if i == 0 else 2] += t.user + t.system
        return out[0], out[1], out[2]


# -- the forest -----------------------------------------------------------------------------
def forest_flow(n: int):
    import flow_overhead
    from flow_overhead import NOOP, TYPE, make_forest

    from tutela import Resource
    from tutela.flow import Flow
    from tutela.graph import build_graph

    roots, children = make_forest(n)
    flow_overhead.FOREST.clear()
    flow_overhead.FOREST.update(children)
    graph = build_graph(
        [Resource(TYPE, r) for r in roots],
        lambda res: [Resource(TYPE, c) for c in children[res.id]],
    )
    flow = Flow("protect", graph, [NOOP] * len(graph), [{}] * len(graph))
    return roots, flow


def dask_key(node: int, run: int) -> str:
    return f"{HOOK_NAMES[node & 3]}{run}-{node >> 2}"


def plain_graph(client, flow, run: int) -> int:
    import dask_overhead

    dsk = {}
    for node in range(flow.node_count):
        deps = [dask_key(p, run) for p in flow.predecessors(node)]
        dsk[dask_key(node, run)] = (dask_overhead.run_noop, node & 3, *deps)
    results = client.get(dsk, list(dsk))
    assert len(results) == flow.node_count
    return len(dsk)


def plain_submit(client, flow, run: int) -> int:
    import dask_overhead

    futures: dict[int, object] = {}
    order = flow_topological(flow)
    for node in order:
        deps = [futures[p] for p in flow.predecessors(node)]
        futures[node] = client.submit(
            dask_overhead.run_noop, node & 3, *deps, key=dask_key(node, run), pure=False
        )
    client.gather(list(futures.values()))
    return len(futures)


def flow_topological(flow) -> list[int]:
    counts = [len(flow.predecessors(n)) for n in range(flow.node_count)]
    ready = [n for n in range(flow.node_count) if counts[n] == 0]
    order = []
    while ready:
        node = ready.pop()
        order.append(node)
        for s in flow.successors(node):
            counts[s] -= 1
            if counts[s] == 0:
                ready.append(s)
    assert len(order) == flow.node_count
    return order


class Probe:
    """Benchmark-side instrumentation of the engine and the Dask dispatcher (no change to
    src/): engine run seconds, batches and their sizes, pickled payload per batch."""

    def __init__(self, payload: bool):
        from tutela import dask_executor, engine

        self.engine_s = 0.0
        self.batches: list[int] = []
        self.payload: list[int] = []
        probe = self
        run0 = engine.Engine.run
        submit0 = dask_executor.DaskDispatcher.submit

        def run(self):
            t0 = time.perf_counter()
            try:
                return run0(self)
            finally:
                probe.engine_s += time.perf_counter() - t0

        def submit(self, batch):
            probe.batches.append(len(batch))
            if payload:
                common = self.engine.describe_common()
                tasks = [self.engine.describe_task(n) for n in batch]
                sealed = dask_executor.Sealed({**common, "tasks": tasks})
                probe.payload.append(len(pickle.dumps(sealed)))
            return submit0(self, batch)

        engine.Engine.run = run
        dask_executor.DaskDispatcher.submit = submit

    def reset(self) -> None:
        self.engine_s = 0.0
        self.batches.clear()
        self.payload.clear()


def _worker_wrap(enable: bool, dask_worker=None):
    """On a worker: time each run_batch (whole) and its hooks, to split batch overhead."""
    import tutela.dask_executor as de

    orig = getattr(de, "_bench_orig", None) or de.run_batch
    de._bench_orig = orig
    if not enable:
        de.run_batch = orig
        return None
    stats = de._bench_stats = {"batches": 0, "batch_s": 0.0, "hooks_s": 0.0, "tasks": 0}

    def run_batch(sealed):
        t0 = time.perf_counter()
        out = orig(sealed)
        stats["batch_s"] += time.perf_counter() - t0
        stats["batches"] += 1
        stats["tasks"] += len(out)
        stats["hooks_s"] += sum(t1 - t0 for _, t0, t1, _, _ in out)
        return out

    run_batch.__module__ = orig.__module__
    run_batch.__qualname__ = orig.__qualname__
    de.run_batch = run_batch
    return None


def _worker_stats(dask_worker=None):
    import tutela.dask_executor as de

    return dict(getattr(de, "_bench_stats", {}))


def tutela_protect(executor: str, roots, address: str | None, bank: Path):
    from flow_overhead import TYPE

    from tutela import Provider, ProviderConfig, Resource
    from tutela.operations import Progress

    prov: dict = {
        "id": f"bench-{executor}",
        "bank": "filesystem",
        "plugin": "flow_overhead:NoopPlugin",
        "protectable": "flow_overhead:ForestProtectable",
        "executor": executor,
    }
    if executor == "dask":
        prov["scheduler_address"] = address
    else:
        prov["max_workers"] = 2
    provider = Provider.from_config(
        ProviderConfig.from_dict({"provider": prov, "filesystem_bank": {"root": str(bank)}})
    )
    cp = provider.protect([Resource(TYPE, r) for r in roots], progress=Progress())
    assert cp.status == "available", cp.status


# -- main -----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--resources", type=int, default=1000, help="forest size (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers (default 2)")
    ap.add_argument("--nthreads", type=int, default=1, help="threads per worker (default 1)")
    ap.add_argument(
        "--profile", action="store_true", help="also measure batches, payload, worker split"
    )
    ap.add_argument("--keep-logs", action="store_true", help="keep the cluster's logs")
    args = ap.parse_args()

    from distributed import Client

    roots, flow = forest_flow(args.resources)
    tasks = flow.task_count
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    import dask

    print(
        f"# {len(flow.graph)} resources, {tasks} tasks, {flow.graph.edge_count()} resource edges; "
        f"dask {dask.__version__}; {args.workers} workers x {args.nthreads} threads; "
        f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}"
    )
    root = Path(tempfile.mkdtemp(prefix="tutela-dask-bench-"))
    cluster = BenchCluster(root, args.workers, args.nthreads)
    probe = Probe(payload=args.profile)
    rows: dict[str, list[dict]] = {}
    worker_split: list[dict] = []
    loads = []
    try:
        client = Client(cluster.address, timeout=60, set_as_default=False)
        # Warm-up (imports on the workers, first connections), not measured.
        plain_graph(client, flow, 999)
        tutela_protect("dask", roots, cluster.address, root / "bank-warm")
        if args.profile:
            client.run(_worker_wrap, True)
        for rep in range(args.repeat):
            loads.append(os.getloadavg()[0])
            steps = ["plain-dask", "dask-submit", "dask-policy", "threads"]
            k = rep % len(steps)
            for step in steps[k:] + steps[:k]:
                probe.reset()
                if args.profile:
                    client.run(_worker_wrap, True)
                cpu0 = cluster.cpu()
                t0 = time.perf_counter()
                if step == "plain-dask":
                    n = plain_graph(client, flow, rep)
                elif step == "dask-submit":
                    n = plain_submit(client, flow, rep)
                else:
                    n = tasks
                    bank = root / f"bank-{step}-{rep}"
                    executor = "dask" if step == "dask-policy" else "threads"
                    tutela_protect(executor, roots, cluster.address, bank)
                wall = time.perf_counter() - t0
                split = [b - a for a, b in zip(cpu0, cluster.cpu(), strict=True)]
                cpu = sum(split)
                assert n == tasks
                row = {"wall": wall, "cpu": cpu, "split": split, "engine": probe.engine_s or None}
                if step == "dask-policy":
                    row["batches"] = list(probe.batches)
                    row["payload"] = list(probe.payload)
                    if args.profile:
                        worker_split.append(client.run(_worker_stats))
                rows.setdefault(step, []).append(row)
                print(
                    f"  rep {rep} {step:<12} {wall:6.2f} s wall  {cpu:6.2f} s cpu (client "
                    f"{split[0]:.2f}, scheduler {split[1]:.2f}, workers {split[2]:.2f})"
                    + (f"  engine {probe.engine_s:6.2f} s" if probe.engine_s else ""),
                    file=sys.stderr,
                    flush=True,
                )
        client.run(_worker_wrap, False)
        client.close()
    finally:
        cluster.stop()
        if not args.keep_logs:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    loads.append(os.getloadavg()[0])

    med = statistics.median
    print(
        f"# load average (1 min) at repetition starts/end: {', '.join(f'{x:.1f}' for x in loads)}"
    )
    print(
        f"{'':<12}{'tasks/s min':>12}{'median':>9}{'max':>9}{'wall med s':>11}{'cpu med s':>10}"
        f"{'cpu ms/task':>12}{'engine tasks/s med':>19}  cpu med s client/scheduler/workers"
    )
    rate = {}
    for step, rs in rows.items():
        rates = [tasks / r["wall"] for r in rs]
        rate[step] = med(rates)
        engine = [tasks / r["engine"] for r in rs if r["engine"]]
        cpu = med(r["cpu"] for r in rs)
        print(
            f"{step:<12}{min(rates):>12.0f}{med(rates):>9.0f}{max(rates):>9.0f}"
            f"{med(r['wall'] for r in rs):>11.2f}{cpu:>10.2f}{1000 * cpu / tasks:>12.2f}"
            + (f"{med(engine):>19.0f}" if engine else f"{'-':>19}")
            + "  "
            + "/".join(f"{med(r['split'][i] for r in rs):.2f}" for i in range(3))
        )
    ratio = rate["plain-dask"] / rate["dask-policy"]
    eng = med(tasks / r["engine"] for r in rows["dask-policy"])
    print(
        f"plain-dask / dask-policy (tasks/s): {ratio:.2f}x whole protect, "
        f"{rate['plain-dask'] / eng:.2f}x engine run only  (target <= 1.5x: "
        f"{'met' if ratio <= 1.5 else 'NOT met'})"
    )
    cpu_ratio = med(r["cpu"] for r in rows["dask-policy"]) / med(
        r["cpu"] for r in rows["plain-dask"]
    )
    print(f"cpu dask-policy / plain-dask: {cpu_ratio:.2f}x")
    print(f"threads / dask-policy (tasks/s): {rate['threads'] / rate['dask-policy']:.1f}x")
    b = rows["dask-policy"][-1]["batches"]
    print(
        f"dask-policy batches per protect: {len(b)} (tasks per batch: mean {tasks / len(b):.1f}, "
        f"max {max(b)}, single-task batches {sum(1 for x in b if x == 1)})"
    )
    payload = rows["dask-policy"][-1]["payload"]
    if payload:
        print(
            f"pickled payload per batch: median {med(payload) / 1024:.1f} KiB, total "
            f"{sum(payload) / 1e6:.2f} MB per protect"
        )
    if worker_split:
        per = {"batches": 0, "batch_s": 0.0, "hooks_s": 0.0, "tasks": 0}
        for split in worker_split:
            for st in split.values():
                for k in per:
                    per[k] += st.get(k, 0)
        n = len(worker_split)
        print(
            f"on the workers, per protect: {per['batches'] / n:.0f} batches, run_batch "
            f"{per['batch_s'] / n:.2f} s in all, of which hooks {per['hooks_s'] / n:.3f} s; "
            f"{1000 * (per['batch_s'] - per['hooks_s']) / max(1, per['batches']):.2f} ms "
            "per batch outside the hooks"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
