"""SQLite persistence: the webhook outbox and call records.

One file, two kinds of connection. The event loop's `Store` serves call records: point
writes and indexed reads, sub-millisecond. The outbox opens its own `Store` on its own
thread (gateway/outbox.py), so its scans, batches and prunes never run on the loop.

Durability (WAL): the outbox's connection commits with synchronous=FULL, the loop's with
NORMAL. FULL fsyncs the WAL at every commit, so a queued event survives a power cut or a
kernel crash too, not only a crash of the process; the outbox commits in batches on its
own thread, so that costs the loop nothing and delivery about a millisecond at the median
(`python -m bench.outbox --only sync`, BENCHMARKS.md "Webhook outbox"), plus up to 20 ms
under load, where commits are spaced to share them between calls (outbox.COALESCE_S).
Call records stay NORMAL: an fsync per call end would block the event loop, and the next
FULL commit of the outbox syncs them along (one WAL for both).

Schema changes are MIGRATIONS entries, applied in order inside one transaction and
recorded in `PRAGMA user_version`; a file from before versioning has version 0 and the
original tables, which entry 1 leaves as they are. To add a table or a column, append an
entry; never edit one that has shipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gateway.files import private_dir, private_file

Step = str | Callable[[sqlite3.Connection], None]


def url_host(url: str) -> str:
    """The destination a concurrency cap applies to: scheme://host:port."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"
    except ValueError:
        return url


_OUTBOX_V2 = """
CREATE TABLE outbox_v2 (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    call_id      TEXT NOT NULL,
    url          TEXT NOT NULL,
    host         TEXT NOT NULL,       -- url_host(url): per-destination concurrency
    app_id       TEXT NOT NULL,       -- its secret is looked up in the config when sending
    body         BLOB NOT NULL,
    created_at   REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    -- Set on the oldest pending event of each call only (its head): the dispatcher reads
    -- due heads from an index instead of grouping every pending row by call.
    due_at       REAL,
    last_error   TEXT,
    state        TEXT NOT NULL DEFAULT 'pending',   -- pending | delivered | dead
    finished_at  REAL                               -- when delivered or given up
)
"""

MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    # 1: the original schema.
    (
        """CREATE TABLE IF NOT EXISTS outbox (
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
            state        TEXT NOT NULL DEFAULT 'pending'
        )""",
        "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(call_id, seq)"
        " WHERE state = 'pending'",
        """CREATE TABLE IF NOT EXISTS calls (
            call_id      TEXT PRIMARY KEY,
            record       TEXT NOT NULL,
            updated_at   REAL NOT NULL
        )""",
    ),
    # 2: the outbox keeps the application ID, not its secret (migrate() zeroes the pages
    # the old rows leave behind); due heads and destinations are indexed; call records get
    # an indexed customer_id.
    (
        _OUTBOX_V2,
        "INSERT INTO outbox_v2(seq, event_id, call_id, url, host, app_id, body, created_at,"
        " attempts, next_at, last_error, state, finished_at)"
        " SELECT seq, event_id, call_id, url, url_host(url),"
        " coalesce(json_extract(body, '$.call.application_id'), ''), body, created_at,"
        " attempts, next_at, last_error, state,"
        " CASE WHEN state = 'pending' THEN NULL ELSE next_at END FROM outbox",
        # Sequence numbers of pruned rows are not handed out again.
        "INSERT INTO sqlite_sequence(name, seq) SELECT 'outbox_v2', 0 WHERE NOT EXISTS"
        " (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox_v2')",
        "UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT old.seq FROM"
        " sqlite_sequence AS old WHERE old.name = 'outbox'), 0)) WHERE name = 'outbox_v2'",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_v2 RENAME TO outbox",
        "UPDATE outbox SET due_at = next_at WHERE seq IN"
        " (SELECT min(seq) FROM outbox WHERE state = 'pending' GROUP BY call_id)",
        "CREATE INDEX outbox_pending ON outbox(call_id, seq) WHERE state = 'pending'",
        "CREATE INDEX outbox_due ON outbox(host, due_at) WHERE due_at IS NOT NULL",
        "CREATE INDEX outbox_finished ON outbox(state, finished_at)"
        " WHERE finished_at IS NOT NULL",
        "ALTER TABLE calls ADD COLUMN customer_id TEXT NOT NULL DEFAULT ''",
        "UPDATE calls SET customer_id = coalesce(json_extract(record, '$.customer_id'), '')",
        "CREATE INDEX calls_customer ON calls(customer_id, updated_at)",
        "CREATE INDEX calls_updated ON calls(updated_at)",
    ),
    # 3: calls in progress, so that a process that dies (kill -9, OOM, an abort in C) still
    # owes each of them exactly one call.completed: the next start sends it (gateway_restart).
    # `seen_at` is refreshed every few seconds while the process lives: the best guess of
    # when a call ended if the process died under it.
    (
        """CREATE TABLE live_calls (
            call_id      TEXT PRIMARY KEY,
            app_id       TEXT NOT NULL,
            record       TEXT NOT NULL,       -- JSON: the call's public record when last written
            seen_at      REAL NOT NULL
        )""",
    ),
    # 4: room recordings. A row is written when a recording starts (status 'recording'), so
    # a process killed during it leaves the row for the next start to finish: it repairs the
    # file's WAV header and completes the row (reason gateway_restart).
    (
        """CREATE TABLE recordings (
            rec_id       TEXT PRIMARY KEY,
            customer_id  TEXT NOT NULL,
            room         TEXT NOT NULL,
            app_id       TEXT NOT NULL,       -- whose secret signs its events
            status_url   TEXT,                -- the room's, if it had one (else event_url)
            started_at   REAL NOT NULL,
            ended_at     REAL,
            duration_s   REAL,
            status       TEXT NOT NULL,       -- recording | completed | failed
            path         TEXT NOT NULL,
            reason       TEXT                 -- why it stopped (or failed)
        )""",
        "CREATE INDEX recordings_status ON recordings(status)",
        "CREATE INDEX recordings_ended ON recordings(ended_at) WHERE ended_at IS NOT NULL",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

Synchronous = Literal["NORMAL", "FULL"]


@dataclass(frozen=True)
class LiveCall:
    call_id: str
    app_id: str
    record: dict[str, Any]
    seen_at: float


@dataclass(frozen=True)
class Recording:
    rec_id: str
    customer_id: str
    room: str
    app_id: str
    status_url: str | None
    started_at: float
    ended_at: float | None
    duration_s: float | None
    status: str
    path: str
    reason: str | None


_REC = ("rec_id, customer_id, room, app_id, status_url, started_at, ended_at, duration_s,"
        " status, path, reason")


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    event_id: str
    call_id: str
    url: str
    host: str
    app_id: str
    body: bytes
    created_at: float
    attempts: int
    next_at: float


_ROW = "seq, event_id, call_id, url, host, app_id, body, created_at, attempts, next_at"


@dataclass(frozen=True)
class NewEvent:
    event_id: str
    call_id: str
    url: str
    app_id: str
    body: bytes
    created_at: float
    # The call's last event (call.completed): its live_calls row goes in the same
    # transaction as this insert, so a crash leaves exactly one of the two.
    ends_call: bool = False


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt. `next_at` None: finished (delivered or dead)."""

    seq: int
    call_id: str
    at: float
    delivered: bool
    error: str = ""
    next_at: float | None = None


class Store:
    def __init__(self, path: str | Path, *, synchronous: Synchronous = "NORMAL") -> None:
        self.path = str(path)
        self.synchronous = synchronous
        if self.path != ":memory:":
            p = Path(self.path)
            private_dir(p.parent)
            # SQLite gives the -wal and -shm files the main file's mode: set it before
            # anything is written, not after.
            private_file(p)
            for side in (Path(self.path + "-wal"), Path(self.path + "-shm")):
                if side.exists():
                    private_file(side)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        self.db.create_function("url_host", 1, url_host, deterministic=True)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        migrate(self.db)

    def reopen(self, synchronous: Synchronous | None = None) -> Store:
        """Another connection to the same file (for another thread)."""
        if self.path == ":memory:":
            raise ValueError("an in-memory store cannot be shared between connections")
        return Store(self.path, synchronous=synchronous or self.synchronous)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- outbox (the outbox's own thread) ---------------------------------------------
    def outbox_apply(self, adds: Sequence[NewEvent], outcomes: Sequence[Outcome]) -> set[str]:
        """Write new events and attempt results in one transaction (one fsync with FULL).

        A new event is its call's head if the call has no other pending event; a finished
        head hands the head on to the call's next pending event. Order between the two
        lists does not matter: each step keeps the invariant on its own. Returns the
        destinations of the events that became heads by a hand-on (a call's events may go
        to more than one URL)."""
        handed: set[str] = set()
        with self._tx() as db:
            for e in adds:
                db.execute(
                    "INSERT INTO outbox(event_id, call_id, url, host, app_id, body, created_at,"
                    " next_at, due_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7,"
                    " CASE WHEN EXISTS (SELECT 1 FROM outbox WHERE call_id = ?2"
                    " AND state = 'pending') THEN NULL ELSE ?7 END)",
                    (e.event_id, e.call_id, e.url, url_host(e.url), e.app_id, e.body,
                     e.created_at))
                if e.ends_call:
                    db.execute("DELETE FROM live_calls WHERE call_id = ?", (e.call_id,))
            for o in outcomes:
                if o.next_at is not None:
                    db.execute(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = ?,"
                        " next_at = ?2, due_at = ?2 WHERE seq = ?3 AND state = 'pending'",
                        (o.error[:500], o.next_at, o.seq))
                    continue
                db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, state = ?, last_error = ?,"
                    " due_at = NULL, finished_at = ? WHERE seq = ? AND state = 'pending'",
                    ("delivered" if o.delivered else "dead", o.error[:500] or None, o.at,
                     o.seq))
                row = db.execute(
                    "UPDATE outbox SET due_at = max(next_at, ?1) WHERE seq ="
                    " (SELECT min(seq) FROM outbox WHERE call_id = ?2 AND state = 'pending')"
                    " RETURNING host", (o.at, o.call_id)).fetchone()
                if row is not None:
                    handed.add(row[0])
        return handed

    def outbox_add(self, event_id: str, call_id: str, url: str, app_id: str, body: bytes,
                   now: float) -> None:
        self.outbox_apply([NewEvent(event_id, call_id, url, app_id, body, now)], [])

    def outbox_delivered(self, seq: int, now: float | None = None) -> None:
        self.outbox_apply([], [Outcome(seq, self._call_of(seq), _now(now), delivered=True)])

    def outbox_failed(self, seq: int, error: str, next_at: float, dead: bool,
                      now: float | None = None) -> None:
        self.outbox_apply([], [Outcome(seq, self._call_of(seq), _now(now), delivered=False,
                                       error=error, next_at=None if dead else next_at)])

    def _call_of(self, seq: int) -> str:
        row = self.db.execute("SELECT call_id FROM outbox WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise KeyError(seq)
        return str(row[0])

    def outbox_hosts(self) -> list[str]:
        """Destinations with at least one head (done once at start)."""
        rows = self.db.execute(
            "SELECT DISTINCT host FROM outbox WHERE due_at IS NOT NULL").fetchall()
        return [r[0] for r in rows]

    def outbox_backlog(self, limit: int) -> tuple[float | None, list[tuple[str, int]]]:
        """(created_at of the oldest pending event, pending events per host, largest first,
        at most `limit` hosts). Walks the pending rows (outbox_finished's state prefix):
        bounded by the outbox's max_pending, and run every few seconds on the outbox thread."""
        rows = self.db.execute(
            "SELECT host, count(*), min(created_at) FROM outbox WHERE state = 'pending'"
            " GROUP BY host ORDER BY count(*) DESC").fetchall()
        oldest = min((float(r[2]) for r in rows), default=None)
        return oldest, [(str(r[0]), int(r[1])) for r in rows[:limit]]

    def outbox_due(self, host: str, now: float, limit: int,
                   exclude: Iterable[int] = ()) -> list[OutboxRow]:
        """Up to `limit` heads for `host` due by `now`, oldest due first."""
        skip = list(exclude)
        marks = ",".join("?" * len(skip))
        rows = self.db.execute(
            f"SELECT {_ROW} FROM outbox WHERE host = ? AND due_at IS NOT NULL AND due_at <= ?"
            f" AND seq NOT IN ({marks}) ORDER BY due_at LIMIT ?",
            (host, now, *skip, limit)).fetchall()
        return [OutboxRow(*r) for r in rows]

    def outbox_next_due(self, host: str, now: float) -> float | None:
        """When the host's next head not yet due becomes due."""
        row = self.db.execute(
            "SELECT min(due_at) FROM outbox WHERE host = ? AND due_at > ?",
            (host, now)).fetchone()
        return None if row[0] is None else float(row[0])

    def outbox_heads(self) -> list[OutboxRow]:
        """Every call's head (for tests and tools; the dispatcher asks outbox_due)."""
        rows = self.db.execute(
            f"SELECT {_ROW} FROM outbox WHERE due_at IS NOT NULL ORDER BY seq").fetchall()
        return [OutboxRow(*r) for r in rows]

    def outbox_pending_count(self) -> int:
        return int(self.db.execute(
            "SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0])

    def outbox_prune(self, state: Literal["delivered", "dead"], older_than: float,
                     batch: int = 5000) -> int:
        """Delete up to `batch` rows finished before `older_than` (the caller repeats:
        short transactions leave room for the loop's writes)."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE state = ?"
                " AND finished_at < ? LIMIT ?)", (state, older_than, batch))
        return cur.rowcount

    def outbox_row(self, event_id: str) -> dict[str, Any] | None:
        cur = self.db.execute("SELECT * FROM outbox WHERE event_id = ?", (event_id,))
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row,
                                                 strict=True))

    # -- call records (the event loop's connection) -----------------------------------
    def call_save(self, call_id: str, record: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO calls(call_id, record, updated_at, customer_id) VALUES (?,?,?,?)"
            " ON CONFLICT(call_id) DO UPDATE SET record=excluded.record,"
            " updated_at=excluded.updated_at, customer_id=excluded.customer_id",
            (call_id, json.dumps(record), time.time(), str(record.get("customer_id", ""))),
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
                "SELECT record FROM calls WHERE customer_id = ?"
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

    # -- recordings (the event loop's connection) --------------------------------------
    def recording_add(self, rec: Recording) -> None:
        self.db.execute(
            f"INSERT INTO recordings({_REC}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            dataclasses.astuple(rec))

    def recording_end(self, rec_id: str, *, status: str, ended_at: float,
                      duration_s: float, reason: str) -> None:
        self.db.execute(
            "UPDATE recordings SET status = ?, ended_at = ?, duration_s = ?, reason = ?"
            " WHERE rec_id = ?", (status, ended_at, duration_s, reason, rec_id))

    def recording_get(self, rec_id: str) -> Recording | None:
        row = self.db.execute(f"SELECT {_REC} FROM recordings WHERE rec_id = ?",
                              (rec_id,)).fetchone()
        return Recording(*row) if row else None

    def recordings_in_progress(self) -> list[Recording]:
        rows = self.db.execute(f"SELECT {_REC} FROM recordings WHERE status = 'recording'")
        return [Recording(*r) for r in rows.fetchall()]

    def recordings_expired(self, older_than: float, limit: int = 1000) -> list[Recording]:
        rows = self.db.execute(
            f"SELECT {_REC} FROM recordings WHERE ended_at < ? LIMIT ?", (older_than, limit))
        return [Recording(*r) for r in rows.fetchall()]

    def recording_delete(self, rec_id: str) -> None:
        self.db.execute("DELETE FROM recordings WHERE rec_id = ?", (rec_id,))


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, migrations: Sequence[Sequence[Step]] = MIGRATIONS) -> int:
    """Bring the file up to len(migrations); returns the version it had."""
    found = schema_version(db)
    if found > len(migrations):
        raise RuntimeError(f"database schema version {found} is newer than this gateway's "
                           f"({len(migrations)}): run a newer gateway or another file")
    if found == len(migrations):
        return found
    # Freed pages are zeroed, not just unlinked: version 1 rows held signing secrets.
    db.execute("PRAGMA secure_delete=ON")
    db.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(db)  # another connection may have migrated meanwhile
        for number in range(version + 1, len(migrations) + 1):
            for step in migrations[number - 1]:
                if isinstance(step, str):
                    db.execute(step)
                else:
                    step(db)
            db.execute(f"PRAGMA user_version = {number}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    db.execute("PRAGMA secure_delete=OFF")
    # The WAL still holds the old pages until it is checkpointed and truncated.
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return found
