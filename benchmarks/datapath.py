"""Data path against restic and borg: Tutela::Directory on the content store, side by side.

One generated data set of about 1 GiB on the local disk (~20,000 small files of 1-64 KiB in
nested folders, ~30 files of 1-16 MiB, 4 large files; a third random bytes, a third text, a
third repeated 64 KiB blocks; ~10% of the small files duplicates of others; one large file a
near-copy of another: 3 small edits).  Every tool runs with encryption on: Tutela through its
CLI (filesystem bank, `[content_store] encryption = aes-256-gcm`, TUTELA_PASSWORD), restic
(`restic init`, RESTIC_PASSWORD), borg (`borg init -e repokey`, BORG_PASSPHRASE) with lz4 and
with zstd,3.  Steps, per round, each tool in turn (the order rotates per round):

  first      first protect (the data set is read once with tar|cat just before: warm cache)
  unchanged  unchanged re-protect
  changed    re-protect after 4 KiB of one file changed and one 1 MiB file was added
  restore    full restore of the last snapshot into a fresh folder (the repository is read
             with tar|cat first, so every tool restores from RAM: borg drops its repository
             from the page cache itself, restic and Tutela do not)

Nothing is deleted between steps (ext4 here is slow to create files for minutes after many
were deleted); the run starts with `sync; sleep --settle`, and every timed step starts after a
`sync`, so that no step pays for the writeback the step before it left to the kernel (a
first protect run right after another tool's took 4.1-4.5 s instead of 2.7 s without it).  Every step runs in its own process
and its wall seconds, CPU seconds (user+sys of it and its children, from wait4) and max RSS are
its own.  The floor is `tar cf - DIR | cat > /dev/null` measured in the same round.  Every
figure is printed with its ratio to restic, to borg (lz4) and to the floor.

    .venv/bin/python benchmarks/datapath.py                        # 1 GiB, 2 rounds, all tools
    .venv/bin/python benchmarks/datapath.py --rounds 3 --tools tutela,restic,borg-lz4
    .venv/bin/python benchmarks/datapath.py --size 128M --rounds 1 --settle 0   # a quick try

restic and borg come from Debian's packages (`apt-get install -y restic borgbackup`); a tool
that is not installed is reported and left out.  The data set is kept (default
/tmp/tutela-bench-datapath-1G, made if missing; the work folder is removed at the end unless
--keep or --work is given: that deletes ~80,000 restored files per round, after which file
creation on this ext4 is slow for minutes, for every job on the machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUTELA = str(Path(sys.executable).parent / "tutela")


def compile_tutela() -> None:
    """Byte-compile Tutela's modules, as installing a wheel does.  An editable install run
    with PYTHONDONTWRITEBYTECODE set (as on this machine kind) compiles every module at each
    start instead: about 0.08 s per command that no installed Tutela spends."""
    import compileall

    import tutela

    compileall.compile_dir(Path(tutela.__file__).parent, quiet=1)


TOOLS = ("tutela", "restic", "borg-lz4", "borg-zstd")
STEPS = ("first", "unchanged", "changed", "restore")
KINDS = ("random", "text", "repeated")
WORDS = (
    b"the of and to in is that for it as with was on be by this are or from at an which "
    b"have not but they his all were can has one more their will other been if when there "
    b"backup restore checkpoint bank resource plugin provider chunk pack index segment"
).split()
SPEC = "datapath-v1"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


# -- the data set ---------------------------------------------------------------------------
def _content(rng: random.Random, kind: str, size: int, pool: list[bytes]) -> bytes:
    if kind == "random":
        return rng.randbytes(size)
    if kind == "text":
        words = rng.choices(WORDS, k=size // 5 + 16)
        return b" ".join(words).replace(b" the ", b"\nthe ")[:size]
    blocks = [rng.choice(pool) for _ in range(size // len(pool[0]) + 1)]
    return b"".join(blocks)[:size]


def generate(folder: Path, total: int, seed: int = 42) -> dict:
    """Write the data set (deterministic for a seed and size); returns its description."""
    rng = random.Random(seed)
    scale = total / (1 << 30)
    pool = [rng.randbytes(64 << 10) for _ in range(32)]
    folder.mkdir(parents=True)
    mix = dict.fromkeys(KINDS, 0)
    small: list[Path] = []
    n_small = max(100, int(20_000 * scale))
    duplicates = 0
    for i in range(n_small):
        kind = KINDS[i % 3]
        sub = folder / "small" / kind / f"a{i // 1500:02d}" / f"b{(i // 60) % 25:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"f{i:05d}.dat"
        if small and rng.random() < 0.10:
            src = rng.choice(small)
            shutil.copyfile(src, path)
            duplicates += 1
            continue
        size = int(math.exp(rng.uniform(math.log(1 << 10), math.log(64 << 10))))
        path.write_bytes(_content(rng, kind, size, pool))
        mix[kind] += size
        small.append(path)
    (folder / "medium").mkdir()
    for i in range(max(3, int(30 * scale))):
        kind = KINDS[i % 3]
        size = int(math.exp(rng.uniform(math.log(1 << 20), math.log(16 << 20))))
        (folder / "medium" / f"m{i:02d}-{kind}.bin").write_bytes(_content(rng, kind, size, pool))
        mix[kind] += size
    used = sum(p.stat().st_size for p in files_of(folder))
    each = max(1 << 20, (total - used) // 4)
    big = folder / "large"
    big.mkdir()
    for kind in KINDS:
        (big / f"{kind}.bin").write_bytes(_content(rng, kind, each, pool))
        mix[kind] += each
    # The near-copy: the random large file with 4 KiB overwritten at 10%, 100 bytes inserted
    # at 50% and 1000 bytes removed at 80%.
    data = bytearray((big / "random.bin").read_bytes())
    a, b, c = len(data) // 10, len(data) // 2, len(data) * 8 // 10
    data[a : a + 4096] = rng.randbytes(4096)
    data[c : c + 1000] = b""
    data[b:b] = rng.randbytes(100)
    (big / "random-nearcopy.bin").write_bytes(data)
    files = files_of(folder)
    desc = {
        "spec": SPEC,
        "seed": seed,
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "small_files": n_small,
        "duplicates": duplicates,
        "unique_bytes_by_kind": mix,
    }
    return desc


def add_data_options(ap: argparse.ArgumentParser) -> None:
    """`--size` and `--data`, as the scripts that time Tutela alone on this data set take."""
    ap.add_argument("--size", default="1G", help="data set size (default 1G)")
    ap.add_argument("--data", type=Path, help="data set (default /tmp/tutela-bench-datapath-SIZE)")


def ready_data(args: argparse.Namespace) -> Path:
    """Byte-compile Tutela, make the data set if it is missing, print the run's header
    lines; the data set's folder."""
    compile_tutela()
    data = args.data or Path(tempfile.gettempdir()) / f"tutela-bench-datapath-{args.size}"
    if not data.exists():
        print(f"# generating {data} ...", flush=True)
        generate(data, parse_size(args.size))
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# data {data}; {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    return data


