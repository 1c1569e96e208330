"""Where a first protect's CPU and wall time go, stage by stage, and how busy the disk is.

One first protect of the datapath data set (the same provider as `benchmarks/datapath.py`:
filesystem bank, AES-256-GCM), run in this process through the CLI's `main()` (so without
the interpreter's start and the imports, which are timed apart), with the
content store's and the directory plugin's stage functions wrapped to add up the CPU time
(user + system, of the thread that runs them) spent inside them:

- read + cut: reading large files and cutting them into chunks (FastCDC), on the walking
  thread;
- chunks prepared: BLAKE3 chunk ids, zstd and AES-GCM of the chunks of large files (workers);
- small files prepared: open, read, BLAKE3, zstd, AES-GCM of whole small files (in C when
  built; workers, or the walking thread when it catches up);
- commit: adding prepared chunks to the open pack and making each file's reference;
- seal: the pack's header made, encrypted and hashed (its name), on the uploaders;
- bank write: the pack's write and fsync (the filesystem bank: O_DIRECT), on the uploaders;
- tree listing: `_walk` itself (lstat of every entry);
- the rest: the Python around all of these (entries, manifest, flow, checkpoint records).

Then the bounds: CPU / 2 cores (the least the CPU work can take here) and bytes written /
the disk's measured rate (the least the writes can take), against the wall time, and the
disk's busy time (`io_ticks` of /proc/diskstats) during the protect.

    .venv/bin/python benchmarks/profile_protect.py            # 1 run
    .venv/bin/python benchmarks/profile_protect.py --runs 3   # the best and the worst

Stage CPU adds up over threads, so stages that ran side by side can add up to more than
the wall time.  The wrappers cost about 1 µs per call (a few thousand calls).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datapath import Tutela, add_data_options, read_tree, ready_data

#: stage -> [CPU s, calls]; one lock: the wrapped calls are coarse (a batch, a pack, a file)
_totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
_lock = threading.Lock()
#: with --timeline: (stage, wall start, wall end) of every wrapped call
_spans: list[tuple[str, float, float]] | None = None


def _add(stage: str, cpu: float, start: float = 0.0) -> None:
    with _lock:
        entry = _totals[stage]
        entry[0] += cpu
        entry[1] += 1
        if _spans is not None:
            _spans.append((stage, start, time.perf_counter()))


def timed(stage: str, fn):
    """`fn`, adding the calling thread's CPU time inside it to `stage`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0, w0 = time.thread_time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(stage, time.thread_time() - t0, w0)

    return wrapper


