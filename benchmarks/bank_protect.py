"""Protect and restore a 1 GiB directory through each bank: filesystem, Swift, S3 (Swift's S3 API).

The directory holds a few large incompressible files and some small ones (random bytes,
so neither dedup nor compression helps: the figures are the data path and the bank).  Each
step is the `tutela` CLI in its own process (Tutela::Directory, `[content_store] encryption =
aes-256-gcm` by default, TUTELA_PASSWORD), timed with wall seconds, CPU seconds of the CLI, CPU
seconds of the Swift all-in-one's servers over the same interval (they share this machine; in
the filesystem rows that column only shows what other users of the all-in-one cost meanwhile)
and the CLI's max RSS.  The data set is read with tar|cat right before each protect (warm cache);
a restore goes into a fresh folder and is checked (file count and bytes; sha256 with
--verify).

Swift and S3 use the Swift all-in-one on 127.0.0.1 (`scripts/swift-aio start` is run if it is
not up; it is left running), with a fresh container (Swift) or prefix (S3) per run, purged
afterwards.  The banks run side by side in each run, their order rotating.

    .venv/bin/python benchmarks/bank_protect.py                        # 1 GiB, all banks, 2 runs
    .venv/bin/python benchmarks/bank_protect.py --banks swift --runs 1 # one bank
    .venv/bin/python benchmarks/bank_protect.py --size 256M --encryption none
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from datapath import files_of, measured, parse_size, read_tree, tree_summary  # noqa: E402

TUTELA = str(Path(sys.executable).parent / "tutela")
SWIFT_AIO = ROOT / "scripts" / "swift-aio"
BANKS = ("filesystem", "swift", "s3")


def generate(folder: Path, total: int) -> None:
    """4 large random files (~97% of the bytes) and 300 small random files of 1-256 KiB."""
    import random

    rng = random.Random(7)
    folder.mkdir(parents=True)
    small_total = 0
    (folder / "small").mkdir()
    for i in range(300):
        size = rng.randint(1 << 10, 256 << 10)
        (folder / "small" / f"s{i:03d}.bin").write_bytes(os.urandom(size))
        small_total += size
    each = (total - small_total) // 4
    for i in range(4):
        with open(folder / f"large{i}.bin", "wb") as fh:
            left = each
            while left:
                n = min(left, 16 << 20)
                fh.write(os.urandom(n))
                left -= n


def swift_env() -> dict[str, str]:
    status = subprocess.run([str(SWIFT_AIO), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        print("# starting the Swift all-in-one (scripts/swift-aio start)", file=sys.stderr)
        subprocess.run([str(SWIFT_AIO), "start"], check=True, capture_output=True, text=True)
    out = subprocess.run([str(SWIFT_AIO), "env"], capture_output=True, text=True, check=True).stdout
    env = {}
    for line in out.splitlines():
        if line.startswith("export "):
            name, _, value = line[7:].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


def swift_pids(env: dict[str, str]) -> list[int]:
    run = Path(env.get("TUTELA_SWIFT_AIO_DIR") or "/tmp/tutela-swift-aio") / "run"
    pids = []
    for f in run.glob("*.pid"):
        with contextlib.suppress(ValueError):
            pids.append(int(f.read_text().strip()))
    return pids


def swift_cpu(pids: list[int]) -> float:
    """CPU seconds so far of the Swift servers and their worker processes."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


def bank_section(kind: str, tag: str, work: Path, env: dict[str, str]) -> tuple[str, dict]:
    if kind == "filesystem":
        return "filesystem_bank", {"root": str(work / "bank")}
    if kind == "swift":
        return "swift_bank", {
            "auth_url": env["TUTELA_SWIFT_AUTH_URL"],
            "user": env["TUTELA_SWIFT_USER"],
            "key": env["TUTELA_SWIFT_KEY"],
            "container": tag,
        }
    return "s3_bank", {
        "endpoint_url": env["TUTELA_S3_ENDPOINT"],
        "access_key": env["TUTELA_S3_ACCESS_KEY"],
        "secret_key": env["TUTELA_S3_SECRET_KEY"],
        "region": env.get("TUTELA_S3_REGION", "us-east-1"),
        "bucket": "tutela-bench",
        "prefix": tag,
    }


def purge(kind: str, options: dict) -> int:
    if kind == "swift":
        from tutela.bank.swift import SwiftBank

        bank = SwiftBank(**options)
    else:
        from tutela.bank.s3 import S3Bank

        bank = S3Bank(**options)
    try:
        return bank.purge()
    finally:
        bank.close()


