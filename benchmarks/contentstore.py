"""Content-store throughput: chunk + hash + compress + encrypt + pack ~1 GiB into a filesystem
bank, beside the read floor (`tar cf - DIR | cat > /dev/null`).

The data set mirrors the reference one in shared/notes/benchmarking-here.md: ~20,000 files,
a third random, a third text, a third repeated blocks, ~10% duplicate files.  Each measured
step runs in a fresh child process so peak RSS and CPU seconds are its own.

    .venv/bin/python benchmarks/contentstore.py                 # 1 GiB, aes-256-gcm, 3 runs
    .venv/bin/python benchmarks/contentstore.py --size 256M --encryption none --runs 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from peak import peak_rss_bytes  # noqa: E402

from tutela.contentstore.chunker import parse_size  # noqa: E402
from tutela.contentstore.pack import DEFAULT_LEVEL  # noqa: E402

WORDS = (
    b"the of and to in is that for it as with was on be by this are or from at an which "
    b"have not but they his all were can has one more their will other been if when there "
    b"backup restore checkpoint bank resource plugin provider chunk pack index segment"
).split()


def generate(folder: Path, total: int, seed: int = 42) -> None:
    """Write the mixed data set (deterministic for a seed)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    block_pool = [rng.randbytes(64 << 10) for _ in range(32)]
    made: list[Path] = []
    written = 0
    n = 0
    third = total // 3
    for kind in ("random", "text", "repeated"):
        kind_written = 0
        while kind_written < third:
            sub = folder / kind / f"d{n // 500:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            path = sub / f"f{n:06d}"
            n += 1
            if made and rng.random() < 0.10:  # a duplicate of an earlier file
                src = rng.choice(made)
                shutil.copyfile(src, path)
                size = src.stat().st_size
            else:
                size = min(int(rng.lognormvariate(9.6, 1.6)), 32 << 20)
                if kind == "random":
                    data = rng.randbytes(size)
                elif kind == "text":
                    lines = []
                    length = 0
                    while length < size:
                        line = b" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) + b"\n"
                        lines.append(line)
                        length += len(line)
                    data = b"".join(lines)[:size]
                else:
                    data = b"".join(rng.choice(block_pool) for _ in range(size // (64 << 10) + 1))
                    data = data[:size]
                path.write_bytes(data)
                made.append(path)
            kind_written += size
            written += size
    print(f"generated {n} files, {written / 1e6:.0f} MB in {folder}", file=sys.stderr)


def files_of(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out.extend(Path(dirpath) / f for f in sorted(filenames))
    return out


def rusage_children() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def read_floor(folder: Path) -> tuple[float, float]:
    cpu0, _ = rusage_children()
    t0 = time.perf_counter()
    subprocess.run(f"tar cf - -C {folder} . | cat > /dev/null", shell=True, check=True)
    return time.perf_counter() - t0, rusage_children()[0] - cpu0


def child(args: argparse.Namespace) -> None:
    """One measured step, in its own process: protect (or restore) every file."""
    from tutela.bank import Bank
    from tutela.bank.filesystem import FilesystemBank
    from tutela.config import ProviderConfig
    from tutela.contentstore import ContentStore, FileRef, LocalFile

    cfg = ProviderConfig.from_dict(
        {
            "content_store": {
                "encryption": args.encryption,
                "compression_level": str(args.level),
                "cache_dir": str(Path(args.bank) / "cache"),
            }
        }
    )
    bank = Bank(FilesystemBank(root=Path(args.bank) / "bank"))
    paths = files_of(Path(args.data))
    if args.child == "write":
        sources = [(p, LocalFile(str(p), p.stat().st_size)) for p in paths]
    refs_path = Path(args.bank) / "refs.json"
    t0 = time.perf_counter()
    store = ContentStore.open(bank.get_section("content"), cfg, password="benchmark")
    moved = 0
    if args.child == "write":
        # As Tutela::Directory does: the tree listed first, then LocalFile sources, so that
        # small files are read on the store's threads.
        refs = {str(p): ref.to_json() for p, ref in store.write_many(sources)}
        store.flush()
        refs_path.write_text(json.dumps(refs))
    else:
        refs = json.loads(refs_path.read_text())
        for path in paths:
            for block in store.read(FileRef.from_json(refs[str(path)])):
                moved += len(block)
    store.close()
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    stats = store.stats.to_json()
    print(
        json.dumps(
            {
                "wall": wall,
                "cpu": ru.ru_utime + ru.ru_stime,
                "rss_mib": peak_rss_bytes() / 2**20,
                "stats": stats,
                "restored": moved,
            }
        )
    )


def run_child(step: str, args: argparse.Namespace, bank: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        step,
        "--data",
        str(args.data),
        "--bank",
        str(bank),
        "--encryption",
        args.encryption,
        "--level",
        str(args.level),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Wall and CPU seconds of a command (its own children included)."""
    cpu0, _ = rusage_children()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return {"wall": time.perf_counter() - t0, "cpu": rusage_children()[0] - cpu0}


def restic_run(data: Path, work: Path) -> dict[str, dict]:
    """The same steps with restic (Debian's package), for a side-by-side figure."""
    env = {
        **os.environ,
        "RESTIC_REPOSITORY": str(work / "repo"),
        "RESTIC_PASSWORD": "bench",
        "RESTIC_CACHE_DIR": str(work / "cache"),
    }
    subprocess.run(["restic", "init"], check=True, env=env, stdout=subprocess.DEVNULL)
    first = timed(["restic", "backup", "-q", str(data)], env)
    first["stored"] = du(work / "repo")
    again = timed(["restic", "backup", "-q", str(data)], env)
    restore = timed(["restic", "restore", "-q", "latest", "--target", str(work / "out")], env)
    return {"first": first, "again": again, "restore": restore}


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="data set size (default 1G)")
    parser.add_argument("--data", type=Path, help="data set folder (made if missing)")
    parser.add_argument("--work", type=Path, help="where the banks go (default: a temp dir)")
    parser.add_argument("--encryption", default="aes-256-gcm")
    parser.add_argument(
        "--level", type=int, default=DEFAULT_LEVEL, help=f"zstd level (default {DEFAULT_LEVEL})"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--restic", action="store_true", help="also run restic (if installed) in each round"
    )
    parser.add_argument("--child", choices=["write", "read"], help=argparse.SUPPRESS)
    parser.add_argument("--bank", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    size = parse_size(args.size)
    args.data = args.data or Path(tempfile.gettempdir()) / f"tutela-bench-data-{args.size}"
    if not args.data.exists():
        generate(args.data, size)
    total = sum(p.stat().st_size for p in files_of(args.data))
    nfiles = len(files_of(args.data))
    work = args.work or Path(tempfile.mkdtemp(prefix="tutela-bench-"))
    print(
        f"data: {nfiles} files, {total / 1e6:.0f} MB; encryption {args.encryption}, "
        f"zstd {args.level}; {os.cpu_count()} cpus"
    )
    read_floor(args.data)  # warm the page cache
    rows: dict[str, list[dict]] = {"floor": [], "first": [], "again": [], "restore": []}
    rrows: dict[str, list[dict]] = {"first": [], "again": [], "restore": []}
    use_restic = args.restic and shutil.which("restic") is not None
    for i in range(args.runs):
        wall, cpu = read_floor(args.data)
        rows["floor"].append({"wall": wall, "cpu": cpu})
        bank = work / f"run{i}"
        bank.mkdir(parents=True)
        first = run_child("write", args, bank)
        first["stored"] = du(bank / "bank")
        rows["first"].append(first)
        rows["again"].append(run_child("write", args, bank))
        rows["restore"].append(run_child("read", args, bank))
        assert rows["restore"][-1]["restored"] == total
        if use_restic:
            for step, result in restic_run(args.data, work / f"restic{i}").items():
                rrows[step].append(result)
    floor = statistics.median(r["wall"] for r in rows["floor"])

    def line(name: str, runs: list[dict]) -> None:
        walls = [r["wall"] for r in runs]
        cpus = [r["cpu"] for r in runs]
        rss = max(r.get("rss_mib", 0) for r in runs)
        med = statistics.median(walls)
        print(
            f"{name:<22} wall min {min(walls):6.2f} s  median {med:6.2f} s  "
            f"{total / med / 1e6:7.0f} MB/s  cpu median {statistics.median(cpus):6.2f} s  "
            f"peak rss {rss:5.0f} MiB  x floor {med / floor:5.1f}"
        )

    line("read floor (tar|cat)", rows["floor"])
    line("first write", rows["first"])
    line("unchanged re-write", rows["again"])
    line("restore (read all)", rows["restore"])
    if use_restic:
        line("restic first backup", rrows["first"])
        line("restic unchanged", rrows["again"])
        line("restic restore", rrows["restore"])
        print(f"restic stored {rrows['first'][0]['stored'] / 1e6:.0f} MB")
    s = rows["first"][0]["stats"]
    print(
        f"stored {rows['first'][0]['stored'] / 1e6:.0f} MB in the bank "
        f"(new raw {s['bytes_new'] / 1e6:.0f} MB, {s['chunks_new']} new chunks, "
        f"{s['chunks_deduplicated']} deduplicated, {s['packs_written']} packs)"
    )
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
