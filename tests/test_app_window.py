"""One checkpoint, many systems: a group of a folder, its SQLite file and a PostgreSQL
database.  The group's quiesce window brackets every member's snapshot (examples/app)."""

from __future__ import annotations

import sqlite3
import tomllib
import uuid
from pathlib import Path

import psycopg
import pytest

from tutela import Provider, ProviderConfig, Resource

pytestmark = pytest.mark.postgresql

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "app"
CONNINFO = "host=127.0.0.1 port=5432 user=postgres"
GROUP = "Tutela::Group"
DIR = "Tutela::Directory"
SQLITE = "Tutela::SQLite"
PGDB = "PostgreSQL::Database"


def admin(dbname: str = "postgres"):
    return psycopg.connect(CONNINFO, dbname=dbname, autocommit=True, connect_timeout=5)


@pytest.fixture
def app(tmp_path):
    """The sample application: a folder with a SQLite file, and a PostgreSQL database."""
    try:
        with admin() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable ({exc})")
    root = tmp_path / "shop"
    (root / "data").mkdir(parents=True)
    (root / "shop.ini").write_text("[shop]\nname = test\n")
    db = sqlite3.connect(root / "data" / "shop.db")
    db.execute("CREATE TABLE carts (id INTEGER PRIMARY KEY, total REAL)")
    db.executemany("INSERT INTO carts (total) VALUES (?)", [(i * 1.5,) for i in range(500)])
    db.commit()
    db.close()
    name = f"tutela_app_{uuid.uuid4().hex[:10]}"
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with admin(name) as conn:
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, qty int)")
        conn.execute("INSERT INTO orders (qty) SELECT g FROM generate_series(1, 1000) g")
    yield root, name
    with admin() as conn:
        for suffix in ("", "_restored"):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}{suffix}" WITH (FORCE)')


def make_provider(tmp_path, root: Path, dbname: str) -> Provider:
    flag = tmp_path / "maintenance"
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        "[groups.shop]\n"
        'name = "Shop"\n'
        f'members = ["{DIR}={root}", "{PGDB}=127.0.0.1:5432/{dbname}"]\n'
        f'prepare_begin_command = ["sh", "-c", "date +%s.%N > {flag}"]\n'
        f'prepare_finish_command = ["rm", "-f", "{flag}"]\n'
    )
    # The same plugins as examples/app/providers.d/app.conf, on a tmp bank and inventory.
    example = ProviderConfig.read(EXAMPLE / "providers.d" / "app.conf")
    sections = {
        "provider": {
            "name": "app-test",
            "id": "app-test",
            "bank": "filesystem",
            "plugin": example.get_list("provider", "plugin"),
            "executor": "threads",
            "max_workers": 4,
        },
        "filesystem_bank": {"root": str(tmp_path / "bank"), "fsync": "false"},
        "group": {"inventory": str(inventory)},
        "postgresql": {"servers": example.get("postgresql", "servers")},
        "sqlite": {"snapshot_dir": str(tmp_path)},
    }
    return Provider.from_config(ProviderConfig.from_dict(sections, path=str(tmp_path / "a.conf")))


def test_example_files_load():
    provider = Provider.from_config(ProviderConfig.read(EXAMPLE / "providers.d" / "app.conf"))
    try:
        assert {GROUP, DIR, SQLITE, PGDB, "PostgreSQL::Server"} <= set(provider.resource_types)
    finally:
        provider.close()
    spec = tomllib.loads((EXAMPLE / "inventory.toml").read_text())["groups"]["shop"]
    assert spec["prepare_begin_command"] and spec["prepare_finish_command"]
    assert any(m.startswith(PGDB) for m in spec["members"])


def test_the_group_window_brackets_every_snapshot(tmp_path, app):
    root, dbname = app
    provider = make_provider(tmp_path, root, dbname)
    try:
        graph = provider.build_graph([Resource(GROUP, "shop")])
        assert {r.type for r in graph.nodes} == {GROUP, DIR, SQLITE, PGDB}
        cp = provider.protect([Resource(GROUP, "shop")])
        assert cp.status == "available"
        records = cp.resource_records()
        window = records[f"{GROUP}#shop"]["saved_info"]
        quiesced, released = window["quiesced_at"], window["released_at"]
        assert quiesced is not None and released is not None
        sqlite_info = records[f"{SQLITE}#{root}/data/shop.db"]["saved_info"]
        pg_info = records[f"{PGDB}#127.0.0.1:5432/{dbname}"]["saved_info"]
        snapshots = {
            "sqlite start": sqlite_info["snapshot_started_at"],
            "sqlite": sqlite_info["snapshot_at"],
            "postgresql": pg_info["snapshot_at"],
        }
        for what, at in snapshots.items():
            assert quiesced <= at <= released, (
                f"{what} snapshot {at} outside [{quiesced}, {released}]"
            )
        assert not (tmp_path / "maintenance").exists(), "released"

        # The whole application comes back elsewhere, the database under a new name.
        new_root = tmp_path / "restored"
        restore = provider.restore(
            cp.id,
            {DIR: {"target": str(new_root)}, PGDB: {"target": f"{dbname}_restored"}},
        )
        assert restore.status == "success"
        assert (new_root / "shop.ini").read_text() == "[shop]\nname = test\n"
        db = sqlite3.connect(new_root / "data" / "shop.db")
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM carts").fetchone() == (500,)
        db.close()
        with admin(f"{dbname}_restored") as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (1000,)
    finally:
        provider.close()
