"""`start_on_enter` / `end_on_exit` across nodes: the Redis side, and applying the rules of
gateway.cluster.moderation to this node's room parts.

Keys (beside the room's members; `{room}` is `{customer, percent-encoded}/{room}`):
    mv:starters:{room}  hash  node -> until when (Redis clock, ms) the node's part has a
                              local start_on_enter participant; kept by that node (checked
                              every tick) while its part is shared with other nodes
                              (gateway.cluster.moderation.part_shared; entry life:
                              node_ttl_s, rewritten as `rewrite_ms` says), deleted when
                              it has none or stops
                              sharing; expired entries are dropped by every sync; the key
                              itself expires STARTERS_KEY_TTL_MS after the last write
    mv:ended:{room}     str   Redis clock (ms) of the last end_on_exit end of the room;
                              ENDED_TTL_MS

Every sync is one script call (publish our entry, drop expired ones, read the rest and the
end mark, with Redis's clock). Only shared parts sync (gateway.cluster.node decides; a room
whose callers are all on one node costs nothing here). Redis unreachable: the node keeps the
last view it read for the room (legs keep their start_on_enter, nothing is ended), and its
next sync that works puts everything right (a shared part syncs every tick, so a Redis that
lost its data is refilled within a tick).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import redis.asyncio as aioredis

from gateway.cluster.cascade import encode_room
from gateway.cluster.moderation import (
    BadView,
    View,
    after_read,
    has_local_starter,
    leg_changes,
    leg_starts,
    parse_view,
    part_created_ms,
    part_ends,
)
from gateway.conferences import Conferences
from media.rooms import MemberOptions, RoomKey

log = logging.getLogger("minivoice.cluster")

STARTERS_KEY_TTL_MS = 3_600_000
# Long enough for every node to see it (a few ticks), short enough to cost nothing.
ENDED_TTL_MS = 60_000

# KEYS: starters hash, ended mark. ARGV: node, 1 (we have a starter) / 0, entry ttl ms,
# key ttl ms, rewrite ms. Returns {now ms, ended ms or false, live node, ...} (ours first).
# A shared part syncs every tick, so the steady case is read-only: our entry is rewritten
# (and the key's life renewed) only once less than `rewrite ms` of its life is left, and
# deleted only if it is there.
_SYNC = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now, redis.call('GET', KEYS[2]) or false}
local all = redis.call('HGETALL', KEYS[1])
local ttl = tonumber(ARGV[3])
local ours = false
if ARGV[2] == '1' then out[3] = ARGV[1] end
for i = 1, #all, 2 do
  local until_ms = tonumber(all[i + 1])
  if all[i] == ARGV[1] then
    ours = until_ms or 0
  elseif until_ms == nil or until_ms < now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif #out < 258 then
    out[#out + 1] = all[i]
  end
end
if ARGV[2] == '1' then
  if not ours or ours < now + tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[1], ARGV[1], now + ttl)
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  end
elseif ours then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return out
"""