def files_of(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out.extend(Path(dirpath) / f for f in sorted(filenames))
    return out


def tree_summary(folder: Path) -> tuple[int, int]:
    files = files_of(folder)
    return len(files), sum(p.stat().st_size for p in files)


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in files_of(folder))


# -- measuring a step -----------------------------------------------------------------------
def measured(cmd, env=None, cwd=None, shell=False, log=None) -> dict:
    """Run a command to its end under /usr/bin/time; wall seconds, CPU seconds (user+sys, its
    children included, from wait4) and max RSS of the command alone (time's %M: unlike
    wait4 here, not inflated by the memory of this Python process it was forked from)."""
    with tempfile.TemporaryFile() as out_file, tempfile.NamedTemporaryFile("r") as rss_file:
        argv = ["sh", "-c", cmd] if shell else [str(c) for c in cmd]
        argv = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *argv]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=out_file, stderr=log or subprocess.DEVNULL
        )
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        out = out_file.read().decode(errors="replace")
        rss_kib = int(rss_file.read().split()[-1])
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[5:])}: exit {proc.returncode}")
    return {
        "wall": wall,
        "cpu": ru.ru_utime + ru.ru_stime,
        "user": ru.ru_utime,
        "sys": ru.ru_stime,
        "rss_mib": rss_kib / 1024,
        "out": out,
    }


def read_tree(folder: Path) -> dict:
    return measured(f"tar cf - -C {folder} . | cat > /dev/null", shell=True)


# -- the tools ------------------------------------------------------------------------------
class Tool:
    name = ""

    def __init__(self, work: Path, data: Path, log):
        self.work = work
        self.data = data
        self.log = log
        self.repo = work / "repo"
        work.mkdir(parents=True)

    def init(self) -> None: ...

    def protect(self, label: str) -> dict:
        raise NotImplementedError

    def restore(self, out: Path) -> dict:
        raise NotImplementedError

    def restored_root(self, out: Path) -> Path:
        return out

    def stored(self) -> int:
        return du(self.repo)


