"""The gateway process: the SIP engine, the live calls, rooms, webhooks and HTTP, wired.

Resources with a life (the SQLite store, the HTTP client pools, the webhook outbox, the
housekeeping and speaker-detection loops) are opened and closed by the aiohttp application's
`cleanup_ctx`, one context each, in order; handlers reach them through typed keys
(gateway.keys). The SIP engine starts last, once answer_url (maybe the demo) is reachable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from aiohttp import web

from gateway import api, applications, console, demo, keys, watchdog
from gateway.call import outbound
from gateway.call.services import Services, log_failure
from gateway.call.session import CallSession
from gateway.call.table import CallTable
from gateway.cluster import cascade
from gateway.cluster import http as cluster_http
from gateway.cluster import node as cluster_node
from gateway.cluster.config import node_hosts
from gateway.cluster.node import ClusterNode
from gateway.conferences import Conferences
from gateway.config import Config, DialingConfig, StartError
from gateway.dialing import pin
from gateway.edge.config import EdgeConfig, edge_registrar, from_edge
from gateway.hooks import HookClient, HttpPools
from gateway.media_cache import MediaCache
from gateway.metrics import Live, Metrics
from gateway.netguard import AddressPolicy
from gateway.outbox import Outbox
from gateway.recordings import Recordings, completed_data
from gateway.room_events import RoomEvents
from gateway.stopwatch import StopWatch, bounded
from gateway.store import Store
from gateway.threads import DaemonExecutor
from media import tones
from sip import commands as cmd
from sip import events as ev
from sip.engine import SipCommandError, SipEngine

log = logging.getLogger("minivoice.gateway")

# The stop's steps after the drain, each bounded (the budget: gateway.stopwatch).
HANGUP_S = 2.0  # every call hung up and its CallEnded in (so its call.completed is queued)
RECORDINGS_S = 2.5  # recordings stopped; a file not finalised is repaired at the next start
SIP_STOP_S = 5.0  # the SIP thread ends (a daemon: one that does not is left to the exit)
OUTBOX_DRAIN_S = 2.0  # pending webhooks may go out (the rest stay in SQLite)
SHUTDOWN_HTTP_S = 1.0  # HTTP requests under way may finish (calls are over by then)
# the cluster node's loops and its rooms' release in Redis, bounded in its steps too
CLUSTER_STOP_S = cluster_node.STOP_S
POOLS_CLOSE_S = 0.1  # the HTTP client pools
LIVE_TOUCH_S = 5.0  # how often live calls are marked live (the error on a lost call's end)


async def dial_target(edge: EdgeConfig, dialing: DialingConfig, policy: AddressPolicy,
                      to: str) -> str:
    """The SIP URI to dial for a target: a registered user via the edge; any other URI with
    its host resolved and checked against dialing.allow_private (TargetRefused if not)."""
    if to.startswith(("sip:", "sips:")):
        return await pin(to, policy, dialing.resolve_timeout_s)
    if not edge.enabled:
        raise ValueError(f"'{to}' is a registered user: that needs the SIP edge (edge:)")
    host, port = edge_registrar(edge)
    return f"sip:{to}@{host}:{port}"


class Gateway:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.engine = SipEngine(cfg.sip, self.on_sip_event)
        self.conferences = Conferences(self.send_quiet, cfg.rooms)
        # Several nodes sharing rooms (docs/cluster.md): calls join rooms through the node.
        self.cluster = ClusterNode(cfg.cluster, self.conferences) \
            if cfg.cluster.enabled else None
        self.status = keys.Status()
        self.metrics = Metrics()
        self.recordings: Recordings
        self.drain_deadline = 0.0
        self.store: Store
        self.calls: CallTable
        self.outbox: Outbox
        self.services: Services
        self.http_port = 0
        self._runner: web.AppRunner | None = None
        # Called once the drain is over: from there on the stop is bounded (serve arms
        # gateway.stopwatch with it).
        self.on_drained: Callable[[], None] | None = None
        # Called once the SIP engine stopped: under `make run` the edge stops from there, at
        # the same time as the rest of the gateway (gateway.edge.kamailio.serve_stack).
        self.on_sip_stopped: Callable[[], None] | None = None

    # -- the application and its resources -----------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app[keys.CONFIG] = self.cfg
        app[keys.STATUS] = self.status
        app[keys.ENGINE] = self.engine
        app[keys.ROOMS] = self.conferences
        app[keys.METRICS] = self.metrics
        app.cleanup_ctx.extend([self._store_ctx, self._services_ctx, self._outbox_ctx,
                                self._housekeeping_ctx, self._speakers_ctx, self._metrics_ctx])
        api.setup(app)
        if self.cluster is not None:
            app.cleanup_ctx.append(_bounded_ctx("cluster", self.cluster.ctx, CLUSTER_STOP_S))
            cluster_http.setup(app, self.cluster)
        if self.cfg.demo:
            demo.setup(app, demo.secret_from(self.cfg.applications))
        if self.cfg.http.console:
            console.setup(app, api.scope)
        return app

    async def _store_ctx(self, app: web.Application) -> AsyncIterator[None]:
        self.store = app[keys.STORE] = Store(self.cfg.database)
        self.calls = app[keys.CALLS] = CallTable(self.store)
        self.calls.on_finished = lambda s: self.metrics.call_ended(s.rec.direction,
                                                                   s.rec.status)
        yield
        self.store.close()

    async def _services_ctx(self, app: web.Application) -> AsyncIterator[None]:
        # One pool per kind of traffic; URLs from application responses (action_url,
        # redirect, play) connect only to public addresses unless hooks.allow_private.
        pools = HttpPools.open(self.cfg)
        cache_dir = Path(self.cfg.database).parent / "media-cache"
        media = MediaCache(cache_dir, pools.media, self.cfg.sip.clock_rate,
                           policy=pools.policy, cfg=self.cfg.media)  # makes cache_dir
        ringback = cache_dir / f"ringback-{self.cfg.sip.clock_rate}.wav"
        if not ringback.exists():
            tones.write_wav(ringback, tones.ringback(self.cfg.sip.clock_rate),
                            self.cfg.sip.clock_rate)
        self.conferences.beeps = tones.write_beeps(cache_dir, self.cfg.sip.clock_rate)
        self.outbox = app[keys.OUTBOX] = Outbox(
            self.store, pools.webhook, self.cfg.hooks, self.cfg.applications,
            dead_keep_s=self.cfg.records.retention_days * 86400, guarded_http=pools.action)
        self.room_events = RoomEvents(self.outbox, self.calls, self.conferences,
                                      self.cfg.applications)
        self.recordings = app[keys.RECORDINGS] = Recordings(
            self.cfg, self.store, self.conferences.book, self.engine.send,
            self.room_events.recording, self.conferences.status.get)
        self.conferences.on_room_ended = self.recordings.room_ended
        self.conferences.on_event = self.room_events.room
        self.outbox.observer = self.metrics.webhook_result
        hooks = HookClient(pools.answer, self.cfg.hooks, pools.action, pools.policy)
        hooks.observer = self.metrics.hook_done
        self.services = app[keys.SERVICES] = Services(
            engine=self.engine,
            hooks=hooks,
            media=media,
            rooms=self.cluster or self.conferences, outbox=self.outbox, calls=self.calls,
            dialer=outbound.dial, limits=self.cfg.limits,
            dial_target=functools.partial(dial_target, self.cfg.edge, self.cfg.dialing,
                                          AddressPolicy.from_config(
                                              self.cfg.dialing.allow_private)),
            ringback=ringback,
            recorder=self.recordings)
        yield
        await bounded("http_pools", pools.close(), POOLS_CLOSE_S)

    async def _outbox_ctx(self, app: web.Application) -> AsyncIterator[None]:
        elsewhere: Mapping[str, str] = {}
        if self.cluster is not None:  # our lost calls: some may be ended by a survivor
            self.cluster.lost.attach(self.calls, self.store, self.outbox,
                                     self.cfg.applications)
            if self.cfg.limits.max_calls_per_customer is not None:  # counted cluster-wide
                self.cluster.quota.attach(self.calls, self.cfg.applications)
            elsewhere = await self.cluster.lost.at_start(
                [live.call_id for live in self.store.live_all()])
        self.calls.recover_lost(self.cfg.applications, self.outbox, elsewhere)
        if self.cluster is not None:
            await self.cluster.lost.take_own()
        for row in self.recordings.recover():  # left running by a process that died
            self.room_events.recording(row, completed_data(row))
        task = asyncio.create_task(self.outbox.run())
        yield
        await self.outbox.stop()  # bounded itself (outbox.STOP_S)
        task.cancel()

    async def _housekeeping_ctx(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._housekeeping())
        yield
        task.cancel()

    async def _speakers_ctx(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.conferences.run_speaker_detection(self.engine.levels))
        yield
        task.cancel()
        await self.conferences.close()  # bounded itself (conferences.CLOSE_S)

    async def _metrics_ctx(self, app: web.Application) -> AsyncIterator[None]:
        book, calls, outbox = self.conferences.book, self.calls, self.outbox
        self.metrics.watch(Live(
            calls=lambda: (len(calls) - calls.outbound, calls.outbound),
            sip_legs=self.engine.live_legs,
            rooms=lambda: len(book.rooms),
            participants=lambda: len(book.room_of),
            webhooks_pending=outbox.pending_count,
            webhook_backlog=lambda: outbox.backlog,
            sip_loop_age=self.engine.loop_age,
            accepting=lambda: self.status.accepting))
        task = asyncio.create_task(self.metrics.probe_loop_lag())
        yield
        task.cancel()

    async def _housekeeping(self) -> None:
        """Drop call records past their retention (the outbox prunes its own rows); mark the
        live calls as still live every few seconds (see CallTable.recover_lost)."""
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

    # -- start and stop --------------------------------------------------------------------
    async def start(self) -> None:
        self._runner = web.AppRunner(self.make_app(), access_log=None,
                                     # calls are already ended here: an open HTTP
                                     # connection must not hold the exit for a minute
                                     shutdown_timeout=SHUTDOWN_HTTP_S)
        await self._runner.setup()  # runs the cleanup contexts' set-up halves
        site = web.TCPSite(self._runner, self.cfg.http.host, self.cfg.http.port)
        http = f"{self.cfg.http.host}:{self.cfg.http.port}"
        try:
            await site.start()
        except OSError as exc:  # the port taken, the address not ours
            await self._runner.cleanup()
            raise StartError(f"cannot listen for HTTP on {http}: "
                             f"{exc.strerror or exc}") from None
        bound = self._runner.addresses
        self.http_port = bound[0][1] if bound else self.cfg.http.port
        # SIP last: by the time a call arrives, answer_url (maybe the demo) is reachable.
        try:
            await self.engine.start()
        except SipCommandError as exc:  # pjsua's reason, e.g. the SIP port taken
            await self._runner.cleanup()
            raise StartError(f"cannot start SIP on {self.cfg.sip.host}:{self.cfg.sip.port}: "
                             f"{exc}") from None
        if self.cluster is not None:
            node_host, http_host = node_hosts(self.cfg.sip.host, self.cfg.sip.public_host,
                                              self.cfg.http.host)
            self.cluster.start(self.services, f"{node_host}:{self.engine.bound_port}",
                               f"http://{http_host}:{self.http_port}")
        log.info("gateway ready", extra={
            "sip": f"{self.cfg.sip.host}:{self.engine.bound_port}",
            "http": f"{self.cfg.http.host}:{self.http_port}",
            "applications": len(self.cfg.applications)})

    async def stop(self, drain_s: float = 0.0) -> None:
        self.status.accepting = False  # new INVITEs get 503 from now on
        loop = asyncio.get_running_loop()
        self.drain_deadline = loop.time() + drain_s
        if drain_s > 0 and len(self.calls):
            log.info("draining", extra={"calls": len(self.calls), "seconds": drain_s})
            while len(self.calls) and loop.time() < self.drain_deadline:
                await asyncio.sleep(0.1)
        if self.on_drained is not None:
            self.on_drained()
        await bounded("hangup", self._hang_up_all(), HANGUP_S)
        await bounded("recordings", self.recordings.stop_all("shutdown"), RECORDINGS_S)
        if not await self.engine.stop(SIP_STOP_S):
            log.warning("shutdown.step_timeout", extra={"step": "sip", "bound_s": SIP_STOP_S})
        if self.on_sip_stopped is not None:
            self.on_sip_stopped()
        await self.outbox.drain(timeout=OUTBOX_DRAIN_S)
        if self._runner:
            # The cleanup contexts, in reverse; each one bounds its own steps.
            await self._runner.cleanup()

    async def _hang_up_all(self) -> None:
        # All at once: each end_call waits for its SIP command, and there may be thousands.
        await asyncio.gather(*(s.end_call(503, "shutdown", "Service Unavailable")
                               for s in self.calls), return_exceptions=True)
        while len(self.calls):  # let CallEnded events arrive so call.completed is queued
            await asyncio.sleep(0.05)

    def send_quiet(self, command: cmd.Command) -> None:
        self.engine.send(command).add_done_callback(log_failure)

    # -- events from the SIP thread -----------------------------------------------------
    def on_sip_event(self, event: ev.Event) -> None:
        try:
            if isinstance(event, ev.IncomingCall):
                self._incoming(event)
                return
            if isinstance(event, ev.RoomPlayDone):  # a room's beep or announcement ended
                self.conferences.on_player_done(event.name)
                return
            if isinstance(event, ev.CallEnded):  # every leg, with or without a session
                self.metrics.sip_final(event.final_response, event.quality)
            self.calls.route(event)
        except Exception:
            log.exception("event handling failed", extra={
                "call_id": getattr(event, "call_id", None), "sip_event": type(event).__name__})

    def _incoming(self, event: ev.IncomingCall) -> None:
        if not self.status.accepting:
            self.send_quiet(cmd.Hangup(event.call_id, 503, "Service Unavailable"))
            return
        if self.cluster is not None and cascade.is_cascade(event.x_headers):
            self.cluster.incoming(event)  # another node's leg into a room we mix
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
        if cap is not None and self.calls.count(app.customer_id) >= cap:
            # Like the other refusals before a session exists (404, 503): no webhooks.
            log.warning("call.rejected", extra={
                "call_id": event.call_id, "customer_id": app.customer_id,
                "reason": "customer_call_limit", "limit": cap, "sip_code": 486})
            self.send_quiet(cmd.Hangup(event.call_id, 486, "Busy Here"))
            return
        session = CallSession.inbound(self.services, event, app)
        self.calls.admit(session)
        session.task = asyncio.create_task(session.run(), name=event.call_id)


async def serve(cfg: Config, drain_s: float | None = None,
                on_gateway: Callable[[Gateway], None] | None = None) -> None:
    """Run until a signal. SIGTERM drains (no new calls, calls in progress get `drain_s`);
    SIGINT (Ctrl-C) or a second signal hangs up at once. `on_gateway` sees the gateway
    before it starts (the edge hands its log events to the gateway's metrics)."""
    # Threads nobody joins: a getaddrinfo that never returns cannot hold the exit (asyncio.run
    # waits for the default executor's threads, without a time limit).
    asyncio.get_running_loop().set_default_executor(DaemonExecutor(name="asyncio"))
    gw = Gateway(cfg)
    if on_gateway is not None:
        on_gateway(gw)
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
    # A stop that hangs after the drain dumps every thread's and task's stack to the log
    # and exits (gateway.stopwatch); a normal stop is over long before.
    gw.on_drained = StopWatch(loop).arm
    stopping = asyncio.create_task(gw.stop(drain))
    again = asyncio.create_task(signals.get())
    await asyncio.wait({stopping, again}, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        log.info("second signal: stopping now")
        gw.drain_deadline = 0.0
        await stopping
    again.cancel()
    # What is left is asyncio's own clean-up: a process that logs this and does not exit is
    # held by a task or a worker thread, not by the gateway's shutdown steps.
    log.info("gateway stopped")


def _bounded_ctx(step: str, ctx: Callable[[web.Application], AsyncIterator[None]],
                 bound_s: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context whose clean-up half is bounded (gateway.stopwatch.bounded)."""
    async def wrapped(app: web.Application) -> AsyncIterator[None]:
        inner = ctx(app)
        await anext(inner)
        yield
        await bounded(step, _finish(inner), bound_s)
    return wrapped


async def _finish(gen: AsyncIterator[None]) -> None:
    async for _ in gen:  # a cleanup context yields once: this runs its clean-up half
        raise RuntimeError("a cleanup context yielded twice")
