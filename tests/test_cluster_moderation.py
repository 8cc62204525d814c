"""`start_on_enter` / `end_on_exit` across nodes: the pure rule (gateway.cluster.moderation),
checked on real room parts (media.rooms), and its Redis side against a real redis-server
(gateway.cluster.moderation_store): publishing, expiry, hostile content, Redis down, the
end mark."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import Any

import pytest

from gateway.cluster.moderation import (
    MAX_STARTERS,
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
from gateway.cluster.moderation_store import Moderation, rewrite_ms
from gateway.cluster.redis_store import ClusterStore
from gateway.conferences import Conferences
from media.rooms import Member, RoomBook, RoomKey
from sip.commands import ApplyLinks
from tests.redisproc import RedisProc

KEY = RoomKey("cust_1", "room-1")
TICK_S = 0.1  # the syncs' tick: a fraction of every entry life below (rewrites at half)


# -- the rule -------------------------------------------------------------------------------
def test_a_leg_counts_only_while_its_far_side_has_a_starter() -> None:
    # on the owner: the leg from n counts while n has one
    assert leg_starts("own", "n", {"n"}) is True
    assert leg_starts("own", "n", {"own", "m"}) is False
    assert leg_starts("own", "n", set()) is False
    # on n: its leg to the owner counts while any other node has one
    assert leg_starts("n", None, {"own"}) is True
    assert leg_starts("n", None, {"m"}) is True
    assert leg_starts("n", None, {"n"}) is False
    assert leg_starts("n", None, set()) is False


def test_after_a_redis_restart_known_starters_are_kept_for_a_while() -> None:
    before = View(1000, frozenset({"n"}), None)
    empty = View(2000, frozenset(), 1500)
    assert after_read(before, empty, hold_off=True) == View(2000, frozenset({"n"}), 1500)
    assert after_read(before, empty, hold_off=False) == empty
    assert after_read(None, empty, hold_off=True) == empty


def test_has_local_starter_ignores_cascade_legs() -> None:
    leg = Member("leg", False, False, 0.0, start_on_enter=True, always_source=True)
    waiting = Member("w", False, False, 0.0, start_on_enter=False)
    held_moderator = Member("m", False, False, 0.0, start_on_enter=True, held=True)
    assert not has_local_starter([leg, waiting])
    assert has_local_starter([leg, waiting, held_moderator])  # held still counts, as on one node
    assert not has_local_starter([])


def _parts(owner: str, others: list[str], starters: dict[str, bool]) -> dict[str, Any]:
    """Room parts as the cluster builds them: the owner's with one leg per other node, each
    other node's with its leg to the owner; each node has one local caller whose
    start_on_enter is `starters[node]`; the legs' start_on_enter from the rule."""
    published = {n for n, s in starters.items() if s}
    books = {}
    for node in [owner, *others]:
        book = RoomBook()
        book.join(KEY, f"caller-{node}", muted=False, end_on_exit=False, now=0,
                  start_on_enter=starters[node])
        legs: dict[str, str | None] = (
            {f"leg-{n}": n for n in others} if node == owner else {"leg-owner": None})
        for cid, far in legs.items():
            book.join(KEY, cid, muted=False, end_on_exit=False, now=0, always_source=True,
                      start_on_enter=leg_starts(node, far, published))
        books[node] = book
    return books


def test_every_part_runs_exactly_while_some_node_has_a_starter() -> None:
    others = ["b", "c", "d"]
    for flags in itertools.product([False, True], repeat=4):
        starters = dict(zip(["a", *others], flags, strict=True))
        books = _parts("a", others, starters)
        for node, book in books.items():
            room = book.rooms[KEY]
            assert room.started == any(flags), (node, starters)
            # waiting: the callers hear nobody, and nobody hears the leg
            if not any(flags):
                assert room.mixed() == [] and not any(
                    link.src.startswith(("leg", "caller")) and link.dst.startswith(
                        ("leg", "caller")) for link in room.links()), (node, starters)


