"""The outbox and call-record tables on a real SQLite file: schema versions and the upgrade
of an old file in place, indexes behind every hot query, retention, file modes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from gateway import store as store_mod
from gateway.store import MIGRATIONS, SCHEMA_VERSION, NewEvent, Outcome, Store, migrate

SECRET = "s3cret-that-must-not-stay-on-disk"


def body(app_id: str, call_id: str, event: str = "call.completed") -> bytes:
    return json.dumps({"event": event, "call": {"id": call_id, "application_id": app_id,
                                                "customer_id": "cust_1"}}).encode()


def make_v1_file(path: Path) -> None:
    """A database as the gateway wrote it before schema versions (user_version 0)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for step in MIGRATIONS[0]:
        assert isinstance(step, str)
        db.execute(step)
    rows = [("evt_a1", "call_a", "delivered", 10.0), ("evt_a2", "call_a", "pending", 11.0),
            ("evt_a3", "call_a", "pending", 12.0), ("evt_b1", "call_b", "pending", 13.0)]
    for event_id, call_id, state, t in rows:
        db.execute("INSERT INTO outbox(event_id, call_id, url, secret, body, created_at,"
                   " next_at, state) VALUES (?,?,?,?,?,?,?,?)",
                   (event_id, call_id, "http://Hooks.example:8080/events", SECRET,
                    body("app_1", call_id), t, t, state))
    db.execute("INSERT INTO outbox(event_id, call_id, url, secret, body, created_at, next_at)"
               " VALUES ('evt_pruned', 'call_z', 'http://h/e', 's', x'', 1, 1)")
    db.execute("DELETE FROM outbox WHERE event_id = 'evt_pruned'")  # seq 5, pruned
    for call_id, cust, t in (("call_a", "cust_1", 1.0), ("call_b", "cust_2", 2.0)):
        db.execute("INSERT INTO calls(call_id, record, updated_at) VALUES (?,?,?)",
                   (call_id, json.dumps({"id": call_id, "customer_id": cust}), t))
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()


def test_an_old_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_v1_file(path)
    os.chmod(path, 0o644)
    store = Store(path)
    db = store.db
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
    assert "secret" not in columns and {"app_id", "host", "due_at"} <= columns
    rows = {r[0]: r[1:] for r in db.execute(
        "SELECT event_id, app_id, host, state, due_at FROM outbox")}
    assert rows["evt_a2"] == ("app_1", "http://hooks.example:8080", "pending", 11.0)  # head
    assert rows["evt_a3"][3] is None and rows["evt_b1"][3] == 13.0  # a3 waits for a2
    assert rows["evt_a1"][2] == "delivered" and rows["evt_a1"][3] is None
    assert [r.event_id for r in store.outbox_heads()] == ["evt_a2", "evt_b1"]
    assert [r["id"] for r in store.calls_recent(10, "cust_2")] == ["call_b"]
    assert [r["id"] for r in store.calls_recent(10)] == ["call_b", "call_a"]
    store.outbox_apply([NewEvent("evt_new", "call_c", "http://h/e", "app_1", b"{}", 1.0)], [])
    new = store.outbox_row("evt_new")
    assert new is not None and new["seq"] == 6  # not 5, the pruned event's
    store.close()
    # The old secrets are gone from the file itself, not just from the table.
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("old.db"))
    assert SECRET.encode() not in data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    Store(path).close()  # opening an up-to-date file changes nothing


