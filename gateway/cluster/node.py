"""A gateway node in a cluster: rooms with one owner cluster-wide, and cascade legs.

`ClusterNode` stands in front of the local `Conferences` as the rooms service of every
call: a caller joins the local room as before, and the node makes sure that room is either
owned here (the mix is here; other nodes' cascade legs come in as always-mixed participants)
or bridged to its owner by one cascade leg per (room, node) that is itself an always-mixed
participant of the local room. Cascade legs are ordinary calls in ordinary rooms on both
sides; they belong to an internal application without webhooks.

One loop carries out gateway.cluster.ownership.plan for each room, every tick (renewing the
owner's lease) and at once when a caller joins or leaves. Redis failing stops nothing: the
node keeps the rooms, mixes and bridges it has, and re-publishes when Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web

from gateway.call import outbound
from gateway.call.services import Services
from gateway.call.session import CallSession
from gateway.cluster import cascade
from gateway.cluster.config import ClusterConfig
from gateway.cluster.moderation import part_shared
from gateway.cluster.moderation_store import Moderation
from gateway.cluster.ownership import (
    Adopt,
    Bridge,
    Claim,
    Forget,
    Local,
    Release,
    Renew,
    StepDown,
    TryClaim,
    Unbridge,
    admit_leg,
    plan,
)
from gateway.cluster.quota import CustomerQuota
from gateway.cluster.reconcile import LostCalls
from gateway.cluster.redis_store import ClusterStore
from gateway.conferences import Conferences, StatusHook
from gateway.config import Application
from gateway.waits import cancel_and_wait, wait_event
from media.rooms import MemberOptions, RoomKey
from sip import commands as cmd
from sip import events as ev
from sip.engine import SipCommandError

log = logging.getLogger("minivoice.cluster")

INTERNAL_APP_ID = "app_cluster"


# How a cascade leg (another node's share of the room) joins: always mixed, never beeps,
# and no wait music (it would carry it to the other node); its start_on_enter is set by
# gateway.cluster.moderation (it starts the part only while the far side has a
# start_on_enter participant).
CASCADE = MemberOptions(always_source=True)
# A joining caller waits this long for Redis (its member entry and the room's shared
# status_url); past it the join goes on with what this node knows, and the write finishes
# (or fails) behind it.
JOIN_REDIS_WAIT_S = 0.5
# At stop (gateway.stopwatch's budget): the loops end, members' tasks (their SIP commands
# cannot complete: the engine stopped before), then our rooms are released in Redis.
STOP_LOOPS_S = 0.5
STOP_TASKS_S = 0.1
STOP_REDIS_S = 1.5
STOP_S = STOP_LOOPS_S + STOP_TASKS_S + STOP_REDIS_S
# A part that stops being shared (its last cascade leg gone) still syncs start_on_enter for
# this many ticks: an end_on_exit mark written by the node whose part ended (which also
# drops the leg) may reach Redis after the leg's BYE reached us.
MODERATION_LINGER_TICKS = 3


@dataclass
class RoomState:
    callers: set[str] = field(default_factory=set)
    inbound: dict[str, CallSession] = field(default_factory=dict)  # legs taken in as owner
    inbound_node: dict[str, str] = field(default_factory=dict)  # their call ID -> their node
    owned_epoch: int | None = None
    bridge: Claim | None = None
    bridge_leg: CallSession | None = None
    max_epoch: int = 0
    # The owner of the newest claim seen for the room (None: none seen). An Adopt while it
    # names another node is a change of owner, which the room's status_url hears about.
    last_owner: str | None = None
    # Members of the room on other nodes, as of our last join or leave (room events'
    # `participants` count them).
    others: int = 0
    # start_on_enter sharing (gateway.cluster.moderation.part_shared): loop time until which
    # the part syncs (shared now, or a few ticks ago), and whether we may have an entry in
    # Redis to withdraw once it stops.
    shared_until: float = float("-inf")
    published: bool = False

    def local(self, hold_off: bool = False) -> Local:
        return Local(callers=len(self.callers), inbound_legs=len(self.inbound),
                     owned_epoch=self.owned_epoch, bridge=self.bridge,
                     max_epoch_seen=self.max_epoch, hold_off=hold_off)


def internal_app(key: RoomKey) -> Application:
    """The application of cascade legs: the room's customer, no answer_url, no webhooks."""
    return Application(id=INTERNAL_APP_ID, customer_id=key.customer_id,
                       answer_url="http://127.0.0.1/unused", secret="cluster-internal")


