"""Tutela::SQLite: consistent online snapshots of a database that is being written to."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from tutela import OperationFailed, Provider, ProviderConfig, Resource
from tutela.plugins import sqlite as sqlite_plugin

SQLITE = "Tutela::SQLite"
DIR = "Tutela::Directory"

WRITER = textwrap.dedent(
    """
    import sqlite3, sys, time
    path, mode = sys.argv[1], sys.argv[2]
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.execute("PRAGMA synchronous=OFF")  # speed only: no fsync per commit on a busy disk
    n = conn.execute("SELECT coalesce(max(n), 0) FROM counter").fetchone()[0]
    while True:
        n += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO counter (n, payload) VALUES (?, randomblob(512))", (n,))
        conn.execute("UPDATE totals SET rows = rows + 1, last = ?", (n,))
        conn.execute("COMMIT")
        if n % 50 == 0:
            time.sleep(0.001)
    """
)


@pytest.fixture
def make_sqlite_provider(tmp_path):
    made: list[Provider] = []

    def make(executor: str = "threads") -> Provider:
        (tmp_path / "snapshots").mkdir(exist_ok=True)
        sections = {
            "provider": {
                "name": "sqlite-test",
                "id": "sqlite-test",
                "bank": "filesystem",
                "plugin": ["directory", "tutela.plugins.sqlite:SQLiteProtectionPlugin"],
                "executor": executor,
                "max_workers": 4,
            },
            "filesystem_bank": {"root": str(tmp_path / "bank"), "fsync": "false"},
            "sqlite": {"snapshot_dir": str(tmp_path / "snapshots")},
        }
        provider = Provider.from_config(
            ProviderConfig.from_dict(sections, path=str(tmp_path / "sqlite.conf"))
        )
        made.append(provider)
        return provider

    yield make
    for p in made:
        p.close()


def create_db(path, rows: int = 0) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE counter (n INTEGER PRIMARY KEY, payload BLOB)")
    conn.execute("CREATE TABLE totals (rows INTEGER, last INTEGER)")
    conn.execute("INSERT INTO totals VALUES (0, 0)")
    conn.execute("CREATE INDEX counter_payload ON counter (payload)")
    for n in range(1, rows + 1):
        conn.execute("INSERT INTO counter VALUES (?, randomblob(64))", (n,))
    conn.execute("UPDATE totals SET rows = ?, last = ?", (rows, rows))
    conn.close()


def count_rows(path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        return conn.execute("SELECT count(*) FROM counter").fetchone()[0]
    finally:
        conn.close()


def check_prefix(path) -> int:
    """Integrity ok, rows 1..k without a gap, and the totals row agrees (same transaction)."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        k, lo, hi = conn.execute("SELECT count(*), min(n), max(n) FROM counter").fetchone()
        assert (lo, hi) == (1, k), f"rows are not 1..{k}: min {lo}, max {hi}"
        assert conn.execute("SELECT rows, last FROM totals").fetchone() == (k, k)
        return k
    finally:
        conn.close()


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_protect_while_a_writer_commits_gives_a_consistent_prefix(
    make_sqlite_provider, tmp_path, journal_mode
):
    db = tmp_path / "live" / "app.db"
    db.parent.mkdir()
    create_db(db)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), journal_mode])
    try:
        deadline = time.time() + 60
        while count_rows(db) < 200:
            assert writer.poll() is None, "writer died"
            assert time.time() < deadline, "writer too slow"
            time.sleep(0.05)
        before = count_rows(db)
        provider = make_sqlite_provider()
        cp = provider.protect([Resource(SQLITE, str(db))])
        after = count_rows(db)
        assert writer.poll() is None, "the writer must have kept running during protect"
    finally:
        writer.kill()
        writer.wait()
    assert after > before, "the writer made no progress while the database was protected"
    assert cp.status == "available"
    info = cp.resource_records()[f"{SQLITE}#{db}"]["saved_info"]
    assert info["path"] == str(db) and info["sqlite_version"] == sqlite3.sqlite_version
    assert info["page_count"] > 0 and info["size"] == info["page_count"] * info["page_size"]
    assert info["snapshot_started_at"] <= info["snapshot_at"]
    assert os.listdir(tmp_path / "snapshots") == [], "the snapshot must be removed on complete"

    target = tmp_path / "restored" / "app.db"
    provider.restore(cp.id, {SQLITE: {"target": str(target)}})
    k = check_prefix(target)
    assert before <= k <= after
    assert not list((tmp_path / "restored").glob(".tutela-restore-*"))


