"""PostgreSQL: Tutela protect/restore through a filesystem bank vs plain pg_dump/pg_restore.

Creates a ~1 GiB database with `pgbench -i -s 70` (7 million accounts plus indexes), then on
the same database and the same disk:

- plain:  `pg_dump -Fc -f FILE` (then fsync the file), and `pg_restore --single-transaction
  --exit-on-error -d NEW FILE` into a fresh database (created inside the timing);
- Tutela: `protect` of `PostgreSQL::Database` into a filesystem bank (fsync on), and
  `restore` into a fresh database (`analyze: false`, so both sides do the same work).

Both restores use the same pg_restore flags.  Every timed step starts after its restored
database was dropped, a CHECKPOINT and a sync; plain goes first in even rounds and Tutela in
odd ones, and the best of `--repeat` rounds is kept.  Prints the figures and
the Tutela/plain ratios, then drops every database it created (`--keep` leaves them).

    python benchmarks/databases.py                       # scale 70, about 1 GiB
    python benchmarks/databases.py --scale 10 --workdir /var/tmp
    python benchmarks/databases.py --scale 40 --random-mib 400   # a large, incompressible dump
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import psycopg

from tutela import Provider, ProviderConfig, Resource

DB = "tutela_bench"
PLAIN = "tutela_bench_plain"
RESTORED = "tutela_bench_tutela"


def admin(conninfo: str, dbname: str = "postgres"):
    return psycopg.connect(conninfo, dbname=dbname, autocommit=True)


def drop(conninfo: str, *names: str) -> None:
    with admin(conninfo) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def env_for(conninfo: str, dbname: str | None = None) -> dict[str, str]:
    from tutela.plugins.dbutil import parse_keyvalue

    params = parse_keyvalue(conninfo)
    keys = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
    env = {**os.environ, **{keys[k]: v for k, v in params.items() if k in keys}}
    if dbname:
        env["PGDATABASE"] = dbname
    return env


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conninfo", default="host=127.0.0.1 port=5432 user=postgres")
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70 = ~1 GiB)")
    parser.add_argument(
        "--random-mib",
        type=int,
        default=0,
        help="also add a table of this many MiB of random bytes (pgcrypto), so that the dump "
        "is large and incompressible instead of pgbench's tiny one",
    )
    parser.add_argument("--workdir", default=None, help="where the dump file and bank go")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best is kept")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    opts = parser.parse_args()

    conninfo = opts.conninfo
    with admin(conninfo) as conn:
        host_port = f"{conn.info.host}:{conn.info.port}"
    work = tempfile.mkdtemp(prefix="tutela-dbbench-", dir=opts.workdir)
    figures: dict[str, float] = {}
    try:
        drop(conninfo, DB, PLAIN, RESTORED)
        with admin(conninfo) as conn:
            conn.execute(f'CREATE DATABASE "{DB}"')
        print(f"creating {DB} with pgbench -i -s {opts.scale} ...", flush=True)
        figures["create_s"] = timed(
            lambda: run(["pgbench", "-i", "-q", "-s", str(opts.scale)], env_for(conninfo, DB))
        )
        with admin(conninfo, DB) as conn:
            if opts.random_mib:
                print(f"adding {opts.random_mib} MiB of random bytes ...", flush=True)
                conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
                conn.execute("CREATE TABLE payload (id int PRIMARY KEY, data bytea)")
                conn.execute(
                    "INSERT INTO payload SELECT g, "
                    + " || ".join(["gen_random_bytes(1024)"] * 8)
                    + " FROM generate_series(1, %s) g",
                    (opts.random_mib * 128,),
                )
            conn.execute("VACUUM ANALYZE")
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        figures["database_bytes"] = size

        sections = {
            "provider": {
                "name": "bench",
                "id": "bench",
                "bank": "filesystem",
                "plugin": ["tutela.plugins.postgresql:PostgreSQLProtectionPlugin"],
                "executor": "threads",
            },
            "filesystem_bank": {"root": os.path.join(work, "bank")},
            "postgresql": {"servers": conninfo},
        }
        provider = Provider.from_config(ProviderConfig.from_dict(sections))
        resource = Resource("PostgreSQL::Database", f"{host_port}/{DB}")
        dump_file = os.path.join(work, "plain.dump")

        def settle() -> None:
            """Start every timed step from the same state: no dirty buffers left to write."""
            with admin(conninfo) as conn:
                conn.execute("CHECKPOINT")
            os.sync()

        def plain_dump() -> None:
            run(["pg_dump", "-Fc", "-f", dump_file], env_for(conninfo, DB))
            with open(dump_file, "rb") as fh:
                os.fsync(fh.fileno())

        def plain_restore() -> None:
            with admin(conninfo) as conn:
                conn.execute(f'CREATE DATABASE "{PLAIN}" TEMPLATE template0')
            run(
                ["pg_restore", "--single-transaction", "--exit-on-error", "-d",
                 f"dbname={PLAIN}", dump_file],
                env_for(conninfo),
            )  # fmt: skip

        holder: dict[str, str] = {}

        def protect() -> None:
            holder["id"] = provider.protect([resource]).id

        def restore() -> None:
            provider.restore(
                holder["id"], {"PostgreSQL::Database": {"target": RESTORED, "analyze": False}}
            )

        try:
            # Alternate plain and Tutela, best of --repeat rounds each.
            for round_ in range(opts.repeat):
                print(f"round {round_ + 1}/{opts.repeat} ...", flush=True)
                dumps = [("plain_dump_s", plain_dump), ("tutela_protect_s", protect)]
                restores = [("plain_restore_s", plain_restore), ("tutela_restore_s", restore)]
                if round_ % 2:  # odd rounds go Tutela first, so neither side always leads
                    dumps.reverse()
                    restores.reverse()
                steps = dumps + restores
                for key, step in steps:
                    if "restore" in key:
                        drop(conninfo, PLAIN if key.startswith("plain") else RESTORED)
                        time.sleep(2)
                    settle()
                    took = timed(step)
                    print(f"  {key:18} {took:7.1f} s", flush=True)
                    figures[key] = min(took, figures.get(key, took))
                figures["dump_bytes"] = os.path.getsize(dump_file)
                stored = provider.checkpoints.get(holder["id"]).resource_records()[resource.key]
                figures["tutela_stream_bytes"] = stored["saved_info"]["stream"]["size"]
                with admin(conninfo, RESTORED) as conn:
                    rows = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()[0]
                assert rows == opts.scale * 100_000, rows
                provider.delete(holder["id"])
                drop(conninfo, PLAIN, RESTORED)
        finally:
            provider.close()
    finally:
        if not opts.keep:
            drop(conninfo, DB, PLAIN, RESTORED)
        shutil.rmtree(work, ignore_errors=True)

    mib = 1 << 20
    print()
    print(
        f"database            {figures['database_bytes'] / mib:10.1f} MiB (pgbench scale "
        f"{opts.scale}, created in {figures['create_s']:.1f} s)"
    )
    print(
        f"dump (-Fc)          {figures['dump_bytes'] / mib:10.1f} MiB plain, "
        f"{figures['tutela_stream_bytes'] / mib:.1f} MiB through Tutela"
    )
    print(f"{'':20}{'plain':>10}{'tutela':>10}{'ratio':>8}")
    for what in ("dump", "restore"):
        plain = figures[f"plain_{what}_s"]
        ours = figures[f"tutela_{'protect' if what == 'dump' else 'restore'}_s"]
        label = "protect / pg_dump" if what == "dump" else "restore / pg_restore"
        print(f"{label:20}{plain:9.1f}s{ours:9.1f}s{ours / plain:8.2f}")
        rate = figures["database_bytes"] / mib / ours
        figures[f"tutela_{what}_db_mib_per_s"] = round(rate, 1)
    if opts.json:
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