class Tutela(Tool):
    name = "tutela"

    def init(self) -> None:
        conf = self.work / "providers.d"
        conf.mkdir()
        (conf / "bench.conf").write_text(
            f"""[provider]
name = bench
id = {uuid.uuid4()}
bank = filesystem
plugin = directory
executor = threads
max_workers = 2

[filesystem_bank]
root = {self.repo}

[content_store]
encryption = aes-256-gcm
cache_dir = {self.work / "cache"}
"""
        )
        self.env = {
            **os.environ,
            "TUTELA_PROVIDER_CONFIG_DIR": str(conf),
            "TUTELA_PASSWORD": "benchmark",
        }
        self.checkpoints: list[str] = []

    def protect(self, label: str) -> dict:
        res = measured(
            [TUTELA, "protect", "-q", "--resource", f"Tutela::Directory={self.data}"],
            env=self.env,
            log=self.log,
        )
        cp = res["out"].strip().splitlines()[-1]
        self.checkpoints.append(cp)
        show = subprocess.run(
            [TUTELA, "checkpoints", "show", cp, "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        info = json.loads(show.stdout)["resources"][0]["saved_info"]
        res["note"] = f"read {info['read_bytes'] / 1e6:.0f} MB, reused {info['reused_files']} files"
        return res

    def restore(self, out: Path) -> dict:
        params = self.work / f"restore-{out.name}.json"
        params.write_text(json.dumps({"Tutela::Directory": {"target": str(out)}}))
        return measured(
            [TUTELA, "restore", "-q", self.checkpoints[-1], "--parameters", str(params)],
            env=self.env,
            log=self.log,
        )


class Restic(Tool):
    name = "restic"

    def init(self) -> None:
        self.env = {
            **os.environ,
            "RESTIC_REPOSITORY": str(self.repo),
            "RESTIC_PASSWORD": "benchmark",
            "RESTIC_CACHE_DIR": str(self.work / "cache"),
        }
        subprocess.run(["restic", "init"], env=self.env, check=True, capture_output=True)

    def protect(self, label: str) -> dict:
        return measured(["restic", "backup", "-q", str(self.data)], env=self.env, log=self.log)

    def restore(self, out: Path) -> dict:
        return measured(
            ["restic", "restore", "-q", "latest", "--target", str(out)], env=self.env, log=self.log
        )

    def restored_root(self, out: Path) -> Path:
        return out / str(self.data).lstrip("/")


class Borg(Tool):
    compression = "lz4"

    def init(self) -> None:
        base = self.work / "borg-home"
        self.env = {
            **os.environ,
            "BORG_PASSPHRASE": "benchmark",
            "BORG_BASE_DIR": str(base),
            "BORG_CACHE_DIR": str(base / "cache"),
            "BORG_CONFIG_DIR": str(base / "config"),
            "BORG_SECURITY_DIR": str(base / "security"),
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }
        subprocess.run(
            ["borg", "init", "-e", "repokey", str(self.repo)],
            env=self.env,
            check=True,
            capture_output=True,
        )
        self.archives: list[str] = []

    def protect(self, label: str) -> dict:
        name = f"{label}-{len(self.archives)}"
        self.archives.append(name)
        return measured(
            ["borg", "create", "--compression", self.compression, f"{self.repo}::{name}", "."],
            env=self.env,
            cwd=self.data,
            log=self.log,
        )

    def restore(self, out: Path) -> dict:
        out.mkdir(parents=True)
        return measured(
            ["borg", "extract", f"{self.repo}::{self.archives[-1]}"],
            env=self.env,
            cwd=out,
            log=self.log,
        )


class BorgLz4(Borg):
    name = "borg-lz4"
    compression = "lz4"


class BorgZstd(Borg):
    name = "borg-zstd"
    compression = "zstd,3"


CLASSES = {c.name: c for c in (Tutela, Restic, BorgLz4, BorgZstd)}
BINARIES = {"tutela": TUTELA, "restic": "restic", "borg-lz4": "borg", "borg-zstd": "borg"}


# -- one round ------------------------------------------------------------------------------
def change(data: Path, rnd: int) -> tuple[Path, int, bytes, Path]:
    """Overwrite 4 KiB in the middle of one medium file and add a 1 MiB file; returns what is
    needed to undo it."""
    target = sorted((data / "medium").iterdir())[1]
    offset = target.stat().st_size // 2
    with open(target, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(4096)
        fh.seek(offset)
        fh.write(random.Random(rnd).randbytes(4096))
    added = data / f"added-{rnd}.bin"
    added.write_bytes(random.Random(1000 + rnd).randbytes(1 << 20))
    return target, offset, old, added


def undo(change_info: tuple[Path, int, bytes, Path]) -> None:
    target, offset, old, added = change_info
    with open(target, "r+b") as fh:
        fh.seek(offset)
        fh.write(old)
    added.unlink(missing_ok=True)


def run_round(rnd: int, args, work: Path, log) -> dict:
    names = list(args.tools)
    k = rnd % len(names)
    order = names[k:] + names[:k]  # rotate: no tool always goes first
    rows: dict[str, dict[str, dict]] = {n: {} for n in names}
    tools = {n: CLASSES[n](work / f"round{rnd}" / n, args.data, log) for n in names}
    for t in tools.values():
        t.init()
    floor = read_tree(args.data)
    say(f"round {rnd}: floor {floor['wall']:.2f} s wall, {floor['cpu']:.2f} s cpu; order {order}")
    for n in order:
        os.sync()  # the writeback of the step before is not this step's
        read_tree(args.data)  # warm the page cache right before the timed step
        rows[n]["first"] = tools[n].protect("first")
        rows[n]["first"]["stored"] = tools[n].stored()
        say(f"  {n} first {fmt(rows[n]['first'])}")
    for n in order:
        os.sync()
        rows[n]["unchanged"] = tools[n].protect("unchanged")
        say(f"  {n} unchanged {fmt(rows[n]['unchanged'])}")
    info = change(args.data, rnd)
    try:
        expect = tree_summary(args.data)
        for n in order:
            os.sync()
            rows[n]["changed"] = tools[n].protect("changed")
            rows[n]["changed"]["stored"] = tools[n].stored()
            say(f"  {n} changed {fmt(rows[n]['changed'])}")
    finally:
        undo(info)
    for n in order:
        out = work / f"round{rnd}" / f"{n}-restored"
        os.sync()
        read_tree(tools[n].repo)  # every tool restores from a repository in the page cache
        rows[n]["restore"] = tools[n].restore(out)
        got = tree_summary(tools[n].restored_root(out))
        rows[n]["restore"]["ok"] = got == expect
        say(f"  {n} restore {fmt(rows[n]['restore'])} files/bytes {got} expected {expect}")
    return {"floor": floor, "rows": rows}


def fmt(r: dict) -> str:
    extra = f", {r['note']}" if r.get("note") else ""
    return f"{r['wall']:.2f} s wall, {r['cpu']:.2f} s cpu, {r['rss_mib']:.0f} MiB{extra}"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the report -----------------------------------------------------------------------------
def report(results: list[dict], tools: list[str], desc: dict) -> None:
    med = statistics.median
    floors = [r["floor"] for r in results]
    floor_wall = med(f["wall"] for f in floors)
    floor_cpu = med(f["cpu"] for f in floors)
    print(
        f"\nfloor (tar cf - DIR | cat > /dev/null): wall min {min(f['wall'] for f in floors):.2f} s, "
        f"median {floor_wall:.2f} s; cpu median {floor_cpu:.2f} s  ({len(results)} rounds)"
    )

    def col(tool: str, step: str, key: str) -> list[float]:
        return [r["rows"][tool][step][key] for r in results if step in r["rows"][tool]]

    refs = [t for t in ("restic", "borg-lz4") if t in tools]
    head = (
        f"{'step':<10}{'tool':<10}{'wall min':>9}{'median':>8}{'cpu min':>8}{'median':>8}"
        f"{'rss MiB':>8}{'x floor':>8}"
    )
    for ref in refs:
        short = "restic" if ref == "restic" else "borg"
        head += f"{'wall/' + short:>12}{'cpu/' + short:>11}{'rss/' + short:>11}"
    print(head)
    for step in STEPS:
        for tool in tools:
            walls, cpus, rss = (
                col(tool, step, "wall"),
                col(tool, step, "cpu"),
                col(tool, step, "rss_mib"),
            )
            if not walls:
                continue
            line = (
                f"{step:<10}{tool:<10}{min(walls):>9.2f}{med(walls):>8.2f}{min(cpus):>8.2f}"
                f"{med(cpus):>8.2f}{max(rss):>8.0f}{med(walls) / floor_wall:>8.1f}"
            )
            for ref in refs:
                line += (
                    f"{med(walls) / med(col(ref, step, 'wall')):>12.2f}"
                    f"{med(cpus) / med(col(ref, step, 'cpu')):>11.2f}"
                    f"{max(rss) / max(col(ref, step, 'rss_mib')):>11.2f}"
                )
            print(line)
    print(
        "\nbytes stored (first protect; after the changed re-protect), data set "
        f"{desc['bytes'] / 1e6:.0f} MB:"
    )
    for tool in tools:
        first = med(col(tool, "first", "stored"))
        after = med(col(tool, "changed", "stored"))
        line = f"  {tool:<10}{first / 1e6:>8.0f} MB  {after / 1e6:>8.0f} MB  (+{(after - first) / 1e6:.1f} MB)"
        for ref in refs:
            short = "restic" if ref == "restic" else "borg"
            line += f"   x {short} {first / med(col(ref, 'first', 'stored')):.2f}"
        print(line)
    notes = (
        [r["rows"]["tutela"][s].get("note") for r in results for s in STEPS[:3]]
        if "tutela" in tools
        else []
    )
    if notes:
        print(
            "tutela saved info per protect (first, unchanged, changed per round): "
            + "; ".join(notes)
        )
    bad = [
        (i, t) for i, r in enumerate(results) for t in tools if not r["rows"][t]["restore"]["ok"]
    ]
    print(
        "restores: "
        + ("all complete (file count and bytes match)" if not bad else f"MISMATCH {bad}")
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="1G", help="data set size (default 1G)")
    ap.add_argument("--data", type=Path, help="data set (default /tmp/tutela-bench-datapath-SIZE)")
    ap.add_argument("--work", type=Path, help="repositories and restores (default: a temp dir)")
    ap.add_argument("--rounds", type=int, default=2, help="repetitions (default 2)")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"default {','.join(TOOLS)}")
    ap.add_argument("--settle", type=float, default=70, help="sync, then sleep this long first")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    ap.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        desc = generate(args.generate, parse_size(args.size))
        args.generate.with_name(args.generate.name + ".json").write_text(json.dumps(desc))
        return 0
    compile_tutela()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in tools:
        if t not in CLASSES:
            ap.error(f"unknown tool {t!r} (known: {', '.join(TOOLS)})")
    missing = [t for t in tools if shutil.which(BINARIES[t]) is None]
    for t in missing:
        print(f"# {t}: not installed, left out")
    args.tools = [t for t in tools if t not in missing]
    args.data = args.data or Path(tempfile.gettempdir()) / f"tutela-bench-datapath-{args.size}"
    spec_file = args.data.with_name(args.data.name + ".json")
    if not args.data.exists():
        say(f"generating {args.data} ...")
        # In a child process, so that this one stays small.
        subprocess.run(
            [sys.executable, __file__, "--generate", str(args.data), "--size", args.size],
            check=True,
        )
    desc = json.loads(spec_file.read_text())
    versions = []
    for t in args.tools:
        cmd = [BINARIES[t], "--version"] if t != "restic" else ["restic", "version"]
        versions.append(subprocess.run(cmd, capture_output=True, text=True).stdout.split("\n")[0])
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"# data {args.data}: {desc['files']} files, {desc['bytes'] / 1e6:.0f} MB "
        f"({desc['small_files']} small of 1-64 KiB, {desc['duplicates']} of them duplicates; "
        f"unique bytes random/text/repeated "
        + "/".join(f"{v / 1e6:.0f}" for v in desc["unique_bytes_by_kind"].values())
        + " MB; one large near-copy)"
    )
    print(f"# {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; " + "; ".join(versions))
    print("# encryption on everywhere; warm page cache before every timed step (see --help)")
    work = args.work or Path(tempfile.mkdtemp(prefix="tutela-datapath-", dir=args.data.parent))
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "tools.log", "ab")  # noqa: SIM115 - lives for the run
    if args.settle:
        say(f"sync; sleep {args.settle:.0f}")
        subprocess.run(["sync"], check=True)
        time.sleep(args.settle)
    results = []
    loads = []
    try:
        for rnd in range(args.rounds):
            loads.append(os.getloadavg()[0])
            results.append(run_round(rnd, args, work, log))
        loads.append(os.getloadavg()[0])
        print(f"# load average (1 min) at round starts/end: {', '.join(f'{x:.1f}' for x in loads)}")
        report(results, args.tools, desc)
        if args.json:
            for r in results:
                for row in r["rows"].values():
                    for step in row.values():
                        step.pop("out", None)
            args.json.write_text(json.dumps({"desc": desc, "results": results}, indent=1))
    finally:
        log.close()
        if not (args.keep or args.work):
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
