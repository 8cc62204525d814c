"""`limits.max_calls_per_customer` across a cluster: a customer's live calls on every live
node count, and cascade legs (internal, one per room and node) never do.

Each node publishes its own per-customer live call counts in Redis, one hash per node:

    mv:quota:{node}   hash   customer id -> live calls there   TTL node_ttl_s, every tick

and keeps a copy of the other live nodes' counts, read every tick. A call is admitted when
(our live calls of the customer) + (the customer's calls on the other live nodes, as of our
last read) < the limit: our own count is exact, the others' are at most one tick old (plus
the round trip of their write, which is made at once when a call starts or ends). A node
whose liveness record (`mv:node:{node}`) has expired stops counting at our next read; its
hash expires with the same TTL. While Redis is unreachable a node counts its own calls only
(logged once), as a single node would.

Nothing here is on a call's path: admission reads memory (`elsewhere`); a task writes and
reads Redis. The rules (which values count, what is stored) are the pure functions at the
top; `CustomerQuota` is the I/O around them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.cluster.redis_store import ClusterStore
from gateway.waits import wait_event

if TYPE_CHECKING:
    from gateway.call.session import CallSession
    from gateway.call.table import CallTable
    from gateway.config import Application

log = logging.getLogger("minivoice.cluster")

MAX_NODES = 256  # other nodes read per refresh (mv:nodes is sampled beyond it)
MAX_CUSTOMERS = 10_000  # fields we write; a config has far fewer customers
MAX_CUSTOMER_ID = 64  # as applications' customer_id
MAX_COUNT = 1_000_000  # a node's calls of one customer: more is not a count we wrote
CHUNK = 256  # customers asked for per HMGET (Lua's unpack has a limit)
MAX_VALUE = 24  # characters of a value sent back by the script (longer: cut, then refused)
MIN_GAP_S = 0.05  # between two writes of our counts (calls starting and ending in a burst)
_COUNT = re.compile(r"0|[1-9][0-9]{0,6}")


# -- the rules (pure) ------------------------------------------------------------------------
def admits(cap: int | None, mine: int, elsewhere: int) -> bool:
    """Whether one more call of a customer is admitted: with no limit always; else while
    its live calls here plus those on the other live nodes are below the limit."""
    return cap is None or mine + elsewhere < cap


def counted(app_id: str, internal_app: str) -> bool:
    """Cascade legs (the internal application) are the cluster's, not the customer's."""
    return app_id != internal_app


def local_counts(calls: Iterable[tuple[str, str]], internal_app: str) -> Counter[str]:
    """(application id, customer id) of each live call -> the live calls per customer."""
    return Counter(cust for app_id, cust in calls if counted(app_id, internal_app))


def to_publish(counts: Mapping[str, int]) -> dict[str, str]:
    """Our counts as stored: customers with live calls only, ids as configured (1-64
    characters), at most MAX_CUSTOMERS of them (the largest, if ever more)."""
    good = [(c, n) for c, n in counts.items()
            if 1 <= len(c) <= MAX_CUSTOMER_ID and 0 < n <= MAX_COUNT]
    good.sort(key=lambda cn: (-cn[1], cn[0]))
    return {c: str(n) for c, n in good[:MAX_CUSTOMERS]}


def parse_count(raw: Any) -> int | None:
    """A value read back: missing = 0; a count we could have written = itself; anything
    else None (garbage: it counts as nothing, and is logged)."""
    if raw is None or raw in (b"", ""):
        return 0
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(raw, str) or not _COUNT.fullmatch(raw):
        return None
    n = int(raw)
    return n if n <= MAX_COUNT else None


@dataclass(frozen=True)
class Read:
    """Other live nodes' counts, summed per customer, and what was refused on the way."""

    elsewhere: dict[str, int]
    bad: tuple[tuple[str, str], ...]  # (node, why)


