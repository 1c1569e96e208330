"""PostgreSQL::Server and PostgreSQL::Database against the real server on 127.0.0.1:5432."""

from __future__ import annotations

import os
import threading
import time
import uuid

import psycopg
import pytest

from tutela import OperationFailed, Provider, ProviderConfig, Resource
from tutela.operations import Progress as BaseProgress
from tutela.plugins import postgresql as pg_plugin

pytestmark = pytest.mark.postgresql

SERVER_ID = "127.0.0.1:5432"
CONNINFO = "host=127.0.0.1 port=5432 user=postgres"
SERVER = "PostgreSQL::Server"
DATABASE = "PostgreSQL::Database"


def admin(dbname: str = "postgres"):
    return psycopg.connect(CONNINFO, dbname=dbname, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def postgres_up():
    """Fail (never skip) when the server is not there: scripts/ensure-db-services starts it."""
    try:
        with admin() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL on {SERVER_ID} is not reachable ({exc}); run scripts/ensure-db-services"
        )


@pytest.fixture
def dbname(postgres_up):
    """A unique database name; it and every database named after it are dropped afterwards."""
    name = f"tutela_t_{uuid.uuid4().hex[:10]}"
    yield name
    with admin() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (name + "%",)
        ).fetchall()
        for (db,) in rows:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture
def make_pg_provider(tmp_path):
    made: list[Provider] = []

    def make(executor: str = "threads", **section: str) -> Provider:
        sections = {
            "provider": {
                "name": "pg-test",
                "id": "pg-test",
                "bank": "filesystem",
                "plugin": ["tutela.plugins.postgresql:PostgreSQLProtectionPlugin"],
                "executor": executor,
                "max_workers": 4,
            },
            "filesystem_bank": {"root": str(tmp_path / "bank"), "fsync": "false"},
            "postgresql": {"servers": CONNINFO, **section},
        }
        provider = Provider.from_config(
            ProviderConfig.from_dict(sections, path=str(tmp_path / "pg.conf"))
        )
        made.append(provider)
        return provider

    yield make
    for p in made:
        p.close()


LOB = os.urandom(3 * 1024 * 1024 + 5)


def populate(name: str) -> None:
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with admin(name) as conn:
        conn.execute(
            """
            CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text);
            CREATE UNIQUE INDEX customers_email ON customers (lower(email));
            CREATE TABLE orders (
                id bigserial PRIMARY KEY,
                customer int NOT NULL REFERENCES customers(id),
                amount numeric(10, 2),
                note text,
                doc oid
            );
            CREATE INDEX orders_customer ON orders (customer);
            CREATE SEQUENCE invoice_no START 1000;
            CREATE VIEW customer_totals AS
                SELECT c.name, count(o.id) AS orders, sum(o.amount) AS total
                FROM customers c LEFT JOIN orders o ON o.customer = c.id GROUP BY c.name;
            INSERT INTO customers (name, email)
                SELECT 'customer ' || g, 'c' || g || '@example.org' FROM generate_series(1, 500) g;
            INSERT INTO orders (customer, amount, note)
                SELECT 1 + g % 500, (g % 977) / 3.0, repeat('x', g % 50)
                FROM generate_series(1, 20000) g;
            """
        )
        for _ in range(7):
            conn.execute("SELECT nextval('invoice_no')")
        oid = conn.execute("SELECT lo_from_bytea(0, %s)", (LOB,)).fetchone()[0]
        conn.execute("SELECT lo_from_bytea(0, %s)", (b"small object",))
        conn.execute("UPDATE orders SET doc = %s WHERE id = 1", (oid,))


def contents(name: str) -> dict:
    with admin(name) as conn:
        return {
            "customers": conn.execute("SELECT * FROM customers ORDER BY id").fetchall(),
            "orders": conn.execute("SELECT * FROM orders ORDER BY id").fetchall(),
            "seq": conn.execute("SELECT last_value, is_called FROM invoice_no").fetchone(),
            "view": conn.execute("SELECT * FROM customer_totals ORDER BY name").fetchall(),
            "lobs": sorted(
                bytes(r[0])
                for r in conn.execute("SELECT lo_get(oid) FROM pg_largeobject_metadata").fetchall()
            ),
            "indexes": sorted(
                r[0]
                for r in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
                ).fetchall()
            ),
            "next_order_id": conn.execute("SELECT last_value FROM orders_id_seq").fetchone(),
        }