def test_leg_changes_names_only_legs_that_change_and_are_in_the_part() -> None:
    legs: dict[str, str | None] = {"l1": "n1", "l2": "n2", "up": None, "gone": "n3"}
    current = {"l1": False, "l2": True, "up": False}
    assert leg_changes("own", legs, current, {"n1"}) == {"l1": True, "l2": False, "up": True}
    assert leg_changes("own", legs, {"l1": True, "l2": False, "up": True}, {"n1"}) == {}
    assert leg_changes("own", legs, current, set()) == {"l2": False}


def test_flipping_a_legs_start_on_enter_starts_and_stops_a_waiting_part() -> None:
    book = RoomBook()
    book.join(KEY, "w1", muted=False, end_on_exit=False, now=0, start_on_enter=False,
              wait="/m.wav")
    book.join(KEY, "leg", muted=False, end_on_exit=False, now=0, start_on_enter=False,
              always_source=True)
    room = book.rooms[KEY]
    assert not room.started and room.players()  # w1 hears its music
    change = book.set_start_on_enter("leg", True)
    assert room.started and ("leg", "w1") in {(c.src, c.dst) for c in change.connect}
    assert change.stop  # the music stops
    change = book.set_start_on_enter("leg", False)
    assert not room.started and change.start and change.disconnect


def test_parse_view_takes_what_is_valid_and_cuts_the_rest() -> None:
    assert parse_view([1000, False, b"a", b"b"]) == View(1000, frozenset({"a", "b"}), None)
    assert parse_view([b"1000", b"900"]) == View(1000, frozenset(), 900)
    # node ids that are not ids (too long, odd characters) are dropped
    got = parse_view([5, None, b"x" * 65, b"a:b", b"../x", b"", b"ok-1"])
    assert got.starters == {"ok-1"}
    many = parse_view([5, None, *(f"n{i}".encode() for i in range(MAX_STARTERS * 3))])
    assert len(many.starters) == MAX_STARTERS
    for bad in (None, [], [1], ["soon", False], [1, "later"], [-1, False], [10**19, False],
                "1000", {"now": 1}):
        with pytest.raises(BadView):
            parse_view(bad)


def test_a_part_ends_only_if_created_before_the_end_mark() -> None:
    view = View(now_ms=50_000, starters=frozenset(), ended_at_ms=45_000)
    # created 10 s before the read (Redis clock 40,000): ended
    assert part_ends(view, part_created_ms(100.0, 110.0, view))
    # created 2 s before the read (48,000): a new room of the same name, not ended
    assert not part_ends(view, part_created_ms(108.0, 110.0, view))
    assert not part_ends(View(50_000, frozenset()), 0)
    # our clock being far off Redis's does not matter: only the difference is used
    assert part_created_ms(1e9, 1e9 + 10.0, view) == 40_000


# -- when our entry is rewritten (the script's `rewrite ms`) ---------------------------------
def test_entry_is_rewritten_once_half_its_life_is_gone() -> None:
    assert rewrite_ms(10_000, 1_000) == 5_000  # the defaults: node_ttl_s 10, tick_s 1
    assert rewrite_ms(4_000, 500) == 2_000  # the tests' cluster timing
    assert rewrite_ms(1_001, 100) == 501  # an odd life: never more than half goes unwritten


def test_entry_is_rewritten_no_later_than_3_ticks_before_its_end() -> None:
    assert rewrite_ms(4_000, 1_000) == 3_000  # half (2 s) would leave 2 ticks: 3 instead
    assert rewrite_ms(5_000, 1_000) == 3_000
    assert rewrite_ms(6_000, 1_000) == 3_000  # half and 3 ticks agree
    assert rewrite_ms(2_000, 600) == 1_800


