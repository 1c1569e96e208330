"""Stream-throughput benchmark of the banks: write N bytes through `update_object_stream`, read
them back through `get_object_stream`, print MB/s.  Then the content store's lone-chunk read:
4 KiB at the end of a 16 MiB pack, by the bank's range read against streaming up to it (what a
bank without range reads costs), median of 15 each, and their ratio.

    .venv/bin/python benchmarks/bank_throughput.py [--size 1G] [--banks filesystem,swift,s3]

Swift and S3 use the Swift all-in-one (`scripts/swift-aio start`; the addresses come from
`scripts/swift-aio env`, or from TUTELA_SWIFT_* / TUTELA_S3_* in the environment).  Banks that
cannot be reached are reported and skipped.  The data is incompressible: a 64 MiB random pool
read at shifting offsets, so no 1 MiB chunk repeats and generating it costs next to nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tutela.bank import Bank  # noqa: E402
from tutela.bank.swift import parse_size  # noqa: E402

CHUNK = 1 << 20
POOL = 64 << 20


def data(total: int, pool: bytes, digest=None) -> Iterator[bytes]:
    sent = 0
    offset = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        offset = (offset + 1_048_583) % (POOL - CHUNK)  # a prime stride: no chunk repeats
        block = pool[offset : offset + n]
        if digest is not None:
            digest.update(block)
        sent += n
        yield block


def swift_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(("TUTELA_SWIFT_", "TUTELA_S3_"))}
    if "TUTELA_SWIFT_AUTH_URL" in env:
        return env
    try:
        out = subprocess.run(
            [str(ROOT / "scripts" / "swift-aio"), "env"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return env
    for line in out.splitlines():
        if line.startswith("export "):
            name, _, value = line[7:].partition("=")
            env[name] = shlex.split(value)[0]
    return env


def make_bank(kind: str, tmp: str, part: int):
    tag = f"bench{uuid.uuid4().hex[:8]}"
    if kind == "filesystem":
        from tutela.bank.filesystem import FilesystemBank

        return FilesystemBank(root=Path(tmp) / "bank")
    env = swift_env()
    if kind == "swift":
        from tutela.bank.swift import SwiftBank

        return SwiftBank(
            auth_url=env["TUTELA_SWIFT_AUTH_URL"],
            user=env["TUTELA_SWIFT_USER"],
            key=env["TUTELA_SWIFT_KEY"],
            container=tag,
            segment_size=part,
        )
    from tutela.bank.s3 import S3Bank

    return S3Bank(
        endpoint_url=env["TUTELA_S3_ENDPOINT"],
        access_key=env["TUTELA_S3_ACCESS_KEY"],
        secret_key=env["TUTELA_S3_SECRET_KEY"],
        region=env.get("TUTELA_S3_REGION", "us-east-1"),
        bucket="tutela-bench",
        prefix=tag,
        part_size=part,
    )


def lone_chunk(bank: Bank, pool: bytes) -> tuple[float, float]:
    """Median ms of a 4 KiB read at the end of a 16 MiB object: ranged, and streamed to it."""
    section = bank.get_section("bench")
    pack = pool[: 16 << 20]
    section.update_object("pack", pack)
    offset = len(pack) - 8192
    want = pack[offset : offset + 4096]

    def streamed() -> bytes:
        got, pos = [], 0
        for block in section.get_object_stream("pack"):
            if pos + len(block) > offset:
                got.append(block[max(0, offset - pos) :])
            pos += len(block)
            if pos >= offset + 4096:
                break
        return b"".join(got)[:4096]

    def ranged() -> bytes:
        return section.get_object_range("pack", offset, 4096)

    medians = []
    for fn in (ranged, streamed):
        times = []
        for _ in range(15):
            start = time.perf_counter()
            if fn() != want:
                raise AssertionError(f"{fn.__name__} read the wrong bytes")
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times) * 1000)
    section.delete_object("pack")
    return medians[0], medians[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="bytes to stream (K/M/G), default 1G")
    parser.add_argument("--banks", default="filesystem,swift,s3")
    parser.add_argument(
        "--part", default="256M", help="Swift segment / S3 part size (default 256M)"
    )
    parser.add_argument("--verify", action="store_true", help="sha256 both ways (slower)")
    args = parser.parse_args()
    size = parse_size(args.size, 1 << 30)
    part = parse_size(args.part, 256 << 20)
    pool = os.urandom(POOL)
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    host = f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus"
    print(f"# {host}, python {platform.python_version()}")
    print(f"# {size / 2**20:.0f} MiB per bank, part/segment {part / 2**20:.0f} MiB")
    print(
        f"{'bank':<12}{'write MB/s':>12}{'read MB/s':>12}"
        f"{'lone 4K ranged ms':>19}{'streamed ms':>13}{'ratio':>7}"
    )
    failed = False
    with tempfile.TemporaryDirectory(prefix="tutela-bench-") as tmp:
        for kind in args.banks.split(","):
            try:
                plugin = make_bank(kind.strip(), tmp, part)
            except Exception as exc:
                print(f"{kind:<12}{'unavailable: ' + type(exc).__name__ + ': ' + str(exc)[:80]}")
                continue
            bank = Bank(plugin)
            wd = hashlib.sha256() if args.verify else None
            start = time.perf_counter()
            written = bank.update_object_stream("bench/object", data(size, pool, wd))
            write_s = time.perf_counter() - start
            rd = hashlib.sha256() if args.verify else None
            start = time.perf_counter()
            got = 0
            for block in bank.get_object_stream("bench/object"):
                got += len(block)
                if rd is not None:
                    rd.update(block)
            read_s = time.perf_counter() - start
            ok = written == size == got and (wd is None or wd.digest() == rd.digest())
            failed |= not ok
            mark = "" if ok else "  MISMATCH"
            bank.delete_object("bench/object")
            ranged_ms, streamed_ms = lone_chunk(bank, pool)
            print(
                f"{kind:<12}{size / 1e6 / write_s:>12.1f}{size / 1e6 / read_s:>12.1f}"
                f"{ranged_ms:>19.2f}{streamed_ms:>13.2f}{streamed_ms / ranged_ms:>7.1f}{mark}"
            )
            if hasattr(plugin, "purge"):
                plugin.purge()
            plugin.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