def one_run(kind: str, rnd: int, args, work: Path, env: dict[str, str], pids: list[int]) -> dict:
    tag = f"tutelabench-{uuid.uuid4().hex[:10]}"
    folder = work / f"{kind}-{rnd}"
    conf_dir = folder / "providers.d"
    conf_dir.mkdir(parents=True)
    section, options = bank_section(kind, tag, folder, env)
    lines = [
        "[provider]",
        f"name = bench-{kind}",
        f"id = {uuid.uuid4()}",
        f"bank = {kind}",
        "plugin = directory",
        "executor = threads",
        "max_workers = 2",
        "",
        f"[{section}]",
        *(f"{k} = {v}" for k, v in options.items()),
        "",
        "[content_store]",
        f"encryption = {args.encryption}",
        f"cache_dir = {folder / 'cache'}",
    ]
    (conf_dir / "bench.conf").write_text("\n".join(lines) + "\n")
    cli_env = {**os.environ, "TUTELA_PROVIDER_CONFIG_DIR": str(conf_dir)}
    cli_env["TUTELA_PASSWORD"] = "benchmark"
    log = open(folder / "cli.log", "ab")  # noqa: SIM115 - closed below
    out = {"tag": tag}
    try:
        read_tree(args.data)  # warm the page cache right before the timed protect
        c0 = swift_cpu(pids)
        res = measured(
            [TUTELA, "protect", "-q", "--resource", f"Tutela::Directory={args.data}"],
            env=cli_env,
            log=log,
        )
        res["server_cpu"] = swift_cpu(pids) - c0
        out["protect"] = res
        cp = res["out"].strip().splitlines()[-1]
        target = folder / "restored"
        params = folder / "restore.json"
        params.write_text(json.dumps({"Tutela::Directory": {"target": str(target)}}))
        c0 = swift_cpu(pids)
        res = measured(
            [TUTELA, "restore", "-q", cp, "--parameters", str(params)], env=cli_env, log=log
        )
        res["server_cpu"] = swift_cpu(pids) - c0
        out["restore"] = res
        out["ok"] = tree_summary(target) == tree_summary(args.data)
        if args.verify:
            out["ok"] = out["ok"] and all(
                digest(p) == digest(target / p.relative_to(args.data)) for p in files_of(args.data)
            )
        shutil.rmtree(target, ignore_errors=True)
    finally:
        log.close()
        if kind != "filesystem":
            try:
                purge(kind, options)
            except Exception as exc:  # reported, the figures still stand
                print(f"# {kind}: purge of {tag} failed: {exc}", file=sys.stderr)
        shutil.rmtree(folder / "bank", ignore_errors=True)
    return out


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="1G", help="data set size (default 1G)")
    ap.add_argument("--data", type=Path, help="default /tmp/tutela-bench-bankprotect-SIZE")
    ap.add_argument("--banks", default=",".join(BANKS), help=f"default {','.join(BANKS)}")
    ap.add_argument("--runs", type=int, default=2, help="repetitions (default 2)")
    ap.add_argument("--encryption", default="aes-256-gcm", help="[content_store] encryption")
    ap.add_argument("--verify", action="store_true", help="sha256 every restored file")
    args = ap.parse_args()
    banks = [b.strip() for b in args.banks.split(",") if b.strip()]
    for b in banks:
        if b not in BANKS:
            ap.error(f"unknown bank {b!r} (known: {', '.join(BANKS)})")
    args.data = args.data or Path(tempfile.gettempdir()) / f"tutela-bench-bankprotect-{args.size}"
    if not args.data.exists():
        print(f"# generating {args.data}", file=sys.stderr)
        generate(args.data, parse_size(args.size))
    nfiles, total = tree_summary(args.data)
    env = swift_env() if set(banks) - {"filesystem"} else {}
    pids = swift_pids(env) if env else []
    me = sys.executable
    if me.startswith(str(ROOT) + "/"):
        me = os.path.relpath(me, ROOT)
    print(f"# {me} {' '.join(sys.argv)}")
    print(
        f"# {args.data}: {nfiles} files, {total / 1e6:.0f} MB random bytes; encryption "
        f"{args.encryption}; {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; warm cache"
    )
    work = Path(tempfile.mkdtemp(prefix="tutela-bankprotect-", dir=args.data.parent))
    rows: dict[str, list[dict]] = {b: [] for b in banks}
    loads = []
    try:
        for rnd in range(args.runs):
            loads.append(os.getloadavg()[0])
            k = rnd % len(banks)
            for kind in banks[k:] + banks[:k]:
                r = one_run(kind, rnd, args, work, env, pids)
                rows[kind].append(r)
                print(
                    f"  run {rnd} {kind:<10} protect {r['protect']['wall']:.2f} s "
                    f"(cpu {r['protect']['cpu']:.2f} + server {r['protect']['server_cpu']:.2f}), "
                    f"restore {r['restore']['wall']:.2f} s (cpu {r['restore']['cpu']:.2f} + "
                    f"server {r['restore']['server_cpu']:.2f}) {'ok' if r['ok'] else 'MISMATCH'}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loads.append(os.getloadavg()[0])
    med = statistics.median
    print(f"# load average (1 min) at run starts/end: {', '.join(f'{x:.1f}' for x in loads)}")
    print(
        f"{'bank':<11}{'step':<8}{'MB/s max':>9}{'median':>8}{'wall min':>9}{'median':>8}"
        f"{'cli cpu':>8}{'srv cpu':>8}{'rss MiB':>8}  reproduce"
    )
    for kind in banks:
        for step in ("protect", "restore"):
            rs = [r[step] for r in rows[kind]]
            walls = [r["wall"] for r in rs]
            print(
                f"{kind:<11}{step:<8}{total / min(walls) / 1e6:>9.0f}{total / med(walls) / 1e6:>8.0f}"
                f"{min(walls):>9.2f}{med(walls):>8.2f}{med(r['cpu'] for r in rs):>8.2f}"
                f"{med(r['server_cpu'] for r in rs):>8.2f}{max(r['rss_mib'] for r in rs):>8.0f}  "
                f"{me} benchmarks/bank_protect.py --banks {kind} --size {args.size} "
                f"--runs {args.runs}"
            )
    bad = [(k, i) for k, rs in rows.items() for i, r in enumerate(rs) if not r["ok"]]
    print("restores: " + ("all complete and equal" if not bad else f"MISMATCH {bad}"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
