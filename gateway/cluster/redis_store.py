"""The thin Redis adapter of the cluster: room claims (Lua, atomic), node liveness, room
members. Every rule about *what* to do lives in gateway.cluster.ownership; this module only
reads and writes.

Keys (customer ids are percent-encoded, so a ':' in one cannot alias another's key):
    mv:node:{node}                 hash  sip, http, legs, load        TTL node_ttl_s
    mv:nodes                       set   node ids (stale ids are dropped by readers)
    mv:room:{customer}/{room}      hash  owner, epoch, sip            TTL lease_s (the lease)
    mv:epoch:{customer}/{room}     int   the last epoch given out     TTL 1 day
    mv:members:{customer}/{room}   hash  call id -> node
    mv:rooms                       set   {customer}/{room} of rooms with a claim
    mv:status:{customer}/{room}    hash  url, app: the room's status_url  TTL 1 day, per join
    mv:calls:{node}                hash  call id -> the live call's record  TTL 7 days
    mv:seen:{node}                 str   unix time the node last wrote them TTL 7 days
    mv:callnodes                   set   node ids that have call records
    mv:reconciler:{node}           str   the survivor taking a dead node's calls  TTL 30 s
    mv:done:{call id}              str   the node that sent its call.completed  TTL 7 days
(gateway.cluster.lost says what the call records are for; mv:starters:{room} and
mv:ended:{room}, for start_on_enter / end_on_exit, are gateway.cluster.moderation_store's.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from gateway.cluster.cascade import encode_room
from gateway.cluster.ownership import Claim
from media.rooms import RoomKey

EPOCH_TTL_MS = 86_400_000
CALLS_TTL_MS = 7 * 86_400_000  # call records and done markers of a node nobody reconciled
LOCK_TTL_MS = 30_000  # a survivor that died while taking a dead node's calls: the next one

# KEYS: room, epoch counter, rooms set. ARGV: node, sip, lease ms, min epoch, room id.
# Creates the claim only if there is none; returns the claim that stands afterwards.
_CLAIM = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'sip')
if cur[1] then return cur end
local e = tonumber(redis.call('GET', KEYS[2]) or '0')
local m = tonumber(ARGV[4])
if m > e then e = m end
e = e + 1
redis.call('SET', KEYS[2], e, 'PX', EPOCH_TTL)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', e, 'sip', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[5])
return {ARGV[1], tostring(e), ARGV[2]}
""".replace("EPOCH_TTL", str(EPOCH_TTL_MS))

# KEYS: room, epoch counter, rooms set. ARGV: node, sip, lease ms, epoch, room id.
# Extends our lease if the claim is still ours at our epoch; if there is no claim and no
# newer epoch was given out (Redis restarted, or the lease lapsed and nobody claimed), puts
# ours back. 1 = we own it, 0 = we do not (a stale owner can never renew).
_RENEW = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if cur[1] == ARGV[1] and cur[2] == ARGV[4] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], EPOCH_TTL)
  return 1
end
if cur[1] then return 0 end
local e = tonumber(redis.call('GET', KEYS[2]) or '0')
if e > tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[2], ARGV[4], 'PX', EPOCH_TTL)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', ARGV[4], 'sip', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[5])
return 1
""".replace("EPOCH_TTL", str(EPOCH_TTL_MS))

# KEYS: room, rooms set. ARGV: node, epoch, room id. Only the owner at its epoch releases.
_RELEASE = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if cur[1] == ARGV[1] and cur[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[3])
  return 1
end
return 0
"""

# KEYS: node, nodes set. ARGV: node id, ttl ms, then field/value pairs.
# 1 if the record was there (0: new, or Redis lost it: the caller republishes its members).
_HEARTBEAT = """
local existed = redis.call('EXISTS', KEYS[1])
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return existed
"""

