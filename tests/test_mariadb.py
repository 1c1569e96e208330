"""MariaDB::Server and MariaDB::Database against the real server on 127.0.0.1:3306."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pymysql
import pytest

from tutela import OperationFailed, Provider, ProviderConfig, Resource
from tutela.operations import Progress
from tutela.plugins import mariadb as my_plugin

pytestmark = pytest.mark.mariadb

SERVER_ID = "127.0.0.1:3306"
SERVER = "MariaDB::Server"
DATABASE = "MariaDB::Database"


def connect(database: str | None = None):
    return pymysql.connect(
        host="127.0.0.1", port=3306, user="root", password="", database=database,
        autocommit=True, connect_timeout=5,
    )  # fmt: skip


def q(sql: str, args=None, database: str | None = None) -> list[tuple]:
    conn = connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


@pytest.fixture(scope="session")
def mariadb_up():
    """Fail (never skip) when the server is not there: scripts/ensure-db-services starts it."""
    try:
        q("SELECT 1")
    except pymysql.Error as exc:
        pytest.fail(
            f"MariaDB on {SERVER_ID} is not reachable ({exc}); run scripts/ensure-db-services"
        )


@pytest.fixture
def dbname(mariadb_up):
    name = f"tutela_t_{uuid.uuid4().hex[:10]}"
    yield name
    for (db,) in q("SHOW DATABASES LIKE %s", (name + "%",)):
        q(f"DROP DATABASE IF EXISTS `{db}`")


@pytest.fixture
def make_my_provider(tmp_path):
    made: list[Provider] = []

    def make(executor: str = "threads", **section: str) -> Provider:
        sections = {
            "provider": {
                "name": "my-test",
                "id": "my-test",
                "bank": "filesystem",
                "plugin": ["tutela.plugins.mariadb:MariaDBProtectionPlugin"],
                "executor": executor,
                "max_workers": 4,
            },
            "filesystem_bank": {"root": str(tmp_path / "bank"), "fsync": "false"},
            "mariadb": {"servers": "host=127.0.0.1 port=3306 user=root", **section},
        }
        provider = Provider.from_config(
            ProviderConfig.from_dict(sections, path=str(tmp_path / "my.conf"))
        )
        made.append(provider)
        return provider

    yield make
    for p in made:
        p.close()


def populate(name: str, rows: int = 2000) -> None:
    q(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    conn = connect(name)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE counter (n INT PRIMARY KEY, payload VARBINARY(300)) ENGINE=InnoDB"
            )
            cur.execute("CREATE TABLE totals (id INT PRIMARY KEY, last INT) ENGINE=InnoDB")
            cur.execute("INSERT INTO totals VALUES (1, 0)")
            cur.execute(
                "CREATE TABLE blobs (id INT PRIMARY KEY, data LONGBLOB, note TEXT) ENGINE=InnoDB"
            )
            cur.execute(
                "INSERT INTO blobs VALUES (1, %s, %s)",
                (bytes(range(256)) * 1000, "naïve 'quoted' \\ text"),
            )
            cur.execute("CREATE VIEW recent AS SELECT n FROM counter WHERE n > 10")
            cur.execute("CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2")
            cur.execute(
                "CREATE TRIGGER counter_ins BEFORE INSERT ON counter FOR EACH ROW "
                "SET NEW.payload = COALESCE(NEW.payload, 'from trigger')"
            )
            for n in range(1, rows + 1, 500):
                values = ",".join(f"({i}, NULL)" for i in range(n, min(n + 500, rows + 1)))
                cur.execute(f"INSERT INTO counter VALUES {values}")
            cur.execute("UPDATE totals SET last = %s", (rows,))
    finally:
        conn.close()


def check_prefix(name: str) -> int:
    k, lo, hi = q("SELECT COUNT(*), MIN(n), MAX(n) FROM counter", database=name)[0]
    assert (lo, hi) == (1, k), f"rows are not 1..{k}"
    assert q("SELECT last FROM totals", database=name)[0][0] == k
    return k


def test_protect_while_a_writer_commits_gives_a_consistent_prefix(make_my_provider, dbname):
    populate(dbname)
    stop = threading.Event()
    done: list[int] = []

    def writer():
        conn = connect(dbname)
        conn.autocommit(False)
        n = 2000
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    n += 1
                    cur.execute("INSERT INTO counter (n) VALUES (%s)", (n,))
                    cur.execute("UPDATE totals SET last = %s", (n,))
                    conn.commit()
                    done.append(n)
        finally:
            conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(done) < 200:
            time.sleep(0.01)
        before = done[-1]
        provider = make_my_provider()
        resource = Resource(DATABASE, f"{SERVER_ID}/{dbname}")
        cp = provider.protect([resource])
        after = done[-1]
    finally:
        stop.set()
        thread.join()
    assert after > before
    info = cp.resource_records()[resource.key]["saved_info"]
    assert info["database"] == dbname and info["tables"] == 4
    assert info["character_set"] == "utf8mb4" and info["collation"] == "utf8mb4_unicode_ci"
    restored = f"{dbname}_copy"
    record = provider.restore(cp.id, {DATABASE: {"target": restored}})
    assert record.status == "success"
    k = check_prefix(restored)
    assert before <= k <= after
    # Routines, triggers, views, binary data and the character set came back too.
    assert q("SELECT twice(21)", database=restored)[0][0] == 42
    assert q("SELECT COUNT(*) FROM recent", database=restored)[0][0] == k - 10
    assert q("SELECT payload FROM counter WHERE n = 1", database=restored)[0][0] == b"from trigger"
    assert q("SELECT data, note FROM blobs", database=restored)[0] == (
        bytes(range(256)) * 1000,
        "naïve 'quoted' \\ text",
    )
    assert q(
        "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        (restored,),
    ) == [("utf8mb4_unicode_ci",)]
    new = record.resource_records()[resource.key]["new_resource"]
    assert new["id"] == f"{SERVER_ID}/{restored}"


def test_refuses_a_non_empty_target_then_overwrites(make_my_provider, dbname):
    populate(dbname, rows=100)
    provider = make_my_provider("serial")
    cp = provider.protect([Resource(DATABASE, f"{SERVER_ID}/{dbname}")])
    with pytest.raises(OperationFailed) as err:
        provider.restore(cp.id)
    assert "not empty" in str(err.value) and "overwrite" in str(err.value)
    q("DELETE FROM counter WHERE n > 5", database=dbname)
    q("CREATE TABLE junk (x INT)", database=dbname)
    provider.restore(cp.id, {DATABASE: {"overwrite": True}})
    assert check_prefix(dbname) == 100
    assert q("SHOW TABLES LIKE 'junk'", database=dbname) == []


def test_server_graph_with_a_global_read_lock_and_users(make_my_provider, dbname):
    populate(dbname, rows=50)
    populate(f"{dbname}_b", rows=70)
    user = dbname[-12:]
    q(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{user}'")
    q(f"GRANT SELECT ON `{dbname}`.* TO '{user}'@'%'")
    provider = make_my_provider(include_databases=f"{dbname}*")
    graph = provider.build_graph([Resource(SERVER, SERVER_ID)])
    assert [r.id for r in graph.nodes] == [
        SERVER_ID,
        f"{SERVER_ID}/{dbname}",
        f"{SERVER_ID}/{dbname}_b",
    ]
    cp = provider.protect([Resource(SERVER, SERVER_ID)], {SERVER: {"global_read_lock": True}})
    records = cp.resource_records()
    server_info = records[f"{SERVER}#{SERVER_ID}"]["saved_info"]
    assert server_info["global_read_lock"] is True and server_info["users"]["size"] > 0
    for name in (dbname, f"{dbname}_b"):
        info = records[f"{DATABASE}#{SERVER_ID}/{name}"]["saved_info"]
        assert server_info["window_opened_at"] <= info["snapshot_at"]
        assert info["snapshot_at"] <= server_info["window_closed_at"]
    # The lock is gone: a write goes through at once.
    q("INSERT INTO counter (n) VALUES (1000)", database=dbname)
    q(f"DROP DATABASE `{dbname}`")
    q(f"DROP DATABASE `{dbname}_b`")
    q(f"DROP USER '{user}'@'%'")
    messages: list[str] = []

    class Recording(Progress):
        def message(self, text: str) -> None:
            messages.append(text)

    record = provider.restore(cp.id, {SERVER: {"restore_roles": True}}, progress=Recording())
    assert record.status == "success"
    try:
        assert check_prefix(dbname) == 50 and check_prefix(f"{dbname}_b") == 70
        grants = " ".join(r[0] for r in q(f"SHOW GRANTS FOR '{user}'@'%'"))
        assert f"GRANT SELECT ON `{dbname}`.*" in grants
        assert any("already existed" in m and "root@" in m for m in messages), messages
    finally:
        q(f"DROP USER IF EXISTS '{user}'@'%'")


def test_delete_removes_the_dump(make_my_provider, dbname):
    populate(dbname, rows=10)
    provider = make_my_provider()
    cp = provider.protect([Resource(DATABASE, f"{SERVER_ID}/{dbname}")])
    assert any(k.endswith("/dump") for k in cp.data_section().list_objects())
    provider.delete(cp.id)
    assert cp.data_section().list_objects() == []


def test_old_client_tools_fail_before_anything_is_dumped(make_my_provider, dbname, tmp_path):
    populate(dbname, rows=10)
    bin_dir = tmp_path / "oldbin"
    bin_dir.mkdir()
    script = bin_dir / "mariadb-dump"
    script.write_text("#!/bin/sh\necho 'mariadb-dump  Ver 10.19 Distrib 10.3.39-MariaDB'\n")
    script.chmod(0o755)
    provider = make_my_provider(bin_dir=str(bin_dir))
    with pytest.raises(OperationFailed) as err:
        provider.protect([Resource(DATABASE, f"{SERVER_ID}/{dbname}")])
    assert "10.3" in str(err.value) and "on_prepare_begin" in str(err.value)


def test_password_stays_out_of_errors_and_argv(make_my_provider, tmp_path, mariadb_up):
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t-pw\n")
    conf = my_plugin.ServerConf("host=127.0.0.1 port=1 user=root", str(secret), None)
    with pytest.raises(Exception) as err:
        conf.query("SELECT 1")
    assert "s3cr3t" not in str(err.value)
    with conf.client_args() as args:
        assert not any("s3cr3t" in a for a in args)
        cnf = Path(args[0].split("=", 1)[1])
        assert "s3cr3t-pw" in cnf.read_text()
    assert not cnf.exists()
