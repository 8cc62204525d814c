"""A node's live calls in Redis, and the calls of nodes that died: the I/O around
gateway.cluster.lost (which holds every rule).

- Publishing: the call table tells us when a call is admitted or answered (`live`) and when
  it ends (`gone`); we only note it in memory. A task writes the changes to Redis in one
  round trip, at once and at least every tick, so a call never waits on Redis, and a failed
  write is made good by re-writing all our records (`resync`) on the next success.
- Reconciling: every tick, a node whose liveness record expired while it had call records
  is taken over by one survivor (a Lua script with a lock and a done marker per call): each
  of its calls gets `call.completed` (`gateway_lost`) from our outbox and a record in our
  database.
- At start: the calls our SQLite left live are claimed (done markers) before we end them
  ourselves (`gateway_restart`): a survivor may have ended some already.
- Taken for dead while alive (frozen, or cut off from Redis, past node_ttl_s): when our
  liveness record turns out to have expired, the calls a survivor already reported lost are
  hung up with no call.completed from here (it was sent), as a stale owner steps down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from gateway import recovery
from gateway.cluster import lost
from gateway.cluster.redis_store import ClusterStore
from gateway.config import Application
from gateway.store import Store
from gateway.waits import wait_event

if TYPE_CHECKING:
    from gateway.call.session import CallSession
    from gateway.call.table import CallTable
    from gateway.outbox import Outbox

log = logging.getLogger("minivoice.cluster")

START_TRIES = 3  # Redis unreachable at start: our own calls are ended by us after these


class LostCalls:
    def __init__(self, me: str, store: ClusterStore, tick_s: float, internal_app: str) -> None:
        self.me = me
        self.store = store
        self.tick_s = tick_s
        self.internal_app = internal_app
        self.pending: dict[str, str | None] = {}  # call id -> record, or None: delete it
        self.resync = True  # the first write replaces whatever an earlier process left
        self.fence = False  # our liveness record had expired: see `_fence`
        self.calls: CallTable | None = None
        self.db: Store | None = None
        self.outbox: Outbox | None = None
        self.apps: dict[str, Application] = {}
        self._wake = asyncio.Event()
        self._failing = False
        self._full_logged = False
        self._ending: set[asyncio.Task[None]] = set()

    def attach(self, calls: CallTable, db: Store, outbox: Outbox,
               applications: Iterable[Application]) -> None:
        self.calls, self.db, self.outbox = calls, db, outbox
        self.apps = {a.id: a for a in applications}
        calls.watch = self

    # -- what the call table tells us (the hot path: memory only) --------------------------
    def live(self, session: CallSession) -> None:
        if session.app.id == self.internal_app:
            return  # cascade legs: internal, no webhooks
        try:
            self.pending[session.call_id] = lost.encode(
                session.call_id, session.app.id, session.record(), time.time())
        except lost.BadRecord as exc:
            log.warning("cluster.call_unpublished", extra={"call_id": session.call_id,
                                                           "reason": str(exc)})
            return
        self._wake.set()

    def gone(self, session: CallSession) -> None:
        if session.app.id == self.internal_app:
            return
        self.pending[session.call_id] = None
        self._wake.set()

    # -- the task ---------------------------------------------------------------------------
    async def run(self) -> None:
        next_tick = 0.0
        while True:
            now = time.monotonic()
            tick = now >= next_tick
            if tick:
                next_tick = now + self.tick_s
            self._wake.clear()
            try:
                if self.fence:
                    await self._fence()
                if self.pending or self.resync or tick:
                    await self.flush()
                if tick:
                    await self.sweep()
                if self._failing:
                    log.info("cluster.calls_published", extra={"node": self.me})
                self._failing = False
            except Exception as exc:  # Redis down: everything is re-written when it is back
                self.resync = True
                if not self._failing:
                    log.warning("cluster.calls_unpublished", extra={"node": self.me,
                                                                    "error": str(exc)})
                self._failing = True
            # not wait_for: on 3.11 it can swallow our cancellation at exit (gateway.waits)
            await wait_event(self._wake, max(0.05, next_tick - time.monotonic()))

    async def flush(self) -> None:
        changes, self.pending = self.pending, {}
        replace = self.resync
        if replace:
            put = self._all_records()
            gone: list[str] = []
        else:
            put = {k: v for k, v in changes.items() if v is not None}
            gone = [k for k, v in changes.items() if v is None]
        try:
            await self.store.publish_calls(self.me, put, gone, time.time(), replace=replace)
        except BaseException:
            if not replace:  # keep what we had not written; the resync writes it all anyway
                self.resync = True
            raise
        if replace:
            self.resync = False

    async def _fence(self) -> None:
        """Our liveness record had expired (told after the heartbeat that put it back, so
        no survivor takes anything of ours from now on): the calls a survivor took in the
        meantime got their call.completed from it. They end here without another."""
        sessions = [s for s in self.calls or () if s.app.id != self.internal_app
                    and s.rec.ended_at is None]
        marks = await self.store.done_marks([s.call_id for s in sessions])
        self.fence = False
        for s in sessions:
            by = marks.get(s.call_id)
            if by is None or by == self.me:
                continue
            log.warning("call.reported_lost", extra={"call_id": s.call_id, "by": by})
            s.completed_elsewhere = by
            task = asyncio.create_task(s.end_call(503, "gateway_lost", "Service Unavailable"))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    def _all_records(self) -> dict[str, str]:
        out: dict[str, str] = {}
        now = time.time()
        for s in self.calls or ():
            if s.app.id == self.internal_app or s.rec.ended_at is not None:
                continue
            with contextlib.suppress(lost.BadRecord):
                out[s.call_id] = lost.encode(s.call_id, s.app.id, s.record(), now)
        return out

    async def sweep(self) -> None:
        """Take the calls of nodes that died (bounded: lost.PER_TICK records a tick)."""
        nodes = await self.store.call_nodes()
        budget = lost.PER_TICK
        for node in lost.due(self.me, nodes, nodes):
            while budget > 0:
                if not self._room_in_outbox():
                    return
                got = await self.store.take_calls(self.me, node, min(lost.BATCH, budget))
                if got.state != "ok":
                    break  # alive again, or another survivor has it
                budget -= max(1, len(got.pairs))
                self._send(node, got.pairs, got.seen, recovery.LOST)
                if got.remaining == 0:
                    break

    def _room_in_outbox(self) -> bool:
        ob = self.outbox
        if ob is None:
            return False
        if ob.pending_count() + lost.BATCH <= ob.max_pending:
            self._full_logged = False
            return True
        if not self._full_logged:  # the records stay in Redis for the next tick
            log.warning("cluster.reconcile_waits", extra={"node": self.me,
                                                          "pending": ob.pending_count()})
            self._full_logged = True
        return False

    def _send(self, node: str, pairs: Iterable[tuple[Any, Any]], seen: Any,
              cause: tuple[str, str]) -> None:
        """The call.completed of each taken record, from our outbox, and its call record
        in our database (GET /v1/calls/{id} answers it)."""
        assert self.db is not None and self.outbox is not None
        now = time.time()
        taken = lost.settle(pairs, seen, now)
        for cid, why in taken.dropped:
            log.warning("cluster.bad_call_record", extra={"call_id": cid, "node": node,
                                                          "reason": why})
        for live in taken.send:
            record, payload = recovery.lost_call(live, now, cause)
            app = self.apps.get(live.app_id)
            queued = app is not None and app.event_url is not None and self.outbox.add(
                live.call_id, app.event_url, app.id, payload) is not None
            self.db.call_save(live.call_id, record)
            log.warning("call.lost", extra={"call_id": live.call_id, "app": live.app_id,
                                            "node": node, "by": self.me, "webhook": queued})

    # -- at start ------------------------------------------------------------------------------
    async def at_start(self, live_ids: list[str]) -> Mapping[str, str]:
        """Done markers for the calls our SQLite left live; the ones another node already
        ended (call id -> that node): we must not end them again."""
        marks: dict[str, str | None] = {}
        for attempt in range(START_TRIES):
            try:
                marks = dict(await self.store.mark_done(self.me, live_ids)) if live_ids else {}
                break
            except Exception as exc:
                if attempt == START_TRIES - 1:
                    log.warning("cluster.start_unchecked", extra={
                        "node": self.me, "calls": len(live_ids), "error": str(exc)})
                    return {}
                await asyncio.sleep(0.5)
        plan = lost.at_start(live_ids, marks, self.me)
        for cid, by in plan.elsewhere.items():
            log.info("call.lost_elsewhere", extra={"call_id": cid, "by": by})
        return plan.elsewhere

    async def take_own(self) -> None:
        """Our records an earlier process of ours left in Redis: the calls our SQLite had
        are marked already (dropped here); any other (a lost or replaced database) ends
        here as a survivor would end it."""
        try:
            for _ in range(1000):  # bounded: the hash is emptied a batch at a time
                got = await self.store.take_calls(self.me, self.me, lost.BATCH, own=True)
                self._send(self.me, got.pairs, got.seen, recovery.LOST)
                if got.state != "ok" or got.remaining == 0:
                    return
        except Exception as exc:
            log.warning("cluster.start_unchecked", extra={"node": self.me, "error": str(exc)})
