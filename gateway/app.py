"""The gateway process: wires the SIP engine, sessions, rooms, webhooks and HTTP together."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from gateway import api, applications, demo, recovery, watchdog
from gateway.conferences import Conferences
from gateway.config import Config
from gateway.edge_config import edge_registrar, from_edge
from gateway.hooks import HookClient, HttpPools
from gateway.media_cache import MediaCache
from gateway.outbox import Outbox
from gateway.recordings import Recordings, completed_data
from gateway.session import CallSession, OutboundSession
from gateway.store import Recording, Store
from gateway.timestamps import iso
from gateway.webhook_events import RoomEvent
from media import tones
from media.rooms import RoomKey
from media.tones import write_wav
from sip import commands as cmd
from sip import events as ev
from sip.engine import SipCommandError, SipEngine

log = logging.getLogger("minivoice.gateway")

LIVE_TOUCH_S = 5.0  # how often live calls are marked live (the error on a lost call's end)


class Gateway:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.engine = SipEngine(cfg.sip, self.on_sip_event)
        self.conferences = Conferences(self.send_quiet, cfg.rooms)
        self.sessions: dict[str, CallSession] = {}
        # Participants of rooms with a status_url: their call, for events after it ended.
        self._participants: dict[str, CallSession] = {}
        self.accepting = True
        self.drain_deadline = 0.0
        self.store: Store
        self.outbox: Outbox
        self.hooks: HookClient
        self._pools: HttpPools
        self._runner: web.AppRunner | None = None
        self._outbox_task: asyncio.Task[None] | None = None
        self.http_port = 0

    async def start(self) -> None:
        self.store = Store(self.cfg.database)
        # One pool per kind of traffic; URLs from application responses (action_url,
        # redirect, play) connect only to public addresses unless hooks.allow_private.
        self._pools = HttpPools.open(self.cfg)
        self.hooks = HookClient(self._pools.answer, self.cfg.hooks, self._pools.action,
                                self._pools.policy)
        cache_dir = Path(self.cfg.database).parent / "media-cache"
        self.media = MediaCache(cache_dir, self._pools.media, self.cfg.sip.clock_rate,
                                policy=self._pools.policy, cfg=self.cfg.media)
        self.ringback = cache_dir / f"ringback-{self.cfg.sip.clock_rate}.wav"
        if not self.ringback.exists():
            write_wav(self.ringback, tones.ringback(self.cfg.sip.clock_rate),
                      self.cfg.sip.clock_rate)
        self.outbox = Outbox(self.store, self._pools.webhook, self.cfg.hooks,
                             self.cfg.applications,
                             dead_keep_s=self.cfg.records.retention_days * 86400,
                             guarded_http=self._pools.action)
        self.recover_lost_calls()
        self.recordings = Recordings(self.cfg, self.store, self.conferences.book,
                                     self.engine.send, self.recording_event)
        self.conferences.on_room_ended = self.recordings.room_ended
        self.conferences.on_event = self.room_event
        for row in self.recordings.recover():
            self.recording_event(row, completed_data(row))
        self._outbox_task = asyncio.create_task(self.outbox.run())
        self._housekeeping_task = asyncio.create_task(self._housekeeping())
        self._speakers_task = asyncio.create_task(
            self.conferences.run_speaker_detection(self.levels))
        app = web.Application(client_max_size=1024 * 1024)
        api.setup(app, self)
        if self.cfg.demo:
            demo.setup(app, demo.secret_from(self.cfg.applications))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.http.host, self.cfg.http.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.cfg.http.port
        # SIP last: by the time a call arrives, answer_url (maybe the demo) is reachable.
        await self.engine.start()
        log.info("gateway ready", extra={
            "sip": f"{self.cfg.sip.host}:{self.engine.bound_port}",
            "http": f"{self.cfg.http.host}:{self.http_port}",
            "applications": len(self.cfg.applications)})

    async def stop(self, drain_s: float = 0.0) -> None:
        self.accepting = False  # new INVITEs get 503 from now on
        loop = asyncio.get_running_loop()
        self.drain_deadline = loop.time() + drain_s
        if drain_s > 0 and self.sessions:
            log.info("draining", extra={"calls": len(self.sessions), "seconds": drain_s})
            while self.sessions and loop.time() < self.drain_deadline:
                await asyncio.sleep(0.1)
        # All at once: each end_call waits for its SIP command, and there may be thousands.
        await asyncio.gather(*(s.end_call(503, "shutdown", "Service Unavailable")
                               for s in list(self.sessions.values())), return_exceptions=True)
        for _ in range(40):  # let CallEnded events arrive so call.completed is queued
            if not self.sessions:
                break
            await asyncio.sleep(0.05)
        await self.recordings.stop_all("shutdown")
        await self.engine.stop()
        await self.outbox.drain(timeout=3.0)
        await self.outbox.stop()
        if self._outbox_task:
            self._outbox_task.cancel()
        self._housekeeping_task.cancel()
        self._speakers_task.cancel()
        if self._runner:
            await self._runner.cleanup()
        await self._pools.close()
        self.store.close()

    async def _housekeeping(self) -> None:
        """Drop call records past their retention (the outbox prunes its own rows); mark the
        live calls as still live every few seconds (see recover_lost_calls)."""
        next_prune = 0.0
        while True:
            now = time.time()
            if now >= next_prune:
                before = now - self.cfg.records.retention_days * 86400
                kept = self.store.calls_prune(before)
                recordings = self.recordings.prune(before)
                log.debug("housekeeping", extra={"calls_pruned": kept,
                                                 "recordings_pruned": recordings})
                next_prune = now + 3600
            self.store.live_touch(now)
            try:
                await self.recordings.check_disk()
            except Exception:
                log.exception("recording disk check failed")
            await asyncio.sleep(LIVE_TOUCH_S)

    # -- live calls in SQLite: crash-only recovery ------------------------------------
    def remember(self, session: CallSession) -> None:
        """Store a live call's record: if this process dies, the next one finishes it."""
        self.store.live_put(session.call_id, session.app.id, session.record())

    def finish(self, session: CallSession, event: ev.CallEnded) -> None:
        """A call ended. Its live row goes in the same transaction as its call.completed
        (see NewEvent.ends_call), so a crash leaves one or the other, never both or neither:
        call.completed is sent exactly once, by this process or by the next one."""
        session.on_ended(event)
        self.store.call_save(session.call_id, session.record())
        if not session.completion_queued:  # no event_url (or the outbox is full)
            self.store.live_delete(session.call_id)

    def recover_lost_calls(self) -> None:
        """Calls the previous process left live (it was killed, or crashed): each gets its
        one call.completed (gateway_restart) and a call record, atomically, so a crash during
        this very recovery can neither lose nor repeat one (the live row goes with the
        event's insert)."""
        apps = {a.id: a for a in self.cfg.applications}
        now = time.time()
        for live in self.store.live_all():
            record, payload = recovery.lost_call(live, now)
            app = apps.get(live.app_id)
            queued = app is not None and app.event_url is not None and self.outbox.add(
                live.call_id, app.event_url, app.id, payload, ends_call=True) is not None
            self.store.call_save(live.call_id, record)
            if not queued:
                self.store.live_delete(live.call_id)
            log.warning("call.lost", extra={"call_id": live.call_id, "app": live.app_id,
                                            "webhook": app is not None and bool(app.event_url)})

    def recording_event(self, row: Recording, data: dict[str, Any]) -> None:
        """Queue recording.completed: to the room's status_url if it had one, else to the
        recording application's event_url; ordered with the room's other events."""
        app = next((a for a in self.cfg.applications if a.id == row.app_id), None)
        url = row.status_url or (app.event_url if app else None)
        if app is None or url is None:
            return
        room = self.conferences.book.room(RoomKey(row.customer_id, row.room))
        self._queue_room_event(RoomKey(row.customer_id, row.room), url, app.id,
                               "recording.completed", None, len(room.members) if room else 0,
                               data)

    def room_event(self, key: RoomKey, event: str, call_id: str | None, participants: int,
                   data: dict[str, Any]) -> None:
        """A conference event of a room with a status_url (gateway.conferences)."""
        hook = self.conferences.status.get(key)
        if hook is None:
            return
        session = None
        if call_id is not None:
            session = self.sessions.get(call_id) or self._participants.get(call_id)
            if event == "participant.joined" and session is not None:
                self._participants[call_id] = session
            elif event == "participant.left":
                self._participants.pop(call_id, None)
        self._queue_room_event(key, hook.url, hook.app_id, cast(RoomEvent, event), session,
                               participants, data)

    def _queue_room_event(self, key: RoomKey, url: str, app_id: str, event: RoomEvent,
                          session: CallSession | None, participants: int,
                          data: dict[str, Any]) -> None:
        payload = {"event": event, "created_at": iso(),
                   "call": session.call_view() if session is not None else None,
                   "variables": {}, "data": data,
                   "conference": {"room": key.name, "customer_id": key.customer_id,
                                  "participants": participants}}
        self.outbox.add(room_stream(key.customer_id, key.name), url, app_id, payload)

    async def levels(self, call_ids: tuple[str, ...]) -> dict[str, int]:
        """Each call's current level (0-255) of what it sends into the bridge."""
        return dict(await self.engine.send(cmd.QueryLevels(call_ids)) or ())

    def send_quiet(self, command: cmd.Command) -> None:
        fut = self.engine.send(command)
        fut.add_done_callback(_log_failure)

    # -- events from the SIP thread -----------------------------------------------------
    def on_sip_event(self, event: ev.Event) -> None:
        try:
            self._on_sip_event(event)
        except Exception:
            log.exception("event handling failed", extra={
                "call_id": getattr(event, "call_id", None), "sip_event": type(event).__name__})

    def _on_sip_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.IncomingCall):
            self._incoming(event)
            return
        session = self.sessions.get(getattr(event, "call_id", ""))
        if session is None:
            return
        if isinstance(event, ev.CallAnswered):
            session.on_answered()
            self.remember(session)  # the stored record now says answered (duration on loss)
        elif isinstance(event, ev.MediaReady):
            session.on_media(event)
        elif isinstance(event, ev.DtmfDigit):
            session.on_dtmf(event)
        elif isinstance(event, ev.PlayDone):
            session.on_play_done(event)
        elif isinstance(event, ev.CallProgress):
            session.note("progress", sip_code=event.code)
        elif isinstance(event, ev.CallEnded):
            del self.sessions[session.call_id]
            self.finish(session, event)

    def _incoming(self, event: ev.IncomingCall) -> None:
        if not self.accepting:
            self.send_quiet(cmd.Hangup(event.call_id, 503, "Service Unavailable"))
            return
        if self.cfg.edge.enabled and not from_edge(self.cfg.edge, event.source):
            # Behind a separate edge, a call from anywhere else skipped its authentication.
            log.warning("invite.refused", extra={"call_id": event.call_id,
                                                 "source": event.source, "reason": "not_edge"})
            self.send_quiet(cmd.Hangup(event.call_id, 403, "Forbidden"))
            return
        app = applications.match(self.cfg.applications, event.dialed)
        if app is None:
            log.info("no application", extra={"call_id": event.call_id, "dialed": event.dialed})
            self.send_quiet(cmd.Hangup(event.call_id, 404, "Not Found"))
            return
        cap = self.cfg.limits.max_calls_per_customer
        if cap is not None and sum(
                1 for s in self.sessions.values() if s.customer_id == app.customer_id) >= cap:
            # Like the other refusals before a session exists (404, 503): no webhooks.
            log.warning("call.rejected", extra={
                "call_id": event.call_id, "customer_id": app.customer_id,
                "reason": "customer_call_limit", "limit": cap, "sip_code": 486})
            self.send_quiet(cmd.Hangup(event.call_id, 486, "Busy Here"))
            return
        session = CallSession(self, event, app)
        self.sessions[event.call_id] = session
        self.remember(session)
        session.task = asyncio.create_task(session.run(), name=event.call_id)


    # -- outbound legs (transfer) --------------------------------------------------------
    def dial_uri(self, to: str) -> str:
        """The SIP URI to dial for a `transfer` target: a URI as is, a user via the edge."""
        if to.startswith(("sip:", "sips:")):
            return to
        if not self.cfg.edge.enabled:
            raise ValueError(f"'{to}' is a registered user: that needs the SIP edge (edge:)")
        host, port = edge_registrar(self.cfg.edge)
        return f"sip:{to}@{host}:{port}"

    async def dial(self, parent: CallSession, uri: str, from_user: str) -> OutboundSession:
        child = OutboundSession(self, parent, uri, from_user)
        self.sessions[child.call_id] = child
        self.remember(child)
        child.note("dial", parent_call_id=parent.call_id, uri=uri)
        child._webhook("call.initiated", child.sip_data())
        try:
            await self.engine.send(cmd.Dial(child.call_id, uri, from_user))
        except SipCommandError as exc:
            # No SIP dialog was created: finish the leg here, as the SIP thread would.
            child.error = {"code": "dial_failed", "message": str(exc)}
            child.outcome = "failed"
            self.sessions.pop(child.call_id, None)
            self.finish(child, ev.CallEnded(child.call_id, 500, str(exc), True, "dial_failed"))
        return child


def room_stream(customer_id: str, room: str) -> str:
    """The outbox's ordering key of a room's events (its MiniVoice-Call-Id header too)."""
    return f"room:{customer_id}:{room}"


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("sip command failed", extra={"error": str(fut.exception())})


async def serve(cfg: Config, drain_s: float | None = None) -> None:
    """Run until a signal. SIGTERM drains (no new calls, calls in progress get `drain_s`);
    SIGINT (Ctrl-C) or a second signal hangs up at once."""
    gw = Gateway(cfg)
    await gw.start()
    dog = asyncio.create_task(watchdog.watch(gw.engine, cfg.sip.watchdog_s))
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    first = await signals.get()
    drain = (cfg.shutdown.drain_s if drain_s is None else drain_s) \
        if first == signal.SIGTERM else 0.0
    log.info("stopping", extra={"signal": first.name, "drain_s": drain})
    dog.cancel()
    stopping = asyncio.create_task(gw.stop(drain))
    again = asyncio.create_task(signals.get())
    await asyncio.wait({stopping, again}, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        log.info("second signal: stopping now")
        gw.drain_deadline = 0.0
        await stopping
    again.cancel()
