"""Durable, ordered, at-least-once webhook delivery (docs/api.md, section 5).

Every event is written to SQLite before any attempt. Only the oldest pending event of each
call (its head) is ever sent, so one call's events arrive in order while different calls
proceed in parallel. Failures back off exponentially (1 s doubling, capped); an event is
given up (state 'dead', kept `dead_keep_s`, then pruned) only after `give_up_after_s`.
Pending events survive a crash: the worker picks them up on start.

All outbox SQL runs on one thread with its own connection: the loop hands it batches and
awaits answers, so a big backlog costs the loop nothing. Whatever is enqueued or finished
while one commit runs goes into the next (one transaction, one fsync with FULL). The
dispatcher reads only due heads, per destination, from an index. Commits start at most
every COALESCE_S (20 ms): under load the writes of that interval share one commit, while a
quiet outbox, or one with a burst waiting (COALESCE_MAX), commits at once.

What is guaranteed: an event is committed (synchronous=FULL: fsynced) before any attempt to
send it, so whatever was sent, or reported delivered, survives a crash; `flushed()` returns
only once everything enqueued before it is committed, and `stop()` waits for that. An event
enqueued in the last few milliseconds before a crash (not yet committed, never sent) is
lost, as it was before the commits were spaced (then the window was the commit in progress);
a call's call.completed is never lost that way: its live row goes in the same transaction,
so the next process finds the row and sends call.completed (gateway_restart).

Fairness: each destination (scheme://host:port) has its own concurrency limit, and all of
them together `max_in_flight`. A destination's limit starts at PER_HOST_START, grows by one
per delivered event up to `per_host` and halves (down to PER_HOST_MIN) per failed attempt:
a busy, healthy receiver soon gets many parallel deliveries, while one that refuses or hangs
ties up one or two slots, not everybody's.

Signing: rows hold the application ID, and the secret is the configured one at send time.
An event whose application is no longer configured is a failed attempt like any other
(logged, retried with backoff, given up after `give_up_after_s`): a configuration mistake
put right within that time loses nothing, and nothing is ever sent unsigned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from gateway.config import Application, HooksConfig
from gateway.http import signed_post
from gateway.metrics import MAX_DESTINATIONS, Backlog
from gateway.stopwatch import bounded
from gateway.store import NewEvent, OutboxRow, Outcome, Store, Synchronous, url_host
from gateway.threads import DaemonExecutor
from gateway.waits import wait_event

log = logging.getLogger("minivoice.webhook")

T = TypeVar("T")

# Below the gateway's shared HTTP connector limit (256), so answer_url requests keep room.
MAX_IN_FLIGHT = 128
# At stop: the queued events committed and the database closed (gateway.stopwatch's budget).
# More than the delivery drain gets: an event not committed is lost, one not delivered waits.
STOP_S = 3.0
PER_HOST = 32
PER_HOST_START = 4
PER_HOST_MIN = 1
# The outbox table's limit: past it new events are dropped (logged as errors) rather than
# filling the disk for a receiver that may never come back.
MAX_PENDING = 1_000_000
# Events waiting in memory for the database thread (it is stuck if this fills).
MAX_UNSAVED = 50_000
# The backlog for /metrics walks the pending rows: every 5 s, or less often when that walk
# is slow (a huge backlog), so it never takes more than 5 % of the outbox thread.
BACKLOG_EVERY_S = 5.0
DELIVERED_KEEP_S = 86400.0
PRUNE_EVERY_S = 3600.0
CHECKPOINT_EVERY_S = 30.0
PRUNE_BATCH = 2000  # rows per transaction: the loop's call-record writes wait at most that
# Commits start at most this often: a write arriving sooner after the last commit started
# waits for the rest of the interval, so under load the events and delivery results of many
# calls share one transaction (one fsync) and one trip to the database thread instead of
# one each; a quiet outbox commits at once (BENCHMARKS.md, "Call set-up"). Nothing is sent
# before its commit, so a delivery waits at most this much longer; none is lost for it.
COALESCE_S = 0.02
# ... unless this many writes are waiting (a burst of events), or a destination has every
# one of its delivery slots waiting for its result's commit (a backlog draining): then the
# commit starts at once, so a destination is never capped at `per_host` per COALESCE_S.
COALESCE_MAX = 32


def backoff_s(attempts: int, cap_s: float) -> float:
    """Delay before retry number `attempts` (1-based): 1, 2, 4, ... capped."""
    return float(min(cap_s, 2 ** max(0, attempts - 1)))


@dataclass
class _Host:
    limit: int
    busy: dict[int, OutboxRow] = field(default_factory=dict)  # result not committed yet
    unsaved: int = 0  # events enqueued, not committed yet
    # Events enqueued or handed a call's head, ever: a round that started with every one of
    # them committed and ends with the same count saw all there is.
    touched: int = 0
    finished: int = 0  # deliveries whose result waits for its commit (still in `busy`)


class Outbox:
    def __init__(
        self, store: Store, http: aiohttp.ClientSession, cfg: HooksConfig,
        applications: Iterable[Application] = (), *, dead_keep_s: float = 7 * 86400.0,
        per_host: int = PER_HOST, max_in_flight: int = MAX_IN_FLIGHT,
        max_pending: int = MAX_PENDING, max_unsaved: int = MAX_UNSAVED,
        synchronous: Synchronous = "FULL", guarded_http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.http = http
        applications = tuple(applications)
        # A room's status_url comes from an application's response, not from the config: it
        # goes through the address guard (hooks.allow_private), as action_url does.
        self.guarded_http = guarded_http
        self.trusted_urls = {a.event_url for a in applications if a.event_url}
        self.cfg = cfg
        self.secrets = {a.id: a.secret for a in applications}
        self.dead_keep_s = dead_keep_s
        self.per_host = per_host
        self.max_in_flight = max_in_flight
        self.max_pending = max_pending
        self.max_unsaved = max_unsaved
        self._source = store
        # A WAL checkpoint copies pages and fsyncs the file: whichever connection's commit
        # crosses the threshold runs it. Not the loop's: the outbox thread checkpoints.
        store.db.execute("PRAGMA wal_autocheckpoint=0")
        self._synchronous = synchronous
        self._conn: Store | None = None  # the database thread's own connection
        self._executor = DaemonExecutor(1, name="outbox-db")
        self._opened = self._executor.submit(self._open)  # -> pending events at start
        self._delta = 0  # pending events added minus finished since then
        self._adds: list[NewEvent] = []
        self._outcomes: list[Outcome] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._last_commit = 0.0  # time.monotonic() when the last commit started
        self._batch_full = asyncio.Event()  # commit now, without waiting for COALESCE_S
        self._hosts: dict[str, _Host] = {}
        self._flight: dict[int, str] = {}  # seq -> host, for every row in a host's `busy`
        self._busy = 0
        self._rotate = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._stopping = False
        # For /metrics: the pending events by destination, refreshed by _housekeep_backlog,
        # and a callback told of every delivery attempt's result (destination, ok).
        self.backlog = Backlog()
        self._backlog_task: asyncio.Task[None] | None = None
        self.observer: Callable[[str, bool], None] | None = None

    def _host(self, name: str) -> _Host:
        h = self._hosts.get(name)
        if h is None:
            h = self._hosts[name] = _Host(limit=min(PER_HOST_START, self.per_host))
        return h

    def _adapt(self, row: OutboxRow, ok: bool) -> None:
        h = self._hosts.get(row.host)
        if h is not None:
            h.limit = min(self.per_host, h.limit + 1) if ok else max(PER_HOST_MIN, h.limit // 2)

    # -- the database thread ------------------------------------------------------------
    def _open(self) -> int:
        self._conn = self._source.reopen(self._synchronous)
        return self._conn.outbox_pending_count()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _store(self) -> Store:
        assert self._conn is not None, "outbox database not open"
        return self._conn

    async def _in_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _apply(self, adds: list[NewEvent], outcomes: list[Outcome]) -> set[str]:
        return self._store().outbox_apply(adds, outcomes)

    def _round(self, wants: list[tuple[str, int, tuple[int, ...]]], now: float
               ) -> list[tuple[str, list[OutboxRow], float | None]]:
        db = self._store()
        out = []
        for host, free, busy in wants:
            rows = db.outbox_due(host, now, free, busy)
            out.append((host, rows, None if len(rows) == free else db.outbox_next_due(host, now)))
        return out

    # -- enqueue --------------------------------------------------------------------------
    def pending_count(self) -> int:
        """Events not yet delivered or given up, from memory (no query)."""
        at_start = self._opened.result() if self._opened.done() and \
            self._opened.exception() is None else 0
        return at_start + self._delta

    def add(self, call_id: str, url: str, app_id: str, payload: dict[str, Any], *,
            ends_call: bool = False) -> str | None:
        """Queue one event for `url`, signed at send time with `app_id`'s secret; its ID, or
        None when it was dropped (the outbox is over its limits). `ends_call`: the call's
        live row is deleted in the transaction that stores this event."""
        event_id = "evt_" + secrets.token_urlsafe(16)
        fields = {"call_id": call_id, "event_id": event_id, "url": url}
        if self.pending_count() >= self.max_pending or len(self._adds) >= self.max_unsaved:
            log.error("webhook.dropped", extra={**fields, "event": payload.get("event"),
                                                "pending": self.pending_count(),
                                                "unsaved": len(self._adds)})
            return None
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._adds.append(NewEvent(event_id, call_id, url, app_id, body, time.time(),
                                   ends_call))
        self._delta += 1
        host = self._host(url_host(url))
        host.unsaved += 1
        host.touched += 1
        log.info(payload["event"], extra={**fields, "queued": True})
        self._flush_soon()
        return event_id


    # -- writes -------------------------------------------------------------------------
    def _flush_soon(self) -> None:
        if len(self._adds) + len(self._outcomes) >= COALESCE_MAX:
            self._batch_full.set()
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._adds or self._outcomes:
            wait = self._last_commit + COALESCE_S - time.monotonic()
            if wait > 0 and not self._stopping and not self._batch_full.is_set():
                await wait_event(self._batch_full, wait)
            self._last_commit = time.monotonic()
            self._batch_full.clear()
            adds, self._adds = self._adds, []
            outcomes, self._outcomes = self._outcomes, []
            try:
                handed = await self._in_db(self._apply, adds, outcomes)
            except Exception:
                log.exception("webhook.store_failed", extra={
                    "events": len(adds), "results": len(outcomes)})
                self._adds[:0] = adds
                self._outcomes[:0] = outcomes
                await asyncio.sleep(1.0)
                continue
            for e in adds:
                self._host(url_host(e.url)).unsaved -= 1
            for dest in handed:
                self._host(dest).touched += 1
            for o in outcomes:
                name = self._flight.pop(o.seq, None)
                if name is not None and name in self._hosts:
                    self._hosts[name].busy.pop(o.seq, None)
                    self._hosts[name].finished -= 1
                    self._busy -= 1
                if o.next_at is None:
                    self._delta -= 1
            self._wake.set()

    async def flushed(self) -> None:
        """Return once everything enqueued so far is committed."""
        while self._flush_task is not None and not self._flush_task.done():
            await asyncio.shield(self._flush_task)

    # -- dispatch -----------------------------------------------------------------------
    async def run(self) -> None:
        await asyncio.wrap_future(self._opened)
        for h in await self._in_db(lambda: self._store().outbox_hosts()):
            self._host(h)
        self._housekeeping = asyncio.create_task(self._housekeep_forever())
        self._backlog_task = asyncio.create_task(self._housekeep_backlog())
        try:
            while not self._stopping:
                self._wake.clear()
                delay = await self._dispatch_due()
                await wait_event(self._wake, delay)
        finally:
            self._housekeeping.cancel()
            self._backlog_task.cancel()

    async def _dispatch_due(self) -> float:
        """Start deliveries that are due; return seconds until the next one is."""
        if self._busy >= self.max_in_flight:
            return 60.0  # a finished delivery wakes us
        names = list(self._hosts)
        self._rotate = (self._rotate + 1) % max(1, len(names))
        names = names[self._rotate:] + names[:self._rotate]  # no host always goes first
        wants = []
        seen: dict[str, int] = {}
        for name in names:
            h = self._hosts[name]
            free = h.limit - len(h.busy)
            if free > 0:
                wants.append((name, free, tuple(h.busy)))
                # Committed before this query: an empty answer then means really empty.
                seen[name] = h.touched if h.unsaved == 0 else -1
        if not wants:
            return 60.0
        now = time.time()
        answers = await self._in_db(self._round, wants, now)
        next_due = 60.0
        for name, rows, later in answers:
            if name not in self._hosts:
                continue
            h = self._hosts[name]
            for row in rows:
                if self._busy >= self.max_in_flight or self._stopping:
                    break
                if row.seq in h.busy:
                    continue
                h.busy[row.seq] = row
                self._flight[row.seq] = name
                self._busy += 1
                task = asyncio.create_task(self._deliver(row))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if later is not None:
                next_due = min(next_due, later - time.time())
            elif not rows and not h.busy and seen[name] == h.touched:
                del self._hosts[name]  # nothing pending there; an enqueue brings it back
        return max(0.01, next_due)

    async def _deliver(self, row: OutboxRow) -> None:
        error = ""
        secret = self.secrets.get(row.app_id)
        try:
            if secret is None:
                error = f"application {row.app_id!r} is not configured"
            else:
                status = await self._post(row, secret)
                self._adapt(row, 200 <= status < 300)
                self._observe(row, 200 <= status < 300)
                if 200 <= status < 300:
                    self._finish(Outcome(row.seq, row.call_id, time.time(), delivered=True))
                    log.info("webhook.delivered", extra={
                        "call_id": row.call_id, "event_id": row.event_id,
                        "attempt": row.attempts + 1, "status": status})
                    return
                error = f"HTTP {status}"
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            error = "timeout"
            self._adapt(row, False)
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
            self._adapt(row, False)
        except Exception as exc:  # never let one event kill the worker
            error = f"{type(exc).__name__}: {exc}"
            log.exception("webhook.error", extra={"call_id": row.call_id})
        if secret is None or not error.startswith("HTTP "):  # HTTP errors were observed above
            self._observe(row, False)
        attempts = row.attempts + 1
        now = time.time()
        dead = now - row.created_at >= self.cfg.webhook_give_up_after_s
        retry_in = backoff_s(attempts, self.cfg.webhook_max_backoff_s)
        self._finish(Outcome(row.seq, row.call_id, now, delivered=False, error=error,
                             next_at=None if dead else now + retry_in))
        log.warning("webhook.failed", extra={
            "call_id": row.call_id, "event_id": row.event_id, "url": row.url,
            "attempt": attempts, "error": error, "retry_in_s": None if dead else retry_in,
            "given_up": dead})

    async def _post(self, row: OutboxRow, secret: str) -> int:
        timeout = aiohttp.ClientTimeout(
            total=self.cfg.total_timeout_s, connect=self.cfg.connect_timeout_s)
        # Not following redirects: a 3xx is a failed attempt, retried like a 5xx.
        http = self.http if self.guarded_http is None or row.url in self.trusted_urls \
            else self.guarded_http
        reply = await signed_post(
            http, row.url, row.body, secret, timeout=timeout,
            headers={"MiniVoice-Event-Id": row.event_id, "MiniVoice-Call-Id": row.call_id})
        return reply.status

    def _finish(self, outcome: Outcome) -> None:
        # The slot stays taken until the result is committed: until then the row is still
        # a due head in the database and the next round must not send it again.
        self._outcomes.append(outcome)
        h = self._hosts.get(self._flight.get(outcome.seq, ""))
        if h is not None:
            h.finished += 1
            if h.finished >= h.limit:
                self._batch_full.set()
        self._flush_soon()

    # -- retention ------------------------------------------------------------------------
    async def prune(self, now: float | None = None) -> int:
        """Delete delivered events after a day and given-up ones after `dead_keep_s`, a
        batch per transaction."""
        now = time.time() if now is None else now
        total = 0
        for state, keep in (("delivered", DELIVERED_KEEP_S), ("dead", self.dead_keep_s)):
            while True:
                n = await self._in_db(self._store().outbox_prune, state, now - keep,
                                      PRUNE_BATCH)
                total += n
                if n < PRUNE_BATCH:
                    break
        return total

    def _backlog(self) -> Backlog:
        oldest, by_host = self._store().outbox_backlog(MAX_DESTINATIONS)
        return Backlog(time.time(), oldest, tuple(by_host))

    async def _housekeep_backlog(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self.backlog = await self._in_db(self._backlog)
            except Exception:
                log.exception("webhook.backlog_failed")
            await asyncio.sleep(max(BACKLOG_EVERY_S, 20 * (time.monotonic() - started)))

    def _observe(self, row: OutboxRow, ok: bool) -> None:
        if self.observer is not None:
            try:
                self.observer(row.host, ok)
            except Exception:  # metrics must never cost a delivery
                log.exception("webhook.observer_failed", extra={"call_id": row.call_id})

    def _checkpoint(self) -> None:
        self._store().db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def _housekeep_forever(self) -> None:
        next_prune = 0.0
        while True:
            try:
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                    pruned = await self.prune()
                    log.debug("webhook.pruned", extra={"rows": pruned})
                await self._in_db(self._checkpoint)
            except Exception:
                log.exception("webhook.housekeeping_failed")
            await asyncio.sleep(CHECKPOINT_EVERY_S)

    # -- shutdown -----------------------------------------------------------------------
    async def drain(self, timeout: float) -> None:
        """Give pending deliveries up to `timeout` seconds (on shutdown)."""
        deadline = time.monotonic() + timeout
        while self.pending_count() and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)
        if self.pending_count():  # they stay in SQLite, for the next start
            log.warning("shutdown.step_timeout", extra={
                "step": "outbox_drain", "bound_s": timeout, "events": self.pending_count()})

    async def stop(self) -> None:
        """Cancel the deliveries, commit what is queued, close the database (STOP_S at most:
        gateway.stopwatch's budget). The database thread is a daemon nobody joins: one
        blocked in a commit is left to the exit, and SQLite's journal keeps the file whole."""
        await bounded("outbox", self._stop(), STOP_S)
        self._executor.shutdown(wait=False)

    async def _stop(self) -> None:
        self._stopping = True
        self._wake.set()
        busy = [*self._tasks, *([self._housekeeping] if self._housekeeping else []),
                *([self._backlog_task] if self._backlog_task else [])]
        for t in busy:
            t.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        try:
            await self.flushed()
        except asyncio.CancelledError:  # past STOP_S: what is not committed is lost
            log.error("webhook.unsaved", extra={"events": len(self._adds)})
            raise
        with contextlib.suppress(Exception):
            await self._in_db(self._close)