# KEYS: ended mark. ARGV: ttl ms. Returns the mark (Redis clock, ms).
_END = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], now, 'PX', ARGV[1])
return now
"""


def rewrite_ms(entry_ttl_ms: int, tick_ms: int) -> int:
    """How little of our entry's life may be left before a sync rewrites it (the script's
    `rewrite ms`): once half of the life is gone, or 3 ticks before its end if that is
    sooner, so that a tick or two running late never lets a live entry lapse (a part with
    no starter of its own would stop). A life of 3 ticks or less (the config refuses one):
    the whole life, rewritten at every sync. Never more than the life, never negative."""
    life = max(0, entry_ttl_ms)
    return min(life, max(life - life // 2, 3 * max(0, tick_ms)))


class Moderation:
    """One node's side: `sync` a room part (every tick and when it changes), `mark_ended`
    when an end_on_exit participant ended it here."""

    def __init__(self, me: str, redis: aioredis.Redis, prefix: str, conferences: Conferences,
                 entry_ttl_s: float, tick_s: float,
                 on_redis_error: Callable[[Exception], None]) -> None:
        """`entry_ttl_s`: the life of our entry (the node's liveness TTL); `tick_s`: how
        often a shared part syncs (see `rewrite_ms`)."""
        self.me = me
        self.p = prefix
        self.conferences = conferences
        self.entry_ttl_ms = max(1000, int(entry_ttl_s * 1000))
        self.rewrite_ms = rewrite_ms(self.entry_ttl_ms, int(tick_s * 1000))
        self.on_redis_error = on_redis_error
        self._sync = redis.register_script(_SYNC)
        self._end = redis.register_script(_END)
        self.redis = redis
        # The last view read per room this node has: kept while Redis is unreachable.
        self.views: dict[RoomKey, View] = {}
        # What the last sync that worked published per room: whether our part had a local
        # starter, our legs (-> far node) and which of them were in the part. A sync for a
        # change (`changed_only`) with none of that changed is skipped: the next tick's
        # reads the others' anyway, as it would have.
        self._last: dict[RoomKey, tuple[bool, frozenset[tuple[str, str | None]],
                                        frozenset[str]]] = {}

    def _keys(self, key: RoomKey) -> list[str]:
        rid = encode_room(key)
        return [f"{self.p}:starters:{rid}", f"{self.p}:ended:{rid}"]

    def starters(self, key: RoomKey) -> frozenset[str]:
        view = self.views.get(key)
        return view.starters if view is not None else frozenset()

    def leg_options(self, key: RoomKey, base: MemberOptions, far: str | None) -> MemberOptions:
        """How a cascade leg joins our part: `base` with start_on_enter as the last view
        says (none read yet: it does not start the part)."""
        return replace(base, start_on_enter=leg_starts(self.me, far, self.starters(key)))

    async def sync(self, key: RoomKey, legs: Mapping[str, str | None],
                   hold_off: bool = False, changed_only: bool = False) -> None:
        """Publish whether our part has a local start_on_enter participant, read the
        others', set our cascade legs' start_on_enter accordingly, and end our part if an
        end_on_exit participant ended the room elsewhere since it was created. `legs`: our
        cascade legs in this room -> far node (None: ours to the owner). Never raises for
        Redis: an error keeps the last view. `hold_off`: Redis came back a moment ago
        (gateway.cluster.moderation.after_read). `changed_only`: skip it (no Redis) if our
        starter, our legs and which of them are in the part are as at the last sync."""
        room = self.conferences.book.rooms.get(key)
        mine = room is not None and has_local_starter(room.members.values())
        state = (mine, frozenset(legs.items()),
                 frozenset(c for c in legs if room is not None and c in room.members))
        if changed_only and self._last.get(key) == state:
            return
        try:
            raw = await self._sync(keys=self._keys(key), args=[
                self.me, "1" if mine else "0", self.entry_ttl_ms, STARTERS_KEY_TTL_MS,
                self.rewrite_ms])
            got = parse_view(raw)
        except BadView as exc:
            self._last[key] = state  # published; the reply was garbage (the next tick reads)
            log.warning("cluster.bad_starters", extra={"room": key.name, "error": str(exc)})
            return
        except Exception as exc:  # Redis down: keep what we knew
            self._last.pop(key, None)
            self.on_redis_error(exc)
            return
        self._last[key] = state
        before = self.views.get(key)
        view = after_read(before, got, hold_off)
        if room is None:
            self.views.pop(key, None)
            return
        self.views[key] = view
        if before is None or before.starters != view.starters:
            log.info("conference.starters", extra={
                "room": key.name, "customer_id": key.customer_id, "node": self.me,
                "starters": ",".join(sorted(view.starters)), "local": mine})
        if part_ends(view, part_created_ms(room.created_at, time.time(), view)):
            log.info("conference.ended_elsewhere", extra={
                "room": key.name, "customer_id": key.customer_id, "node": self.me})
            self.conferences.end(key)
            return
        current = {cid: room.members[cid].start_on_enter for cid in legs if cid in room.members}
        for cid, value in leg_changes(self.me, legs, current, view.starters).items():
            self.conferences.set_start_on_enter(cid, value)

    def forget(self, key: RoomKey) -> None:
        """Drop what we know of the room: a part that shares nothing reads nothing, so a
        view kept would go stale (a leg that joins later starts from none, and the sync at
        its arrival reads the others afresh; a Redis hold-off never keeps a stale node)."""
        self.views.pop(key, None)
        self._last.pop(key, None)

    async def withdraw(self, key: RoomKey) -> bool:
        """Our part stopped sharing (its legs are gone, or the part itself): remove our
        entry now rather than let it lapse, so that a node that bridges to us later reads
        no stale starter of ours before our first sync. False: Redis did not answer."""
        try:
            await self.redis.hdel(self._keys(key)[0], self.me)
        except Exception as exc:
            self.on_redis_error(exc)
            return False
        self.forget(key)
        return True

    async def mark_ended(self, key: RoomKey) -> None:
        """An end_on_exit participant ended our part: the other nodes end theirs. Redis
        unreachable: they do not (logged)."""
        try:
            await self._end(keys=self._keys(key)[1:], args=[ENDED_TTL_MS])
        except Exception as exc:
            log.warning("cluster.end_not_shared", extra={
                "room": key.name, "customer_id": key.customer_id, "error": str(exc)})
            self.on_redis_error(exc)