# Take up to ARGV[3] of a node's call records, each only with its done marker won (SET NX).
# KEYS: liveness, calls hash, seen, call-nodes set, reconciler lock.
# ARGV: me, the node, batch, done prefix, done ttl ms, lock ttl ms, force (1: our own
# records, taken at our start, whatever the liveness key or the lock say).
# Returns {'alive'} / {'busy', holder} / {'ok', seen, remaining, id1, rec1, id2, rec2, ...}.
_TAKE = """
if ARGV[7] ~= '1' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {'alive'} end
  local holder = redis.call('GET', KEYS[5])
  if holder and holder ~= ARGV[1] then return {'busy', holder} end
  redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[6])
end
local out = {'ok', redis.call('GET', KEYS[3]) or '', 0}
-- HRANDFIELD, not HKEYS: a hash grown huge (not by us) costs a batch's work, not all of it
local page = redis.call('HRANDFIELD', KEYS[2], ARGV[3], 'WITHVALUES')
local n = tonumber(ARGV[3])
for i = 1, math.min(n, #page / 2) do
  local f = page[2 * i - 1]
  local v = page[2 * i]
  redis.call('HDEL', KEYS[2], f)
  if string.len(f) <= 128 and redis.call('SET', ARGV[4] .. f, ARGV[1], 'NX', 'PX', ARGV[5]) then
    out[#out + 1] = f
    out[#out + 1] = v
  end
end
local left = redis.call('HLEN', KEYS[2])
out[3] = left
if left == 0 then
  redis.call('SREM', KEYS[4], ARGV[2])
  redis.call('DEL', KEYS[3])
  if ARGV[7] ~= '1' then redis.call('DEL', KEYS[5]) end
end
return out
"""

# A restarted node claims the calls its SQLite left live: SET NX of each one's done marker.
# ARGV: me, done prefix, ttl ms, call ids. Returns, per id, the marker's value afterwards.
_MARK = """
local out = {}
for i = 4, #ARGV do
  local k = ARGV[2] .. ARGV[i]
  redis.call('SET', k, ARGV[1], 'NX', 'PX', ARGV[3])
  out[#out + 1] = redis.call('GET', k)
end
return out
"""


@dataclass(frozen=True)
class Take:
    """One take script call: `state` ok / alive / busy; the records we won the marker of."""

    state: str
    seen: Any = None
    remaining: int = 0
    pairs: tuple[tuple[Any, Any], ...] = ()


# KEYS: members, status. ARGV: call id, node, status url ('' for none), its app id, ttl ms,
# the node records' key prefix. A caller joins: its member entry, and the room's
# status_url, the first one given anywhere (created = 1 for the join that set it). A room
# with no member on a live node is a new room: the members and status_url left by nodes
# that died are dropped first (else a new room of the same name would inherit them). Reads
# the node records (mv:node:*) by name: one Redis, not Redis Cluster. Returns url, app id
# (false: none), created, and how many members other nodes have.
_JOIN = """
local old = redis.call('HGETALL', KEYS[1])
local live = false
for i = 2, #old, 2 do
  if old[i] == ARGV[2] or redis.call('EXISTS', ARGV[6] .. old[i]) == 1 then live = true end
end
if not live then
  redis.call('DEL', KEYS[1], KEYS[2])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local created = 0
if ARGV[3] ~= '' and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'url', ARGV[3], 'app', ARGV[4])
  created = 1
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local hook = redis.call('HMGET', KEYS[2], 'url', 'app')
local others = 0
local all = redis.call('HVALS', KEYS[1])
for i = 1, #all do if all[i] ~= ARGV[2] then others = others + 1 end end
return {hook[1], hook[2], created, others}
"""

# KEYS: members, status. ARGV: call id, node. A caller leaves; if it was the room's last
# member on any node, the room's status_url is taken (deleted) by this leave, so that
# exactly one node sends conference.ended. Returns ended (1/0), url, app id, others.
_LEAVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
local all = redis.call('HVALS', KEYS[1])
if #all == 0 then
  local hook = redis.call('HMGET', KEYS[2], 'url', 'app')
  if redis.call('DEL', KEYS[2]) == 1 then return {1, hook[1], hook[2], 0} end
  return {0, false, false, 0}