def timed_generator(stage: str, fn):
    """A generator function `fn`, adding the CPU time of each step (not the consumer's) to
    `stage`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        it = fn(*args, **kwargs)
        while True:
            t0, w0 = time.thread_time(), time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                _add(stage, time.thread_time() - t0, w0)
                return
            _add(stage, time.thread_time() - t0, w0)
            yield item

    return wrapper


def instrument() -> None:
    """Wrap the stage functions (once per process)."""
    from tutela.bank import filesystem
    from tutela.contentstore import chunker, pack, store
    from tutela.plugins import directory

    cs = store.ContentStore
    chunker.Chunker.chunks = timed_generator("read + cut (large files)", chunker.Chunker.chunks)
    cs._prepare_many = timed("chunks prepared (hash, zstd, AES)", cs._prepare_many)
    cs._prepare_files = timed("small files prepared (read, hash, zstd, AES)", cs._prepare_files)
    cs._commit = timed("commit (chunks)", cs._commit)
    cs._commit_files = timed("commit (small files)", cs._commit_files)
    pack.PackBuilder.seal = timed("seal (header, name)", pack.PackBuilder.seal)
    update = filesystem.FilesystemBank.update_object_parts

    def update_object_parts(self, key, parts):  # packs only: the rest is in "the rest"
        t0, w0 = time.thread_time(), time.perf_counter()
        try:
            return update(self, key, parts)
        finally:
            _add("bank write (O_DIRECT, fsync)", time.thread_time() - t0, w0)

    filesystem.FilesystemBank.update_object_parts = update_object_parts
    directory._walk = timed_generator("tree listing (lstat)", directory._walk)


def disk_of(path: Path) -> str | None:
    """The /proc/diskstats name of the block device holding `path` (its whole disk)."""
    dev = os.stat(path).st_dev
    link = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not link.exists():
        return None
    real = link.resolve()
    if (real / "partition").exists():
        real = real.parent
    return real.name


def diskstats(name: str | None) -> tuple[int, int]:
    """(sectors written, ms busy) of disk `name`, or zeros."""
    if name is None:
        return 0, 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2] == name:
            return int(fields[9]), int(fields[12])
    return 0, 0


def disk_rate(folder: Path, size: int = 256 << 20) -> float:
    """Bytes per second of one O_DIRECT write of `size` bytes in 16 MiB blocks, fsynced
    (the filesystem bank's way of writing packs)."""
    import mmap

    block = mmap.mmap(-1, 16 << 20)
    block.write(os.urandom(16 << 20))
    path = folder / "disk-rate.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0))
    try:
        t0 = time.perf_counter()
        for _ in range(size // len(block)):
            os.write(fd, block)
        os.fsync(fd)
        return size / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()


class CpuSampler(threading.Thread):
    """This process's CPU seconds every `step` seconds (from /proc/self/stat), for the
    timeline."""

    def __init__(self, step: float):
        super().__init__(daemon=True)
        self.step, self.samples = step, [(time.perf_counter(), self.cpu())]
        self.done = threading.Event()

    @staticmethod
    def cpu() -> float:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.done.wait(self.step):
            self.samples.append((time.perf_counter(), self.cpu()))


def one_protect(tool: Tutela, timeline: float = 0.0) -> dict:
    """Run one first protect in this process; its wall, CPU and stage totals (and, with
    `timeline`, the stages' spans and the CPU sampled every `timeline` seconds)."""
    global _spans
    from tutela.cli import main

    _totals.clear()
    _spans = [] if timeline else None
    sampler = CpuSampler(timeline) if timeline else None
    env_before = dict(os.environ)
    os.environ.update({k: v for k, v in tool.env.items() if k.startswith("TUTELA_")})
    disk = disk_of(tool.repo.parent)
    os.sync()
    sectors0, busy0 = diskstats(disk)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if sampler:
        sampler.start()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["protect", "-q", "--resource", f"Tutela::Directory={tool.data}"])
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    wall = time.perf_counter() - t0
    if sampler:
        sampler.done.set()
        sampler.join()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    sectors1, busy1 = diskstats(disk)
    if code != 0:
        raise RuntimeError(f"protect exited {code}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {
        "wall": wall,
        "cpu": cpu,
        "written": (sectors1 - sectors0) * 512,
        "busy": (busy1 - busy0) / 1000,
        "stages": {k: tuple(v) for k, v in _totals.items()},
        "stored": sum(p.stat().st_size for p in tool.repo.rglob("*") if p.is_file()),
        "start": t0,
        "spans": _spans,
        "cpu_samples": sampler.samples if sampler else None,
    }


def print_timeline(res: dict, step: float) -> None:
    """Per `step` of wall time: the cores the process used, and how many threads were
    inside each stage (wall-time occupancy: a stage that waits, for the queue or the disk,
    counts while it waits)."""
    t0, samples, spans = res["start"], res["cpu_samples"], res["spans"]
    stages = sorted({s for s, _, _ in spans}, key=lambda st: -res["stages"][st][0])
    short = {st: chr(ord("A") + i) for i, st in enumerate(stages)}
    print(
        "  timeline: cores used, then threads inside each stage ("
        + ", ".join(f"{short[st]} = {st.split(' (')[0]}" for st in stages)
        + ")"
    )
    for (a, ca), (b, cb) in itertools.pairwise(samples):
        occ = dict.fromkeys(stages, 0.0)
        for st, s0, s1 in spans:
            overlap = min(b, s1) - max(a, s0)
            if overlap > 0:
                occ[st] += overlap / (b - a)
        busy = " ".join(f"{short[st]}{v:.1f}" for st, v in occ.items() if v >= 0.05)
        print(f"  {a - t0:6.2f} s  {(cb - ca) / (b - a):4.1f} cores  {busy}")


def report(res: dict, floor: float, rate: float) -> None:
    wall, cpu = res["wall"], res["cpu"]
    print(
        f"first protect: {wall:.2f} s wall, {cpu:.2f} CPU s ({cpu / wall:.2f} cores); "
        f"floor {floor:.2f} s ({wall / floor:.2f}x)"
    )
    print(f"  {'stage':<46} {'CPU s':>6} {'share':>6} {'calls':>7}")
    staged = 0.0
    for stage, (secs, calls) in sorted(res["stages"].items(), key=lambda kv: -kv[1][0]):
        staged += secs
        print(f"  {stage:<46} {secs:6.2f} {secs / cpu:6.1%} {int(calls):7d}")
    rest = cpu - staged
    print(f"  {'the rest (Python around them, start, finish)':<46} {rest:6.2f} {rest / cpu:6.1%}")
    cpu_bound = cpu / (os.cpu_count() or 1)
    disk_bound = res["stored"] / rate
    print(
        f"  bounds: CPU / {os.cpu_count()} cores = {cpu_bound:.2f} s; "
        f"{res['stored'] / 1e6:.0f} MB stored / {rate / 1e6:.0f} MB/s = {disk_bound:.2f} s; "
        f"3x the floor = {3 * floor:.2f} s"
    )
    if res["busy"]:
        print(
            f"  disk: {res['written'] / 1e6:.0f} MB written, busy {res['busy']:.2f} s "
            f"({res['busy'] / wall:.0%} of the protect)"
        )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=1, help="first protects (1)")
    ap.add_argument(
        "--timeline",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also print, per SECONDS of the protect, the cores used and the stages running",
    )
    add_data_options(ap)
    args = ap.parse_args()
    data = ready_data(args)
    start = []
    for _ in range(3):  # the CLI's start, which the in-process protects below skip
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import tutela.cli"], check=True)
        start.append(time.perf_counter() - t0)
    print(f"# a new interpreter importing tutela.cli: {min(start):.2f} s (not in the figures)")
    instrument()
    from tutela import cli

    cli._tune_gc()  # as the `tutela` program does for itself (main() given argv does not)
    with tempfile.TemporaryDirectory(prefix="tutela-profile-", dir=data.parent) as tmp:
        rate = disk_rate(Path(tmp))
        print(f"# disk: {rate / 1e6:.0f} MB/s (O_DIRECT, 16 MiB blocks, fsync)")
        log = open(Path(tmp) / "tools.log", "ab")  # noqa: SIM115 - closed with the folder
        for i in range(args.runs):
            floor = min(read_tree(data)["wall"], read_tree(data)["wall"])
            tool = Tutela(Path(tmp) / f"run{i}", data, log)
            tool.init()
            res = one_protect(tool, args.timeline)
            report(res, floor, rate)
            if args.timeline:
                print_timeline(res, args.timeline)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