def test_entry_life_of_3_ticks_or_less_is_rewritten_at_every_sync() -> None:
    # refused by the config (cluster.node_ttl_s >= 3 x tick_s); still never past the life
    assert rewrite_ms(3_000, 1_000) == 3_000
    assert rewrite_ms(2_000, 1_000) == 2_000
    assert rewrite_ms(1_000, 10_000) == 1_000
    # garbage in: never negative
    assert rewrite_ms(0, 1_000) == 0
    assert rewrite_ms(-5, -5) == 0
    assert rewrite_ms(1_000, -5) == 500
    for life, tick in itertools.product(range(0, 20_000, 701), range(0, 8_000, 333)):
        got = rewrite_ms(life, tick)
        assert 0 <= got <= life
        assert got >= life - life // 2  # at most half of it unwritten
        assert got >= min(life, 3 * tick)  # 3 ticks' margin whenever the life allows it


# -- against Redis ----------------------------------------------------------------------------
class Node:
    """One node's Conferences (no SIP: the link changes are collected) and Moderation."""

    def __init__(self, name: str, store: ClusterStore, ttl_s: float = 5.0) -> None:
        self.sent: list[ApplyLinks] = []
        self.conf = Conferences(self.sent.append)
        self.errors: list[Exception] = []
        self.mod = Moderation(name, store.redis, store.p, self.conf, ttl_s, TICK_S,
                              self.errors.append)

    def join(self, cid: str, *, starter: bool, leg: bool = False,
             created_at: float | None = None) -> None:
        self.conf.book.join(KEY, cid, muted=False, end_on_exit=False,
                            now=created_at if created_at is not None else time.time(),
                            start_on_enter=starter, always_source=leg)

    def room(self) -> Any:
        return self.conf.book.rooms.get(KEY)


async def test_nodes_see_each_others_starters_and_set_their_legs(store: ClusterStore) -> None:
    owner, n = Node("own", store), Node("n", store)
    owner.join("w-own", starter=False)
    owner.join("leg-n", starter=False, leg=True)
    n.join("w-n", starter=False)
    n.join("leg-up", starter=False, leg=True)
    await owner.mod.sync(KEY, {"leg-n": "n"})
    await n.mod.sync(KEY, {"leg-up": None})
    assert not owner.room().started and not n.room().started
    n.join("moderator", starter=True)
    await n.mod.sync(KEY, {"leg-up": None})  # n publishes it ...
    await owner.mod.sync(KEY, {"leg-n": "n"})  # ... the owner's leg from n now counts
    assert owner.mod.starters(KEY) == {"n"}
    assert owner.room().members["leg-n"].start_on_enter and owner.room().started
    assert not n.room().members["leg-up"].start_on_enter  # nobody else has one
    # the moderator leaves: the owner's part waits again
    n.conf.book.leave("moderator")
    await n.mod.sync(KEY, {"leg-up": None})
    await owner.mod.sync(KEY, {"leg-n": "n"})
    assert not owner.room().started and owner.mod.starters(KEY) == frozenset()
    # a new leg joins with what the last view says
    assert not owner.mod.leg_options(KEY, _cascade(), "n").start_on_enter
    assert owner.errors == [] and n.errors == []


def _cascade() -> Any:
    from gateway.cluster.node import CASCADE
    return CASCADE


async def test_a_dead_nodes_entry_expires(store: ClusterStore) -> None:
    owner, dead = Node("own", store), Node("dead", store, ttl_s=1.0)
    owner.join("leg-dead", starter=False, leg=True)
    owner.join("w", starter=False)
    dead.join("moderator", starter=True)
    await dead.mod.sync(KEY, {})
    assert 0 < await store.redis.pttl("mv:starters:cust_1/room-1") <= 3_600_000
    await owner.mod.sync(KEY, {"leg-dead": "dead"})
    assert owner.room().started
    await asyncio.sleep(1.3)  # "dead" never refreshes its entry
    await owner.mod.sync(KEY, {"leg-dead": "dead"})
    assert not owner.room().started
    assert not await store.redis.exists("mv:starters:cust_1/room-1")  # emptied: gone