def test_migrations_extend_by_appending(tmp_path: Path) -> None:
    """How the next table gets added: a new MIGRATIONS entry, applied once, in place."""
    path = tmp_path / "m.db"
    Store(path).close()
    extra = (*MIGRATIONS, ("CREATE TABLE next_table (call_id TEXT PRIMARY KEY)",))
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, extra) == SCHEMA_VERSION
    assert migrate(db, extra) == SCHEMA_VERSION + 1  # already there: nothing to do
    db.execute("INSERT INTO next_table VALUES ('call_x')")
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        Store(path)  # a file from a newer gateway is refused, not damaged


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    make_v1_file(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.create_function("url_host", 1, store_mod.url_host)
    broken = (*MIGRATIONS, ("CREATE TABLE t (x)", "SELECT no_such_function()"))
    with pytest.raises(sqlite3.OperationalError):
        migrate(db, broken)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    assert "secret" in {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
    db.close()


def plan(db: sqlite3.Connection, sql: str, *args: object) -> str:
    return " / ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, args))


def test_hot_queries_use_indexes(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    db = store.db
    due = plan(db, "SELECT seq FROM outbox WHERE host = ? AND due_at IS NOT NULL"
               " AND due_at <= ? AND seq NOT IN (?, ?) ORDER BY due_at LIMIT ?",
               "h", 1.0, 1, 2, 8)
    assert "INDEX outbox_due" in due and "TEMP B-TREE" not in due, due
    nxt = plan(db, "SELECT min(due_at) FROM outbox WHERE host = ? AND due_at > ?", "h", 1.0)
    assert "outbox_due" in nxt, nxt
    head = plan(db, "SELECT min(seq) FROM outbox WHERE call_id = ? AND state = 'pending'", "c")
    assert "outbox_pending" in head, head
    mine = plan(db, "SELECT record FROM calls WHERE customer_id = ?"
                " ORDER BY updated_at DESC LIMIT ?", "c", 50)
    assert "calls_customer" in mine and "TEMP B-TREE" not in mine, mine
    everyone = plan(db, "SELECT record FROM calls ORDER BY updated_at DESC LIMIT ?", 50)
    assert "calls_updated" in everyone, everyone
    store.close()


def add(store: Store, event_id: str, call_id: str, t: float, url: str = "http://a/e") -> int:
    store.outbox_apply([NewEvent(event_id, call_id, url, "app_1", b"{}", t)], [])
    row = store.outbox_row(event_id)
    assert row is not None
    return int(row["seq"])


def test_heads_are_handed_on_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "h.db")
    s1 = add(store, "e1", "c", 1.0)
    s2 = add(store, "e2", "c", 2.0)
    add(store, "e3", "c", 3.0)
    add(store, "x1", "other", 1.5, url="http://b:81/e")
    assert [r.event_id for r in store.outbox_due("http://a:80", 10.0, 8)] == ["e1"]
    assert [r.event_id for r in store.outbox_due("http://b:81", 10.0, 8)] == ["x1"]
    assert store.outbox_due("http://a:80", 10.0, 8, exclude=[s1]) == []
    # a failure keeps the head and schedules it; nothing else of the call moves
    store.outbox_apply([], [Outcome(s1, "c", 10.0, delivered=False, error="x", next_at=20.0)])
    assert store.outbox_due("http://a:80", 10.0, 8) == []
    assert store.outbox_next_due("http://a:80", 10.0) == 20.0
    # given up: the next event becomes the head, due at once
    store.outbox_apply([], [Outcome(s1, "c", 21.0, delivered=False, error="x")])
    assert [r.event_id for r in store.outbox_due("http://a:80", 21.0, 8)] == ["e2"]
    store.outbox_apply([], [Outcome(s2, "c", 22.0, delivered=True)])
    assert [r.event_id for r in store.outbox_due("http://a:80", 22.0, 8)] == ["e3"]
    assert store.outbox_pending_count() == 2
    e1 = store.outbox_row("e1")
    assert e1 is not None and e1["state"] == "dead" and e1["attempts"] == 2
    store.close()


def test_finished_events_are_pruned_by_retention(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.db")
    for i in range(7):
        seq = add(store, f"d{i}", f"c{i}", 1.0)
        store.outbox_apply([], [Outcome(seq, f"c{i}", 100.0 + i, delivered=i % 2 == 0)])
    add(store, "pending", "cp", 1.0)
    assert store.outbox_prune("delivered", older_than=103.0, batch=1) == 1
    assert store.outbox_prune("delivered", older_than=103.0) == 1  # 100 and 102
    assert store.outbox_prune("dead", older_than=1000.0) == 3
    assert store.outbox_prune("delivered", older_than=1000.0) == 2
    assert store.outbox_pending_count() == 1
    assert {r[0] for r in store.db.execute("SELECT event_id FROM outbox")} == {"pending"}
    store.close()


def test_database_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "var" / "sub" / "gw.db"
        store = Store(path)
        store.call_save("call_a", {"id": "call_a", "customer_id": "c"})
        for p in path.parent.iterdir():  # gw.db, gw.db-wal, gw.db-shm
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert {p.name for p in path.parent.iterdir()} >= {"gw.db", "gw.db-wal"}
        for d in (path.parent, path.parent.parent):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        store.close()
    finally:
        os.umask(old)


def test_url_host() -> None:
    assert store_mod.url_host("https://Example.com/x?y") == "https://example.com:443"
    assert store_mod.url_host("http://10.0.0.1:3000/e") == "http://10.0.0.1:3000"
    assert store_mod.url_host("http://[::1]:99/e") == "http://::1:99"