class ClusterNode:
    def __init__(self, cfg: ClusterConfig, conferences: Conferences) -> None:
        assert cfg.node_id is not None
        self.cfg = cfg
        self.me: str = cfg.node_id
        self.conferences = conferences
        self.store = ClusterStore(cfg.redis_url)
        # Our live calls in Redis, and the calls of nodes that died (gateway.cluster.lost).
        self.lost = LostCalls(self.me, self.store, cfg.tick_s, INTERNAL_APP_ID)
        self._lost_task: asyncio.Task[None] | None = None
        # limits.max_calls_per_customer across the nodes (attached only with a limit).
        self.quota = CustomerQuota(self.me, self.store, cfg.tick_s, cfg.node_ttl_s,
                                   INTERNAL_APP_ID)
        self._quota_task: asyncio.Task[None] | None = None
        self.rooms: dict[RoomKey, RoomState] = {}
        self.services: Services | None = None
        self.sip_address = ""
        self.http_url = ""
        self.redis_ok = True
        self._redis_back_at = -1e9  # loop time Redis last came back (see Local.hold_off)
        self._dirty: set[RoomKey] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Room events once per room, not once per node (docs/api.md, Conference events).
        conferences.room_wide_events_here = False
        conferences.remote_count = self._others
        # start_on_enter / end_on_exit across nodes (gateway.cluster.moderation); our
        # entries live as long as our liveness record and are checked every tick.
        self.moderation = Moderation(
            self.me, self.store.redis, self.store.p, conferences, cfg.node_ttl_s, cfg.tick_s,
            self._redis_down)
        conferences.on_ended_by_exit = self._ended_by_exit

    def _ended_by_exit(self, key: RoomKey) -> None:
        self._spawn(self.moderation.mark_ended(key))

    def _others(self, key: RoomKey) -> int:
        st = self.rooms.get(key)
        return st.others if st is not None else 0

    # -- life ------------------------------------------------------------------------------
    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the loop runs from `start` (once SIP is up) to here."""
        yield
        loops = [t for t in (self._task, self._lost_task, self._quota_task) if t is not None]
        # Cancelled again until they end (a cancellation can be lost inside the Redis client:
        # gateway.waits), and bounded: a CI run once saw a node still running 15 s after
        # SIGTERM, its SIP engine long stopped, waiting here for a loop that ran on.
        for task in await cancel_and_wait(loops, timeout=STOP_LOOPS_S):
            log.warning("cluster.task_stuck", extra={"node": self.me,
                                                     "task": task.get_name()})
        if self._tasks:  # members' removals, legs being hung up
            await asyncio.wait(set(self._tasks), timeout=STOP_TASKS_S)
        # Leaving cleanly: free our rooms now rather than when their leases lapse. Bounded:
        # an unreachable Redis must not hold the exit (the leases lapse anyway).
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_REDIS_S):
                # Calls that ended on the way out must not be taken for lost ones.
                self.lost.resync = True
                await self.lost.flush()
                if self._quota_task is not None:
                    with contextlib.suppress(Exception):
                        await self.quota.close()
                for key, st in list(self.rooms.items()):
                    if st.owned_epoch is not None:
                        with contextlib.suppress(Exception):
                            await self.store.release(key, self.me, st.owned_epoch)
                await self.store.close()

    def start(self, services: Services, sip_address: str, http_url: str) -> None:
        self.services = services
        self.sip_address = self.cfg.sip_address or sip_address
        self.http_url = self.cfg.http_url or http_url
        self._task = asyncio.create_task(self._run(), name="cluster")
        self._lost_task = asyncio.create_task(self.lost.run(), name="cluster-calls")
        if self.quota.calls is not None:
            self._quota_task = asyncio.create_task(self.quota.run(), name="cluster-quota")
        log.info("cluster.node", extra={"node": self.me, "sip": self.sip_address,
                                        "http": self.http_url})

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def kick(self, key: RoomKey) -> None:
        self._dirty.add(key)
        self._wake.set()

    # -- the rooms service (gateway.call.services.Rooms) -----------------------------------
    async def join(self, key: RoomKey, call_id: str, *args: Any, **options: Any) -> str:
        """Conferences.join, with the room made cluster-wide; its options pass through.
        The room's status_url is shared through Redis (the first one given on any node),
        so that every node sends its own participants' events there; conference.started is
        sent by the node whose caller created the room, conference.ended by the node whose
        caller was the last to leave it (decided atomically in Redis)."""
        st = self.rooms.setdefault(key, RoomState())
        st.callers.add(call_id)
        status = options.get("status")
        fresh = key not in self.conferences.book.rooms
        added = self._spawn(self.store.join(
            key, call_id, self.me, status.url if isinstance(status, StatusHook) else None,
            status.app_id if isinstance(status, StatusHook) else ""))
        self.kick(key)
        done, _ = await asyncio.wait({added}, timeout=JOIN_REDIS_WAIT_S)
        if added in done and added.exception() is None:
            got = added.result()
            st.others = got.others
            if got.url is not None and got.app_id is not None:
                hook = StatusHook(got.url, got.app_id)
                options["status"] = hook
                if got.first and fresh and got.others == 0:
                    self.conferences.notify_room(key, "conference.started", hook, 1)
        elif added in done:
            self._redis_down(cast(Exception, added.exception()))
        # Once the caller is in the room part (Conferences.join puts them in before its
        # first await): the part may now have a start_on_enter participant to publish.
        asyncio.get_running_loop().call_soon(self.kick, key)
        try:
            return await self.conferences.join(key, call_id, *args, **options)
        finally:
            st.callers.discard(call_id)
            self._spawn(self._remove_member(added, key, call_id))
            self.kick(key)

    async def _remove_member(self, added: asyncio.Task[Any], key: RoomKey, call_id: str
                             ) -> None:
        with contextlib.suppress(Exception):  # after the add: a quick leave cannot overtake it
            await added
        try:
            got = await self.store.leave(key, call_id, self.me)
        except Exception as exc:  # Redis down: republished when it is back (heartbeat)
            self._redis_down(exc)
            return
        st = self.rooms.get(key)
        if st is not None:
            st.others = got.others
        if got.first and got.url is not None and got.app_id is not None:
            self.conferences.notify_room(key, "conference.ended",
                                         StatusHook(got.url, got.app_id), 0)

    def is_cascade_leg(self, call_id: str) -> bool:
        return any(call_id in st.inbound or (st.bridge_leg is not None
                                             and st.bridge_leg.call_id == call_id)
                   for st in self.rooms.values())

    async def _redis_quiet(self, coro: Any) -> None:
        try:
            await coro
        except Exception as exc:  # Redis down: republished when it is back (heartbeat)
            self._redis_down(exc)

    def _redis_down(self, exc: Exception) -> None:
        if self.redis_ok:
            log.warning("cluster.redis_down", extra={"node": self.me, "error": str(exc)})
        self.redis_ok = False

    # -- the loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = 0.0
        while True:
            now = loop.time()
            tick = now >= next_tick
            if tick:
                next_tick = now + self.cfg.tick_s
                await self._heartbeat()
                await self._end_legs_of_dead_nodes()
                keys = set(self.rooms)
            else:
                keys = set(self._dirty)
            self._dirty.clear()
            self._wake.clear()
            for key in keys:
                try:
                    await self._reconcile(key, tick)
                except Exception as exc:
                    if "redis" in type(exc).__module__ or isinstance(exc, OSError):
                        self._redis_down(exc)
                    else:
                        log.exception("cluster.reconcile_failed", extra={"room": key.name})
            if not self._dirty:
                # not wait_for: on 3.11 it can swallow our cancellation at exit (gateway.waits)
                await wait_event(self._wake, max(0.0, next_tick - loop.time()))

    async def _heartbeat(self) -> None:
        legs = len(self.services.calls) if self.services else 0  # type: ignore[arg-type]
        try:
            existed = await self.store.heartbeat(
                self.me, self.cfg.node_ttl_s, self.sip_address, self.http_url, legs,
                os.getloadavg()[0])
        except Exception as exc:
            self._redis_down(exc)
            return
        if not self.redis_ok or not existed:
            # Redis is back (or lost our record): publish what it must know about us again.
            self.lost.resync = True
            self.lost.fence = True  # were we taken for dead? (our record had expired)
            for key, st in list(self.rooms.items()):
                hook = self.conferences.status.get(key)  # the room's status_url, shared
                for cid in list(st.callers):
                    await self._redis_quiet(self.store.join(
                        key, cid, self.me, hook.url if hook else None,
                        hook.app_id if hook else ""))
            if not self.redis_ok:
                log.info("cluster.redis_back", extra={"node": self.me})
            # Even a restart quicker than a tick (no failed command seen) shows here, as our
            # record missing: the owners get their lease's time to put their claims back.
            self._redis_back_at = asyncio.get_running_loop().time()
            self.redis_ok = True

    async def _end_legs_of_dead_nodes(self) -> None:
        """A node that dies sends no BYE: its cascade legs into rooms we own would stay up
        until the media timeout, keeping our part of the room (and our drain at shutdown)
        alive. End them once the node's liveness record has expired. Not while Redis may be
        empty after a restart (every node re-registers within a tick of finding its record
        gone), nor when our own record is missing (then Redis, not the node, is the news)."""
        senders = {n for st in self.rooms.values() for n in st.inbound_node.values()}
        loop = asyncio.get_running_loop()
        if not senders or not self.redis_ok \
                or loop.time() - self._redis_back_at < self.cfg.node_ttl_s:
            return
        try:
            live = set(await self.store.nodes())
        except Exception as exc:
            self._redis_down(exc)
            return
        if self.me not in live or senders <= live:
            return
        for key, st in self.rooms.items():
            for cid, node in list(st.inbound_node.items()):
                leg = st.inbound.get(cid)
                if node in live or leg is None or leg.ended.is_set():
                    continue
                st.inbound_node.pop(cid, None)  # once: ending takes longer than a tick
                log.warning("cluster.leg_of_dead_node", extra={
                    "call_id": cid, "room": key.name, "from_node": node})
                self._spawn(leg.end_call(200, "cluster_node_lost", "Node Lost"))

    def _hold_off(self) -> bool:
        """Redis came back a moment ago (Local.hold_off, moderation.after_read)."""
        return asyncio.get_running_loop().time() - self._redis_back_at < self.cfg.lease_s

    @staticmethod
    def _legs(st: RoomState) -> dict[str, str | None]:
        """Our cascade legs in the room -> their far node (None: ours to the owner)."""
        legs: dict[str, str | None] = dict(st.inbound_node)
        if st.bridge_leg is not None:
            legs[st.bridge_leg.call_id] = None
        return legs

    async def _reconcile(self, key: RoomKey, tick: bool = True) -> None:
        """The room's ownership plan, then its start_on_enter sharing (after the plan, so
        that a part that just claimed the room shares nothing and one that just started
        bridging publishes at once). `tick`: this is the tick's pass over every room, not
        a pass for a change."""
        st = self.rooms.get(key)
        if st is None:
            return
        hold_off = self._hold_off()
        forgotten = await self._own(key, st, hold_off)
        await self._moderate(key, st, hold_off, tick, forgotten)

    async def _moderate(self, key: RoomKey, st: RoomState, hold_off: bool, tick: bool,
                        forgotten: bool) -> None:
        """start_on_enter / end_on_exit across nodes, for a part that is shared
        (gateway.cluster.moderation.part_shared) or was a few ticks ago: a sync every tick,
        and on a change of its starter or its legs. A room whose callers are all on this
        node (most rooms) costs no Redis work here at all: nobody else needs its state, and
        it needs nobody's, until a cascade leg joins it. Then both ends read and publish at
        once (the owner before answering the leg, the other node as soon as it bridges and
        again once the leg is in its part), so the leg counts right before it carries a
        sound. The alternatives weighed: piggybacking the publish/read on the claim and
        renewal scripts would still run Redis work per room per tick (only one call instead
        of two), and publishing only for rooms with a non-default participant would still
        need every shared part to read."""
        now = asyncio.get_running_loop().time()
        if not forgotten and part_shared(
                st.owned_epoch is not None,
                len(st.inbound) + (st.bridge is not None or st.bridge_leg is not None)):
            st.shared_until = now + MODERATION_LINGER_TICKS * self.cfg.tick_s
        if forgotten or now >= st.shared_until:
            if st.published:
                st.published = not await self.moderation.withdraw(key)
            else:
                self.moderation.forget(key)
            return
        st.published = True
        await self.moderation.sync(key, self._legs(st), hold_off, changed_only=not tick)

    async def _own(self, key: RoomKey, st: RoomState, hold_off: bool) -> bool:
        """Carry out gateway.cluster.ownership.plan; True: the room was forgotten."""
        claim = await self.store.get_claim(key)
        for _ in range(3):  # a claim or a failed renewal means one more plan
            if claim is not None and claim.epoch >= st.max_epoch:
                st.max_epoch = claim.epoch
                if claim.owner != self.me:
                    st.last_owner = claim.owner
            again: Claim | None = None
            for step in plan(self.me, st.local(hold_off), claim):
                if isinstance(step, TryClaim):
                    again = await self.store.claim(key, self.me, self.sip_address,
                                                   self.cfg.lease_s, step.min_epoch)
                elif isinstance(step, Renew):
                    if not await self.store.renew(key, self.me, self.sip_address,
                                                  self.cfg.lease_s, step.epoch):
                        again = await self.store.get_claim(key)
                        if again is None:  # gone between the two reads: try once more
                            return False
                elif isinstance(step, Adopt):
                    st.owned_epoch = step.claim.epoch
                    log.info("conference.owner", extra={
                        "room": key.name, "customer_id": key.customer_id, "node": self.me,
                        "epoch": step.claim.epoch, "previous": st.last_owner})
                    if st.last_owner is not None:
                        # A takeover: sent by the new owner, once per adoption (a node that
                        # created the room, or re-puts its own claim after a Redis restart,
                        # has seen no other owner and sends nothing).
                        self.conferences.notify(key, "conference.owner_changed", data={
                            "owner": self.me, "previous_owner": st.last_owner,
                            "epoch": step.claim.epoch})
                        st.last_owner = None
                    # Members of nodes that died with the previous owner are gone.
                    self._spawn(self._redis_quiet(self._prune(key)))
                elif isinstance(step, StepDown):
                    self._step_down(key, st, step.epoch)
                elif isinstance(step, Bridge):
                    await self._bridge(key, st, step.claim)
                elif isinstance(step, Unbridge):
                    self._unbridge(st)
                elif isinstance(step, Release):
                    await self.store.release(key, self.me, step.epoch)
                    st.owned_epoch = None
                elif isinstance(step, Forget):
                    self.rooms.pop(key, None)
                    return True
            if again is None:
                return False
            claim = again
        return False

    async def _prune(self, key: RoomKey) -> None:
        live = set(await self.store.nodes())
        for cid, node in (await self.store.members(key)).items():
            if node not in live:
                await self.store.remove_member(key, cid)

    def _step_down(self, key: RoomKey, st: RoomState, epoch: int) -> None:
        log.warning("conference.owner_lost", extra={"room": key.name, "node": self.me,
                                                    "epoch": epoch})
        st.owned_epoch = None
        for leg in list(st.inbound.values()):
            self._spawn(leg.end_call(200, "cluster_owner_changed", "Room Moved"))

    # -- cascade legs: ours to the owner -----------------------------------------------------
    async def _bridge(self, key: RoomKey, st: RoomState, claim: Claim) -> None:
        assert self.services is not None
        st.bridge = claim
        leg = await outbound.dial(
            self.services, internal_app(key), f"sip:cascade@{claim.sip}", f"mv-{self.me}",
            None, headers=cascade.headers(self.cfg.secret, key, claim.epoch, self.me),
            jb_max_ms=self.cfg.cascade_jitter_ms)
        st.bridge_leg = leg
        log.info("cluster.bridge", extra={"call_id": leg.call_id, "room": key.name,
                                          "owner": claim.owner, "epoch": claim.epoch})
        if leg.ended.is_set():
            st.bridge, st.bridge_leg = None, None
            return
        leg.task = asyncio.create_task(self._carry(key, st, leg))

    async def _carry(self, key: RoomKey, st: RoomState, leg: CallSession) -> None:
        """Our cascade leg's life: once answered, an always-mixed member of the local room."""
        try:
            await leg.answered_or_ended()
            if leg.ended.is_set():
                return
            # Once the leg is in our part (Conferences.join puts it in before its first
            # await): sync, so it counts as the owner's entry says (published before the
            # owner answered it).
            asyncio.get_running_loop().call_soon(self.kick, key)
            await self.conferences.join(
                key, leg.call_id, self.moderation.leg_options(key, CASCADE, None))
            # The local room ended under it: hang the leg up; the plan decides what next.
            await leg.end_call(200, "room_ended", "")
        finally:
            if st.bridge_leg is leg:
                st.bridge, st.bridge_leg = None, None
                # A leg that worked and ended (the owner stepped down) is re-made at once; one
                # that was refused waits for the next tick, so a refusing owner (a node that
                # restarted and forgot the room, a stale claim) gets one INVITE a tick, not a
                # storm.
                if leg.rec.answered_at is not None:
                    self.kick(key)

    def _unbridge(self, st: RoomState) -> None:
        leg = st.bridge_leg
        st.bridge, st.bridge_leg = None, None
        if leg is not None and not leg.ended.is_set():
            self._spawn(leg.end_call(200, "cluster_unbridge", "Room Moved"))

    # -- cascade legs: theirs, to us as owner ------------------------------------------------
    def incoming(self, event: ev.IncomingCall) -> None:
        """An INVITE that says it is a cascade leg: take it into the room if it is signed
        and at our epoch of a room we own."""
        assert self.services is not None
        try:
            offer = cascade.parse(self.cfg.secret, event.x_headers)
        except cascade.BadCascade as exc:
            log.warning("cluster.leg_refused", extra={"call_id": event.call_id,
                                                      "source": event.source,
                                                      "reason": str(exc)})
            self.services.send_quiet(cmd.Hangup(event.call_id, 403, "Forbidden"))
            return
        st = self.rooms.get(offer.key)
        why = admit_leg(st.owned_epoch if st else None, offer.epoch)
        if why is not None or st is None:
            log.info("cluster.leg_refused", extra={
                "call_id": event.call_id, "room": offer.key.name, "from_node": offer.node,
                "epoch": offer.epoch, "reason": why})
            if why == "newer_epoch":  # we are a stale owner: look again now
                self.kick(offer.key)
            self.services.send_quiet(cmd.Hangup(event.call_id, 480, "Room Not Here"))
            return
        session = CallSession.inbound(self.services, event, internal_app(offer.key))
        self.services.calls.admit(session)
        st.inbound[event.call_id] = session
        st.inbound_node[event.call_id] = offer.node
        session.note("cluster.leg", room=offer.key.name, from_node=offer.node,
                     epoch=offer.epoch)
        session.task = asyncio.create_task(self._serve(offer.key, st, session))

    async def _serve(self, key: RoomKey, st: RoomState, session: CallSession) -> None:
        try:
            # Our part is shared from now on: publish our start_on_enter state before the
            # leg is answered, so the far node reads it as soon as its leg is up (a room
            # that was ours alone published nothing). Bounded, as a join's Redis write.
            sync = self._spawn(self.moderation.sync(key, self._legs(st), self._hold_off()))
            st.published = True
            await asyncio.wait({sync}, timeout=JOIN_REDIS_WAIT_S)
            await session.answer(jb_max_ms=self.cfg.cascade_jitter_ms)
            far = st.inbound_node.get(session.call_id)
            # Once the leg is in the part: sync again, so the leg counts as the far node's
            # entry says (a view read before it came may be stale).
            asyncio.get_running_loop().call_soon(self.kick, key)
            await self.conferences.join(key, session.call_id, self.moderation.leg_options(
                key, CASCADE, far if far is not None else ""))
            await session.end_call(200, "room_ended", "")
        except SipCommandError as exc:  # could not answer: the leg is ended, its node retries
            log.warning("cluster.leg_failed", extra={"call_id": session.call_id,
                                                     "error": str(exc)})
            await session.end_call(500, "sip_error", "Server Internal Error")
        finally:
            st.inbound.pop(session.call_id, None)
            st.inbound_node.pop(session.call_id, None)
            self.kick(key)