def combine(me: str, customers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Read:
    """The script's rows (node, then one value per customer, in order; or node, "!", why)
    -> the customers' live calls on the other nodes. Our own row (a record of an earlier
    process of ours) never counts: our own calls are counted live."""
    total: Counter[str] = Counter()
    bad: list[tuple[str, str]] = []
    for row in rows:
        if not isinstance(row, (list, tuple)) or not row:
            bad.append(("?", "not a row"))
            continue
        node = _text(row[0])
        if node == me:
            continue
        if len(row) == 3 and _text(row[1]) == "!":
            bad.append((node, _text(row[2])))
            continue
        if len(row) != len(customers) + 1:
            bad.append((node, "wrong length"))
            continue
        wrong = 0
        for cust, raw in zip(customers, row[1:], strict=True):
            n = parse_count(raw)
            if n is None:
                wrong += 1
            elif n:
                total[cust] += n
        if wrong:
            bad.append((node, f"{wrong} values that are not counts"))
    return Read(dict(total), tuple(bad))


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v[:MAX_VALUE * 4].decode("utf-8", "replace")
    return str(v)[:MAX_VALUE * 4]


# -- Redis -----------------------------------------------------------------------------------
# KEYS: the nodes set. ARGV: key prefix ("mv:"), max nodes, max value length, customers...
# For each node in the set (at most max nodes of them) whose liveness record is there:
# {node, value per customer ('' when none)}, or {node, '!', why} for a hash that is not one.
# Values are cut to max value length here, so that garbage costs us little to read.
_READ = """
local out = {}
local ids = redis.call('SRANDMEMBER', KEYS[1], tonumber(ARGV[2]))
local cut = tonumber(ARGV[3])
for _, n in ipairs(ids) do
  if string.len(n) <= 64 and redis.call('EXISTS', ARGV[1] .. 'node:' .. n) == 1 then
    local k = ARGV[1] .. 'quota:' .. n
    local t = redis.call('TYPE', k)['ok']
    if t == 'hash' then
      local row = {n}
      local i = 4
      while i <= #ARGV do
        local j = math.min(#ARGV, i + CHUNK - 1)
        local vals = redis.call('HMGET', k, unpack(ARGV, i, j))
        for _, v in ipairs(vals) do
          if v then row[#row + 1] = string.sub(v, 1, cut) else row[#row + 1] = '' end
        end
        i = j + 1
      end
      out[#out + 1] = row
    elseif t ~= 'none' then
      out[#out + 1] = {n, '!', 'a ' .. t .. ', not a hash'}
    end
  end
end
return out
""".replace("CHUNK", str(CHUNK))


class CustomerQuota:
    """Our counts to Redis and the other nodes' from it: a task, off every call's path."""

    def __init__(self, me: str, store: ClusterStore, tick_s: float, ttl_s: float,
                 internal_app: str) -> None:
        self.me = me
        self.store = store
        self.tick_s = tick_s
        self.ttl_ms = int(ttl_s * 1000)
        self.internal_app = internal_app
        self.customers: list[str] = []
        self.others: dict[str, int] = {}  # customer -> live calls on the other live nodes
        self.calls: CallTable | None = None
        self.shared = True  # False: Redis unreachable, our own calls only (logged once)
        self._bad: set[str] = set()  # nodes whose garbage we logged (once each)
        self._wake = asyncio.Event()
        self._read = store.redis.register_script(_READ)

    def attach(self, calls: CallTable, applications: Iterable[Application]) -> None:
        """Count for the customers of our applications (the same on every node)."""
        self.customers = sorted({a.customer_id for a in applications})
        self.calls = calls
        calls.quota = self

    # -- what the call table asks (memory only) ------------------------------------------
    def counts(self, session: CallSession) -> bool:
        return counted(session.app.id, self.internal_app)

    def elsewhere(self, customer_id: str) -> int:
        return self.others.get(customer_id, 0)

    def changed(self) -> None:
        self._wake.set()

    # -- the task ----------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick, last = 0.0, -1e9
        while True:
            now = loop.time()
            tick = now >= next_tick
            if tick:
                next_tick = now + self.tick_s
            elif now - last < MIN_GAP_S:  # a burst of calls: one write per MIN_GAP_S
                await asyncio.sleep(MIN_GAP_S - (now - last))
            self._wake.clear()
            last = loop.time()
            try:
                await self.publish()
                if tick or not self.shared:
                    await self.refresh()
                if not self.shared:
                    log.info("cluster.quota_shared", extra={"node": self.me})
                    self.shared = True
            except Exception as exc:  # Redis down: our own calls only, until it is back
                self.others = {}
                if self.shared:
                    log.warning("cluster.quota_local_only", extra={"node": self.me,
                                                                   "error": str(exc)})
                    self.shared = False
            # not wait_for: on 3.11 it can swallow our cancellation at exit (gateway.waits)
            await wait_event(self._wake, max(0.05, next_tick - loop.time()))

    def _mine(self) -> Counter[str]:
        return local_counts(((s.app.id, s.customer_id) for s in self.calls or ()),
                            self.internal_app)

    async def publish(self) -> None:
        """Our counts, replacing the last ones, with the liveness record's TTL."""
        key = f"{self.store.p}:quota:{self.me}"
        fields = to_publish(self._mine())
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.delete(key)
        if fields:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.pexpire(key, self.ttl_ms)
        await pipe.execute()

    async def refresh(self) -> None:
        if not self.customers:
            return
        rows = await self._read(keys=[f"{self.store.p}:nodes"],
                                args=[f"{self.store.p}:", MAX_NODES, MAX_VALUE,
                                      *self.customers])
        got = combine(self.me, self.customers, rows)
        self.others = got.elsewhere
        bad = {node for node, _ in got.bad}
        for node, why in got.bad:
            if node not in self._bad:
                log.warning("cluster.quota_bad_counts", extra={"node": self.me,
                                                               "from_node": node,
                                                               "reason": why})
        self._bad = bad

    async def close(self) -> None:
        """Leaving: our calls stop counting now, not when the hash expires."""
        await self.store.redis.delete(f"{self.store.p}:quota:{self.me}")