def test_restore_refuses_existing_file_then_overwrites(make_sqlite_provider, tmp_path):
    db = tmp_path / "one.db"
    create_db(db, rows=10)
    provider = make_sqlite_provider("serial")
    cp = provider.protect([Resource(SQLITE, str(db))])
    with pytest.raises(OperationFailed) as err:
        provider.restore(cp.id)
    assert "exists" in str(err.value) and "overwrite" in str(err.value)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM counter WHERE n > 3")
    conn.execute("UPDATE totals SET rows = 3, last = 3")
    conn.close()
    # A stale journal next to the old file must not be replayed onto the restored one.
    (tmp_path / "one.db-journal").write_bytes(b"garbage")
    provider.restore(cp.id, {SQLITE: {"overwrite": True}})
    assert check_prefix(db) == 10
    assert not (tmp_path / "one.db-journal").exists()


def test_damaged_restore_fails_integrity_check(make_sqlite_provider, tmp_path, monkeypatch):
    db = tmp_path / "one.db"
    create_db(db, rows=200)
    provider = make_sqlite_provider("serial")
    cp = provider.protect([Resource(SQLITE, str(db))])

    real_open = sqlite_plugin.open_stream

    def corrupting(checkpoint, context, ref):
        for i, block in enumerate(real_open(checkpoint, context, ref)):
            if i == 0:
                block = block[:4096] + b"\xff" * 4096 + block[8192:]
            yield block

    monkeypatch.setattr(sqlite_plugin, "open_stream", corrupting)
    target = tmp_path / "bad" / "one.db"
    with pytest.raises(OperationFailed) as err:
        provider.restore(cp.id, {SQLITE: {"target": str(target)}})
    assert "integrity_check" in str(err.value) or "cannot be opened" in str(err.value)
    assert not target.exists()
    assert not list((tmp_path / "bad").iterdir())


def test_abort_removes_the_snapshot(make_sqlite_provider, tmp_path, monkeypatch):
    db = tmp_path / "one.db"
    create_db(db, rows=5)
    provider = make_sqlite_provider("serial")

    def failing(*args, **kwargs):
        raise OSError("bank is full")

    monkeypatch.setattr(sqlite_plugin, "save_stream", failing)
    with pytest.raises(OperationFailed) as err:
        provider.protect([Resource(SQLITE, str(db))])
    assert "bank is full" in str(err.value)
    assert os.listdir(tmp_path / "snapshots") == []


def test_directory_and_its_database_are_one_graph(make_sqlite_provider, tmp_path):
    app = tmp_path / "app"
    (app / "data").mkdir(parents=True)
    (app / "config.ini").write_text("[app]\nname = shop\n")
    (app / "data" / "notes.txt").write_text("not a database\n")
    (app / "data" / "fake.db").write_bytes(b"SQLite format 2\x00 and then some")
    create_db(app / "data" / "shop.db", rows=42)
    provider = make_sqlite_provider()
    graph = provider.build_graph([Resource(DIR, str(app))])
    assert [r.key for r in graph.nodes] == [f"{DIR}#{app}", f"{SQLITE}#{app}/data/shop.db"]

    cp = provider.protect([Resource(DIR, str(app))])
    records = cp.resource_records()
    assert records[f"{DIR}#{app}"]["saved_info"]["files"] == 3, "the db is left to its plugin"
    assert records[f"{SQLITE}#{app}/data/shop.db"]["saved_info"]["page_count"] > 0

    new = tmp_path / "elsewhere"
    restore = provider.restore(cp.id, {DIR: {"target": str(new)}})
    assert restore.status == "success"
    assert (new / "config.ini").read_text() == "[app]\nname = shop\n"
    assert (new / "data" / "fake.db").read_bytes().startswith(b"SQLite format 2")
    assert check_prefix(new / "data" / "shop.db") == 42
    records = restore.resource_records()
    new_db = records[f"{SQLITE}#{app}/data/shop.db"]["new_resource"]["id"]
    assert new_db == str(new / "data" / "shop.db")
    # The original is untouched.
    assert check_prefix(app / "data" / "shop.db") == 42

    stored = cp.data_section().list_objects()
    assert any(k.endswith("/database") for k in stored), stored  # the stream's record
    provider.delete(cp.id)
    assert cp.data_section().list_objects() == []