def test_round_trip_under_a_new_name_while_the_original_runs(make_pg_provider, dbname):
    populate(dbname)
    before = contents(dbname)
    provider = make_pg_provider()
    resource = Resource(DATABASE, f"{SERVER_ID}/{dbname}")
    stop = threading.Event()
    written: list[int] = []

    def writer():
        with admin(dbname) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO customers (name) VALUES ('late')")
                written.append(1)
                time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        cp = provider.protect([resource])
        restored = f"{dbname}_copy"
        record = provider.restore(cp.id, {DATABASE: {"target": restored}})
    finally:
        stop.set()
        thread.join()
    assert cp.status == "available" and record.status == "success"
    info = cp.resource_records()[resource.key]["saved_info"]
    assert info["database"] == dbname and info["server"] == SERVER_ID
    assert info["stream"]["size"] > 0 and info["snapshot_id"]
    assert info["server_version"].startswith(
        str(psycopg.connect(CONNINFO).info.server_version // 10000)
    )
    after = contents(restored)
    late = [row for row in after["customers"] if row[1] == "late"]
    # The copy is the snapshot: the original rows, plus a prefix of the writer's.
    assert after["customers"][: len(before["customers"])] == before["customers"]
    assert len(late) <= len(written)
    for key in ("orders", "seq", "lobs", "indexes", "next_order_id"):
        assert after[key] == before[key], key
    assert len(after["lobs"]) == 2 and LOB in after["lobs"]
    assert [r for r in after["view"] if r[0] != "late"] == before["view"]
    new = record.resource_records()[resource.key]["new_resource"]
    assert new["id"] == f"{SERVER_ID}/{restored}"
    # The original kept running and kept its data.
    with admin(dbname) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 500 + len(written)


def test_refuses_a_non_empty_target_then_overwrites(make_pg_provider, dbname):
    populate(dbname)
    provider = make_pg_provider("serial")
    resource = Resource(DATABASE, f"{SERVER_ID}/{dbname}")
    cp = provider.protect([resource])
    with pytest.raises(OperationFailed) as err:
        provider.restore(cp.id)
    assert "not empty" in str(err.value) and "overwrite" in str(err.value)
    with admin(dbname) as conn:
        conn.execute("DELETE FROM orders WHERE id > 10")
        conn.execute("CREATE TABLE junk (x int)")
    provider.restore(cp.id, {DATABASE: {"overwrite": True}})
    with admin(dbname) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 20000
        assert conn.execute("SELECT to_regclass('junk')").fetchone()[0] is None
    # An existing but empty database is restored into without overwrite.
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{dbname}_empty"')
    provider.restore(cp.id, {DATABASE: {"target": f"{dbname}_empty"}})
    with admin(f"{dbname}_empty") as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 500


def test_database_dropped_during_protect_puts_the_checkpoint_in_error(
    make_pg_provider, dbname, monkeypatch
):
    populate(dbname)
    provider = make_pg_provider("serial")
    real_main = pg_plugin.ProtectDatabase.on_main

    def drop_then_dump(self, checkpoint, context, resource, parameters, **kwargs):
        # Deterministic: the snapshot is exported (prepare_finish) and the database goes away
        # before pg_dump starts.
        assert self.conn is not None
        with admin() as conn:
            conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
        return real_main(self, checkpoint, context, resource, parameters, **kwargs)

    monkeypatch.setattr(pg_plugin.ProtectDatabase, "on_main", drop_then_dump)
    with pytest.raises(OperationFailed) as err:
        provider.protect([Resource(DATABASE, f"{SERVER_ID}/{dbname}")])
    message = str(err.value)
    assert "pg_dump" in message and "does not exist" in message, message
    cp = provider.checkpoints.get(err.value.record_id)
    assert cp.status == "error"
    record = cp.resource_records()[f"{DATABASE}#{SERVER_ID}/{dbname}"]
    assert record["status"] == "error" and record["error"]["hook"] == "on_main"


def test_delete_removes_the_dump(make_pg_provider, dbname, tmp_path):
    populate(dbname)
    provider = make_pg_provider()
    cp = provider.protect([Resource(DATABASE, f"{SERVER_ID}/{dbname}")])
    stored = cp.data_section().list_objects()
    assert any(k.endswith("/dump") for k in stored), stored  # the stream's record
    provider.delete(cp.id)
    assert cp.data_section().list_objects() == []
    assert provider.checkpoints.get(cp.id).status == "deleted"


def test_server_graph_with_roles(make_pg_provider, dbname):
    role = f"{dbname}_owner"
    populate(dbname)
    with admin() as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    with admin(dbname) as conn:
        conn.execute(f'ALTER TABLE customers OWNER TO "{role}"')
    try:
        provider = make_pg_provider(include_databases=f"{dbname}*")
        graph = provider.build_graph([Resource(SERVER, SERVER_ID)])
        assert [r.key for r in graph.nodes] == [
            f"{SERVER}#{SERVER_ID}",
            f"{DATABASE}#{SERVER_ID}/{dbname}",
        ]
        cp = provider.protect([Resource(SERVER, SERVER_ID)])
        records = cp.resource_records()
        server_info = records[f"{SERVER}#{SERVER_ID}"]["saved_info"]
        db_info = records[f"{DATABASE}#{SERVER_ID}/{dbname}"]["saved_info"]
        # Every database's snapshot was taken inside the server's prepare window.
        assert server_info["window_opened_at"] <= db_info["snapshot_at"]
        assert db_info["snapshot_at"] <= server_info["window_closed_at"]
        assert server_info["globals"]["size"] > 0
        with admin() as conn:
            conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
            conn.execute(f'DROP ROLE "{role}"')
        messages: list[str] = []

        class Recording(BaseProgress):
            def message(self, text: str) -> None:
                messages.append(text)

        provider.restore(cp.id, {SERVER: {"restore_roles": True}}, progress=Recording())
        with admin(dbname) as conn:
            owner = conn.execute(
                "SELECT tableowner FROM pg_tables WHERE tablename = 'customers'"
            ).fetchone()[0]
        assert owner == role
        assert any("already existed" in m and "postgres" in m for m in messages), messages
    finally:
        with admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_old_client_tools_fail_before_anything_is_dumped(make_pg_provider, dbname, tmp_path):
    populate(dbname)
    bin_dir = tmp_path / "oldbin"
    bin_dir.mkdir()
    for tool in ("pg_dump", "pg_dumpall"):
        script = bin_dir / tool
        script.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
        script.chmod(0o755)
    provider = make_pg_provider(pg_bin_dir=str(bin_dir))
    with pytest.raises(OperationFailed) as err:
        provider.protect([Resource(DATABASE, f"{SERVER_ID}/{dbname}")])
    message = str(err.value)
    assert "9.6" in message and "major version" in message and "on_prepare_begin" in message
    cp = provider.checkpoints.get(err.value.record_id)
    record = cp.resource_records()[f"{DATABASE}#{SERVER_ID}/{dbname}"]
    assert record["error"]["hook"] == "on_prepare_begin"


def test_passwords_never_show_in_errors(make_pg_provider, tmp_path, postgres_up):
    provider = make_pg_provider()
    provider.close()
    sections = {
        "provider": {
            "name": "pg-secret",
            "id": "pg-secret",
            "bank": "filesystem",
            "plugin": ["tutela.plugins.postgresql:PostgreSQLProtectionPlugin"],
        },
        "filesystem_bank": {"root": str(tmp_path / "bank2")},
        "postgresql": {"servers": "host=127.0.0.1 port=1 user=postgres password='s3cr3t pw'"},
    }
    secret = Provider.from_config(ProviderConfig.from_dict(sections))
    try:
        with pytest.raises(Exception) as err:
            secret.build_graph([Resource(DATABASE, "127.0.0.1:1/postgres")])
        assert "s3cr3t" not in str(err.value) and "password=***" in str(err.value)
    finally:
        secret.close()
    assert pg_plugin.redact("host=x password=abc user=y") == "host=x password=*** user=y"
    assert pg_plugin.redact("password = 'a b c' user=y") == "password = *** user=y"