end
local others = 0
for i = 1, #all do if all[i] ~= ARGV[2] then others = others + 1 end end
return {0, false, false, others}
"""


@dataclass(frozen=True)
class RoomHook:
    """The room's status_url as Redis has it (url None: none), and the members of other
    nodes after a join or leave."""

    url: str | None
    app_id: str | None
    first: bool  # this join set the status_url / this leave ended the room cluster-wide
    others: int


@dataclass(frozen=True)
class NodeInfo:
    node: str
    sip: str
    http: str
    legs: int
    load: float


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class ClusterStore:
    def __init__(self, url: str, prefix: str = "mv") -> None:
        # Short timeouts: a Redis that is down must not stall a call's join for long (the
        # node carries on with what it knows; see gateway.cluster.node).
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0, retry_on_timeout=False)
        self.p = prefix
        self._claim = self.redis.register_script(_CLAIM)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        self._join = self.redis.register_script(_JOIN)
        self._leave = self.redis.register_script(_LEAVE)
        self._take = self.redis.register_script(_TAKE)
        self._mark = self.redis.register_script(_MARK)

    async def close(self) -> None:
        await self.redis.aclose()

    # -- keys --------------------------------------------------------------------------
    def _room_keys(self, key: RoomKey) -> tuple[str, str, str, str]:
        rid = encode_room(key)
        return (f"{self.p}:room:{rid}", f"{self.p}:epoch:{rid}", f"{self.p}:rooms", rid)

    def _members(self, key: RoomKey) -> str:
        return f"{self.p}:members:{encode_room(key)}"

    # -- claims ------------------------------------------------------------------------
    async def claim(self, key: RoomKey, node: str, sip: str, lease_s: float,
                    min_epoch: int = 0) -> Claim:
        room, counter, rooms, rid = self._room_keys(key)
        got = await self._claim(keys=[room, counter, rooms],
                                args=[node, sip, int(lease_s * 1000), min_epoch, rid])
        return Claim(_s(got[0]), int(_s(got[1])), _s(got[2]))

    async def renew(self, key: RoomKey, node: str, sip: str, lease_s: float,
                    epoch: int) -> bool:
        room, counter, rooms, rid = self._room_keys(key)
        return bool(await self._renew(keys=[room, counter, rooms],
                                      args=[node, sip, int(lease_s * 1000), epoch, rid]))

    async def release(self, key: RoomKey, node: str, epoch: int) -> bool:
        room, _, rooms, rid = self._room_keys(key)
        return bool(await self._release(keys=[room, rooms], args=[node, epoch, rid]))

    async def get_claim(self, key: RoomKey) -> Claim | None:
        got = await self.redis.hmget(self._room_keys(key)[0], ["owner", "epoch", "sip"])
        if got[0] is None or got[1] is None:
            return None
        return Claim(_s(got[0]), int(_s(got[1])), _s(got[2] or b""))

    async def rooms_named(self, name: str) -> list[RoomKey]:
        """Rooms with a claim whose name is `name` (any customer)."""
        from urllib.parse import unquote
        found = []
        for rid in await self.redis.smembers(f"{self.p}:rooms"):
            cust, _, room = _s(rid).partition("/")
            if room == name:
                found.append(RoomKey(unquote(cust), room))
        return sorted(found)

    # -- nodes -------------------------------------------------------------------------
    async def heartbeat(self, node: str, ttl_s: float, sip: str, http: str, legs: int,
                        load: float) -> bool:
        got = await self._heartbeat(
            keys=[f"{self.p}:node:{node}", f"{self.p}:nodes"],
            args=[node, int(ttl_s * 1000), "sip", sip, "http", http, "legs", legs,
                  "load", f"{load:.3f}"])
        return bool(got)

    async def nodes(self) -> dict[str, NodeInfo]:
        """Live nodes (their record has not expired)."""
        out: dict[str, NodeInfo] = {}
        ids = [_s(n) for n in await self.redis.smembers(f"{self.p}:nodes")]
        for node in sorted(ids):
            h = cast(dict[bytes, bytes],
                     await self.redis.hgetall(f"{self.p}:node:{node}"))
            if not h:
                await self.redis.srem(f"{self.p}:nodes", node)
                continue
            out[node] = NodeInfo(node, _s(h.get(b"sip", b"")), _s(h.get(b"http", b"")),
                                 int(_s(h.get(b"legs", b"0"))), float(_s(h.get(b"load", b"0"))))
        return out

    # -- members -----------------------------------------------------------------------
    async def add_member(self, key: RoomKey, call_id: str, node: str) -> None:
        await self.redis.hset(self._members(key), call_id, node)

    def _status(self, key: RoomKey) -> str:
        return f"{self.p}:status:{encode_room(key)}"

    async def join(self, key: RoomKey, call_id: str, node: str, url: str | None,
                   app_id: str) -> RoomHook:
        """add_member, and the room's status_url shared (the first one given wins)."""
        got = await self._join(keys=[self._members(key), self._status(key)],
                               args=[call_id, node, url or "", app_id, EPOCH_TTL_MS,
                                     f"{self.p}:node:"])
        return RoomHook(_s(got[0]) if got[0] else None, _s(got[1]) if got[1] else None,
                        int(got[2]) == 1, int(got[3]))

    async def leave(self, key: RoomKey, call_id: str, node: str) -> RoomHook:
        """remove_member; `first`: this was the room's last member on any node."""
        got = await self._leave(keys=[self._members(key), self._status(key)],
                                args=[call_id, node])
        return RoomHook(_s(got[1]) if got[1] else None, _s(got[2]) if got[2] else None,
                        int(got[0]) == 1, int(got[3]))

    async def remove_member(self, key: RoomKey, call_id: str) -> None:
        await self.redis.hdel(self._members(key), call_id)

    async def members(self, key: RoomKey) -> dict[str, str]:
        got = await self.redis.hgetall(self._members(key))
        return {_s(k): _s(v) for k, v in got.items()}

    # -- live call records (gateway.cluster.lost) --------------------------------------
    def _calls(self, node: str) -> str:
        return f"{self.p}:calls:{node}"

    async def publish_calls(self, node: str, put: dict[str, str], gone: list[str],
                            now: float, *, replace: bool = False) -> None:
        """One round trip: our records' changes (all of them, with `replace`), our seen
        time, and the TTLs that let an abandoned node's records go after a week."""
        pipe = self.redis.pipeline(transaction=True)
        calls = self._calls(node)
        if replace:
            pipe.delete(calls)
        if gone and not replace:
            pipe.hdel(calls, *gone)
        if put:
            pipe.hset(calls, mapping=put)  # type: ignore[arg-type]
        pipe.set(f"{self.p}:seen:{node}", f"{now:.3f}", px=CALLS_TTL_MS)
        pipe.pexpire(calls, CALLS_TTL_MS)
        pipe.sadd(f"{self.p}:callnodes", node)
        await pipe.execute()

    async def call_nodes(self) -> dict[str, bool]:
        """Nodes with call records -> whether their liveness record is there."""
        ids = sorted(_s(n) for n in await self.redis.smembers(
            f"{self.p}:callnodes"))
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for node in ids:
            pipe.exists(f"{self.p}:node:{node}")
        return {n: bool(e) for n, e in zip(ids, await pipe.execute(), strict=True)}

    async def take_calls(self, me: str, node: str, batch: int, *, own: bool = False) -> Take:
        got = await self._take(
            keys=[f"{self.p}:node:{node}", self._calls(node), f"{self.p}:seen:{node}",
                  f"{self.p}:callnodes", f"{self.p}:reconciler:{node}"],
            args=[me, node, batch, f"{self.p}:done:", CALLS_TTL_MS, LOCK_TTL_MS,
                  "1" if own else "0"])
        state = _s(got[0])
        if state != "ok":
            return Take(state, seen=_s(got[1]) if len(got) > 1 else None)
        rest = got[3:]
        return Take(state, got[1], int(got[2]),
                    tuple((rest[i], rest[i + 1]) for i in range(0, len(rest) - 1, 2)))

    async def mark_done(self, me: str, call_ids: list[str]) -> dict[str, str | None]:
        """SET NX of each call's done marker; the marker's value afterwards, per call."""
        out: dict[str, str | None] = {}
        for i in range(0, len(call_ids), 500):
            chunk = call_ids[i:i + 500]
            got = await self._mark(keys=[], args=[me, f"{self.p}:done:", CALLS_TTL_MS, *chunk])
            out.update({c: None if v is None else _s(v) for c, v in zip(chunk, got, strict=True)})
        return out

    async def done_marks(self, call_ids: list[str]) -> dict[str, str | None]:
        """Who sent each call's call.completed (None: nobody yet), without claiming any."""
        out: dict[str, str | None] = {}
        for i in range(0, len(call_ids), 500):
            chunk = call_ids[i:i + 500]
            got = await self.redis.mget([f"{self.p}:done:{c}" for c in chunk])
            out.update({c: None if v is None else _s(v) for c, v in zip(chunk, got, strict=True)})
        return out
