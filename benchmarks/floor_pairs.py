"""First protect against the read floor, in pairs, and how busy the two cores are meanwhile.

The floor (`tar cf - -C DIR . | cat > /dev/null`, the better of two runs) changes from one
minute to the next on this machine kind (0.46-0.96 s on the same data set), so a ratio is
only meaningful against a floor measured right before: each pair is two floor runs, then
one first protect through the CLI on a fresh filesystem bank (AES-256-GCM, as
`benchmarks/datapath.py` runs it), on the same data set as datapath.py.

With `--sample`, one more first protect runs while its threads' CPU time is read from
/proc every 100 ms: the cores it keeps busy over time, and each thread's CPU seconds (by
rank; Python 3.11 does not name its threads to the kernel).  That shows the serial start
and finish and the parallel phase in between, and how far that phase is from two cores.

    .venv/bin/python benchmarks/floor_pairs.py                  # 5 pairs
    .venv/bin/python benchmarks/floor_pairs.py --pairs 3 --sample
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datapath import TUTELA, Tutela, add_data_options, read_tree, ready_data

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, int]:
    """CPU ticks (user+sys) of each live thread of `pid`."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = int(fields[11]) + int(fields[12])
    return out


def sampled_protect(tool: Tutela, interval: float = 0.1) -> tuple[float, list, Counter]:
    """Run one protect, sampling its threads; (wall, [(t, cores)], ticks per thread)."""
    cmd = [TUTELA, "protect", "-q", "--resource", f"Tutela::Directory={tool.data}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=tool.env, stdout=subprocess.DEVNULL)
    last: dict[str, int] = {}
    totals: Counter = Counter()
    timeline = []
    while proc.poll() is None:
        now = thread_cpu(proc.pid)
        used = sum(ticks - last.get(tid, 0) for tid, ticks in now.items())
        for tid, ticks in now.items():
            totals[tid] += ticks - last.get(tid, 0)
        last.update(now)
        timeline.append((time.perf_counter() - t0, used / TICK / interval))
        time.sleep(interval)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"protect exited {proc.returncode}")
    return wall, timeline, totals


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pairs", type=int, default=5, help="floor + first protect pairs (5)")
    add_data_options(ap)
    ap.add_argument("--sample", action="store_true", help="one more protect, cores sampled")
    args = ap.parse_args()
    data = ready_data(args)
    ratios = []
    with tempfile.TemporaryDirectory(prefix="tutela-pairs-", dir=data.parent) as tmp:
        log = open(Path(tmp) / "tools.log", "ab")  # noqa: SIM115 - closed with the folder
        for i in range(args.pairs):
            floor = min(read_tree(data)["wall"], read_tree(data)["wall"])
            tool = Tutela(Path(tmp) / f"pair{i}", data, log)
            tool.init()
            res = tool.protect("first")
            ratios.append(res["wall"] / floor)
            print(
                f"pair {i + 1}: floor {floor:.2f} s, first protect {res['wall']:.2f} s "
                f"(CPU {res['cpu']:.2f} s = {res['cpu'] / res['wall']:.2f} cores), "
                f"{ratios[-1]:.2f}x the floor",
                flush=True,
            )
        if ratios:
            print(
                f"ratio to the floor: min {min(ratios):.2f}x, "
                f"median {statistics.median(ratios):.2f}x, max {max(ratios):.2f}x"
            )
        if args.sample:
            tool = Tutela(Path(tmp) / "sampled", data, log)
            tool.init()
            wall, timeline, totals = sampled_protect(tool)
            cpu = sum(totals.values()) / TICK
            print(f"sampled protect: {wall:.2f} s wall, {cpu:.2f} CPU s ({cpu / wall:.2f} cores)")
            print(
                "  threads by CPU s: "
                + ", ".join(f"{t / TICK:.2f}" for _, t in totals.most_common())
            )
            for t, cores in timeline:
                print(f"  {t:5.2f} s  {cores:4.1f} cores  {'#' * round(cores * 20)}")
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
