"""Every live call: in memory to route the SIP thread's events, in SQLite so that a process
that dies leaves each call's end to the next one (crash-only recovery)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from gateway import recovery
from gateway.call.services import Outbox
from gateway.call.session import CallSession
from gateway.config import Application
from gateway.store import Store
from sip import events as ev

log = logging.getLogger("minivoice.gateway")


class CallWatch(Protocol):
    """Told of each call's live record and of its end (a cluster node publishes them:
    gateway.cluster.reconcile). Memory only: a call never waits on it."""

    def live(self, session: CallSession) -> None: ...

    def gone(self, session: CallSession) -> None: ...


class Quota(Protocol):
    """A cluster's count of customers' calls (gateway.cluster.quota). Memory only."""

    def counts(self, session: CallSession) -> bool: ...  # False: a cascade leg

    def elsewhere(self, customer_id: str) -> int: ...  # on the other live nodes

    def changed(self) -> None: ...


class CallTable:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.sessions: dict[str, CallSession] = {}
        self.outbound = 0  # outbound legs among the sessions (a count, for /metrics)
        self.on_finished: Callable[[CallSession], None] | None = None  # metrics
        self.watch: CallWatch | None = None  # the cluster's record of our live calls
        self.quota: Quota | None = None  # a cluster's per-customer counts; None: ours only

    def __len__(self) -> int:
        return len(self.sessions)

    def __iter__(self) -> Iterator[CallSession]:
        return iter(list(self.sessions.values()))

    def get(self, call_id: str) -> CallSession | None:
        return self.sessions.get(call_id)

    def count(self, customer_id: str) -> int:
        """A customer's live calls for limits.max_calls_per_customer: ours and, in a
        cluster, those on the other live nodes; never a cascade leg."""
        q = self.quota
        mine = sum(1 for s in self.sessions.values()
                   if s.customer_id == customer_id and (q is None or q.counts(s)))
        return mine + (q.elsewhere(customer_id) if q is not None else 0)

    def admit(self, session: CallSession) -> None:
        self.sessions[session.call_id] = session
        if session.rec.direction == "outbound":
            self.outbound += 1
        self.remember(session)
        if self.quota is not None:
            self.quota.changed()

    def remember(self, session: CallSession) -> None:
        """Store a live call's record: if this process dies, the next one finishes it."""
        self.store.live_put(session.call_id, session.app.id, session.record())
        if self.watch is not None:
            self._tell(self.watch.live, session)

    def _tell(self, fn: Callable[[CallSession], None], session: CallSession) -> None:
        try:
            fn(session)
        except Exception:  # the cluster's bookkeeping must never stop a call
            log.exception("call.watch_failed", extra={"call_id": session.call_id})

    def route(self, event: ev.Event) -> None:
        """An event from the SIP thread for a live call (IncomingCall is the gateway's)."""
        session = self.sessions.get(getattr(event, "call_id", ""))
        if session is None:
            return
        if isinstance(event, ev.CallEnded):
            if event.quality is not None:
                session.rec.quality = event.quality.as_json()
            self.finish(session, event.sip_code, event.reason, event.by_gateway, event.cause)
        else:
            session.handle(event)

    def finish(self, session: CallSession, sip_code: int, reason: str, by_gateway: bool,
               cause: str) -> None:
        """The one way a call ends. Its live row goes in the same transaction as its
        call.completed (see NewEvent.ends_call), so a crash leaves one or the other, never
        both or neither: call.completed is sent exactly once, by this process or the next."""
        if self.sessions.pop(session.call_id, None) is not None \
                and session.rec.direction == "outbound":
            self.outbound -= 1
        session.on_ended(sip_code, by_gateway, cause)
        if self.on_finished is not None:
            try:
                self.on_finished(session)
            except Exception:  # metrics must never stop a call's end
                log.exception("call.observer_failed", extra={"call_id": session.call_id})
        self.store.call_save(session.call_id, session.record())
        if self.watch is not None:
            self._tell(self.watch.gone, session)
        if self.quota is not None:
            self.quota.changed()
        if not session.completion_queued:  # no event_url (or the outbox is full)
            self.store.live_delete(session.call_id)

    def recover_lost(self, applications: Iterable[Application], outbox: Outbox,
                     elsewhere: Mapping[str, str] | None = None) -> None:
        """Calls the previous process left live (it was killed, or crashed): each gets its
        one call.completed (gateway_restart) and a call record, atomically, so a crash during
        this very recovery can neither lose nor repeat one (the live row goes with the
        event's insert). `elsewhere`: calls another cluster node has already ended (call
        id -> node): their live rows are only dropped."""
        apps = {a.id: a for a in applications}
        now = time.time()
        for live in self.store.live_all():
            if elsewhere and live.call_id in elsewhere:
                self.store.live_delete(live.call_id)
                continue
            record, payload = recovery.lost_call(live, now)
            app = apps.get(live.app_id)
            queued = app is not None and app.event_url is not None and outbox.add(
                live.call_id, app.event_url, app.id, payload, ends_call=True) is not None
            self.store.call_save(live.call_id, record)
            if not queued:
                self.store.live_delete(live.call_id)
            log.warning("call.lost", extra={"call_id": live.call_id, "app": live.app_id,
                                            "webhook": app is not None and bool(app.event_url)})