async def test_hostile_content_in_the_starters_hash(store: ClusterStore) -> None:
    key = "mv:starters:cust_1/room-1"
    far = int(time.time() * 1000) + 3_600_000
    await store.redis.hset(key, mapping={
        "garbage": "not-a-time", "x" * 200: far, "a:b": far,
        **{f"n{i}": far for i in range(2000)}})
    node = Node("own", store)
    node.join("w", starter=False)
    await node.mod.sync(KEY, {})
    # at most MAX_STARTERS taken (the bad ids among them dropped)
    assert MAX_STARTERS - 3 <= len(node.mod.starters(KEY)) <= MAX_STARTERS
    assert "garbage" not in node.mod.starters(KEY)
    assert not await store.redis.hexists(key, "garbage")
    await store.redis.set("mv:ended:cust_1/room-1", "soon")
    await node.mod.sync(KEY, {})  # a bad reply: logged, the last view kept, nothing ended
    assert node.room() is not None and len(node.mod.starters(KEY)) >= MAX_STARTERS - 3


async def test_redis_down_keeps_the_last_view(store: ClusterStore,
                                              redis_server: RedisProc) -> None:
    owner, n = Node("own", store), Node("n", store)
    owner.join("leg-n", starter=False, leg=True)
    owner.join("w", starter=False)
    n.join("moderator", starter=True)
    await n.mod.sync(KEY, {})
    await owner.mod.sync(KEY, {"leg-n": "n"})
    assert owner.room().started
    redis_server.stop()
    await owner.mod.sync(KEY, {"leg-n": "n"})
    assert owner.errors and owner.room().started  # kept, no exception
    assert owner.mod.starters(KEY) == {"n"}


async def test_end_on_exit_elsewhere_ends_older_parts_only(store: ClusterStore) -> None:
    a, b = Node("a", store), Node("b", store)
    b.join("y", starter=True, created_at=time.time() - 5.0)
    await b.mod.sync(KEY, {})
    await a.mod.mark_ended(KEY)
    await b.mod.sync(KEY, {})
    assert b.room() is None  # ended: it was there before the mark
    await asyncio.sleep(0.05)
    b.join("z", starter=True)  # a new room of the same name, after the mark
    await b.mod.sync(KEY, {})
    assert b.room() is not None and set(b.room().members) == {"z"}
    assert 0 < await store.redis.pttl("mv:ended:cust_1/room-1") <= 60_000


def test_random_rooms_agree_with_one_node() -> None:
    """Any spread of callers over nodes: every part is started exactly when the same callers
    in one room on one node would be."""
    rnd = random.Random(15)
    for _ in range(300):
        nodes = ["own", *[f"n{i}" for i in range(rnd.randint(1, 4))]]
        flags = {n: rnd.random() < 0.3 for n in nodes}
        one = RoomBook()
        for n, f in flags.items():
            one.join(KEY, n, muted=False, end_on_exit=False, now=0, start_on_enter=f)
        for node, book in _parts("own", nodes[1:], flags).items():
            assert book.rooms[KEY].started == one.rooms[KEY].started, (node, flags)


async def test_a_redis_restart_does_not_stop_a_part(store: ClusterStore) -> None:
    owner, n = Node("own", store), Node("n", store)
    owner.join("leg-n", starter=False, leg=True)
    owner.join("w", starter=False)
    n.join("moderator", starter=True)
    await n.mod.sync(KEY, {})
    await owner.mod.sync(KEY, {"leg-n": "n"})
    await store.redis.flushall()  # as a restart without persistence does
    await owner.mod.sync(KEY, {"leg-n": "n"}, hold_off=True)  # n has not re-published yet
    assert owner.room().started
    await n.mod.sync(KEY, {})  # its next tick
    await owner.mod.sync(KEY, {"leg-n": "n"})
    assert owner.room().started and owner.mod.starters(KEY) == {"n"}
    await store.redis.flushall()
    await owner.mod.sync(KEY, {"leg-n": "n"})  # past the hold-off, n gone: the part waits
    assert not owner.room().started
