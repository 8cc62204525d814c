"""SQLite persistence: the webhook outbox and call records.

Used from the asyncio thread only. Writes are small and local (WAL mode,
synchronous=NORMAL), so they run inline rather than in a thread pool.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    call_id      TEXT NOT NULL,
    url          TEXT NOT NULL,
    secret       TEXT NOT NULL,
    body         BLOB NOT NULL,
    created_at   REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    last_error   TEXT,
    state        TEXT NOT NULL DEFAULT 'pending'   -- pending | delivered | dead
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(call_id, seq) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS calls (
    call_id      TEXT PRIMARY KEY,
    record       TEXT NOT NULL,       -- JSON: the call's public view
    updated_at   REAL NOT NULL
);
"""


# Calls in progress, so that a process that dies (kill -9, OOM, an abort in C) still owes
# each of them exactly one call.completed: the next start sends it (gateway_restart).
# `seen_at` is refreshed every few seconds while the process lives: the best guess of when
# a call ended if the process died under it.
LIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS live_calls (
    call_id      TEXT PRIMARY KEY,
    app_id       TEXT NOT NULL,
    record       TEXT NOT NULL,       -- JSON: the call's public record when last written
    seen_at      REAL NOT NULL
);
"""


@dataclass(frozen=True)
class LiveCall:
    call_id: str
    app_id: str
    record: dict[str, Any]
    seen_at: float


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    event_id: str
    call_id: str
    url: str
    secret: str
    body: bytes
    created_at: float
    attempts: int
    next_at: float


class Store:
    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.executescript(LIVE_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- outbox -------------------------------------------------------------------
    def outbox_add(
        self, event_id: str, call_id: str, url: str, secret: str, body: bytes, now: float
    ) -> None:
        self.db.execute(
            "INSERT INTO outbox(event_id, call_id, url, secret, body, created_at, next_at)"
            " VALUES (?,?,?,?,?,?,?)",
            (event_id, call_id, url, secret, body, now, now),
        )

    def outbox_heads(self) -> list[OutboxRow]:
        """The oldest pending event of every call: only these may be sent (per-call order)."""
        rows = self.db.execute(
            "SELECT seq, event_id, call_id, url, secret, body, created_at, attempts, next_at"
            " FROM outbox WHERE seq IN (SELECT MIN(seq) FROM outbox WHERE state='pending'"
            " GROUP BY call_id)"
        ).fetchall()
        return [OutboxRow(*r) for r in rows]

    def outbox_delivered(self, seq: int) -> None:
        self.db.execute("UPDATE outbox SET state='delivered', attempts=attempts+1 WHERE seq=?",
                        (seq,))

    def outbox_failed(self, seq: int, error: str, next_at: float, dead: bool) -> None:
        self.db.execute(
            "UPDATE outbox SET attempts=attempts+1, last_error=?, next_at=?, state=? WHERE seq=?",
            (error[:500], next_at, "dead" if dead else "pending", seq),
        )

    def outbox_pending_count(self) -> int:
        return int(self.db.execute(
            "SELECT COUNT(*) FROM outbox WHERE state='pending'").fetchone()[0])

    def outbox_prune(self, older_than: float) -> None:
        self.db.execute("DELETE FROM outbox WHERE state='delivered' AND created_at < ?",
                        (older_than,))

    # -- call records -------------------------------------------------------------
    def call_save(self, call_id: str, record: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO calls(call_id, record, updated_at) VALUES (?,?,?)"
            " ON CONFLICT(call_id) DO UPDATE SET record=excluded.record,"
            " updated_at=excluded.updated_at",
            (call_id, json.dumps(record), time.time()),
        )

    def call_get(self, call_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT record FROM calls WHERE call_id=?", (call_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def calls_prune(self, older_than: float) -> int:
        cur = self.db.execute("DELETE FROM calls WHERE updated_at < ?", (older_than,))
        return cur.rowcount

    def calls_recent(self, limit: int, customer_id: str | None = None) -> list[dict[str, Any]]:
        """The most recently finished calls, newest first (of one customer if given)."""
        if customer_id is None:
            rows = self.db.execute(
                "SELECT record FROM calls ORDER BY updated_at DESC LIMIT ?", (limit,))
        else:
            rows = self.db.execute(
                "SELECT record FROM calls WHERE json_extract(record, '$.customer_id') = ?"
                " ORDER BY updated_at DESC LIMIT ?", (customer_id, limit))
        return [json.loads(r[0]) for r in rows.fetchall()]

    # -- live calls (crash recovery) -------------------------------------------------
    def live_put(self, call_id: str, app_id: str, record: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO live_calls(call_id, app_id, record, seen_at) VALUES (?,?,?,?)"
            " ON CONFLICT(call_id) DO UPDATE SET record=excluded.record,"
            " seen_at=excluded.seen_at",
            (call_id, app_id, json.dumps(record), time.time()),
        )

    def live_delete(self, call_id: str) -> None:
        self.db.execute("DELETE FROM live_calls WHERE call_id=?", (call_id,))

    def live_touch(self, now: float) -> None:
        self.db.execute("UPDATE live_calls SET seen_at=?", (now,))

    def live_all(self) -> list[LiveCall]:
        rows = self.db.execute("SELECT call_id, app_id, record, seen_at FROM live_calls")
        return [LiveCall(r[0], r[1], json.loads(r[2]), r[3]) for r in rows.fetchall()]

    def transaction(self) -> Any:
        """`with store.transaction():` commits all of it or none (BEGIN IMMEDIATE)."""
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
