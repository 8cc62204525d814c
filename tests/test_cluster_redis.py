"""The cluster's Redis adapter against a real redis-server (a free loopback port, started by
the test): atomic claims, fencing by epoch, leases, node liveness, members."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cluster.ownership import Claim, Local, Renew, StepDown, plan
from gateway.cluster.redis_store import ClusterStore
from media.rooms import RoomKey
from tests.redisproc import RedisProc
from tests.waiting import eventually

KEY = RoomKey("cust_1", "room-1")


async def test_one_claim_wins_a_race(store: ClusterStore, redis_server: RedisProc) -> None:
    others = [ClusterStore(redis_server.url) for _ in range(7)]
    try:
        got = await asyncio.gather(*(
            s.claim(KEY, f"n{i}", f"127.0.0.1:{5000 + i}", 5.0)
            for i, s in enumerate([store, *others])))
    finally:
        for s in others:
            await s.close()
    assert len(set(got)) == 1, got  # everyone sees the same winner
    assert got[0].epoch == 1
    assert await store.get_claim(KEY) == got[0]


async def test_takeover_after_the_lease_lapses_gets_a_higher_epoch(store: ClusterStore) -> None:
    first = await store.claim(KEY, "a", "a:1", 1.0)
    assert first == Claim("a", 1, "a:1")
    # While a's lease runs, b's claim returns a's.
    assert await store.claim(KEY, "b", "b:1", 1.0) == first
    await eventually(lambda: store.get_claim(KEY), timeout=5)  # still there
    await eventually(lambda: _gone(store), timeout=5)
    second = await store.claim(KEY, "b", "b:1", 5.0)
    assert second == Claim("b", 2, "b:1")


async def _gone(store: ClusterStore) -> bool:
    return await store.get_claim(KEY) is None


async def test_stale_owner_cannot_renew_or_release(store: ClusterStore) -> None:
    """a owned the room at epoch 1; its lease lapsed (it was cut off) and b claimed epoch 2.
    a's renewals and releases at epoch 1 do nothing, and its plan steps it down."""
    await store.claim(KEY, "a", "a:1", 0.3)
    await eventually(lambda: _gone(store), timeout=5)
    b = await store.claim(KEY, "b", "b:1", 30.0)
    assert b.epoch == 2
    assert not await store.renew(KEY, "a", "a:1", 30.0, epoch=1)
    assert not await store.release(KEY, "a", 1)
    assert await store.get_claim(KEY) == b
    # Even a claimant with the right node name but an old epoch cannot take it back.
    assert not await store.renew(KEY, "b", "b:1", 30.0, epoch=1)
    steps = plan("a", Local(callers=1, inbound_legs=1, owned_epoch=1),
                 await store.get_claim(KEY))
    assert steps[0] == StepDown(1)
    assert await store.renew(KEY, "b", "b:1", 30.0, epoch=2)
    assert await store.release(KEY, "b", 2)
    assert await store.get_claim(KEY) is None


async def test_epochs_never_go_back(store: ClusterStore) -> None:
    c1 = await store.claim(KEY, "a", "a:1", 30.0)
    assert await store.release(KEY, "a", c1.epoch)
    c2 = await store.claim(KEY, "b", "b:1", 30.0)
    assert c2.epoch == c1.epoch + 1
    assert await store.release(KEY, "b", c2.epoch)
    # A node that has seen epoch 41 (Redis lost its counter) claims above it.
    c3 = await store.claim(KEY, "a", "a:1", 30.0, min_epoch=41)
    assert c3.epoch == 42


async def test_redis_restart_the_owner_puts_its_claim_back(
    store: ClusterStore, redis_server: RedisProc
) -> None:
    c = await store.claim(KEY, "a", "a:1", 30.0, min_epoch=6)
    assert c.epoch == 7
    redis_server.stop()
    with pytest.raises(Exception):  # noqa: B017 - whichever connection error redis raises
        await store.get_claim(KEY)
    redis_server.start()
    await eventually(lambda: _answers(store), timeout=10)
    assert await store.get_claim(KEY) is None  # nothing survived
    # The owner's next plan renews at its epoch: same owner, same epoch, nobody re-bridges.
    assert plan("a", Local(callers=1, owned_epoch=7), None) == (Renew(7),)
    assert await store.renew(KEY, "a", "a:1", 30.0, epoch=7)
    assert await store.get_claim(KEY) == Claim("a", 7, "a:1")
    # and the epoch counter is back at 7: the next claim after a release is 8
    assert await store.release(KEY, "a", 7)
    assert (await store.claim(KEY, "b", "b:1", 30.0)).epoch == 8


async def test_renew_does_not_resurrect_over_a_newer_epoch(store: ClusterStore) -> None:
    await store.claim(KEY, "a", "a:1", 30.0)  # 1
    await store.release(KEY, "a", 1)
    await store.claim(KEY, "b", "b:1", 30.0)  # 2
    await store.release(KEY, "b", 2)
    # no claim now, but epoch 2 was given out: a at epoch 1 may not come back
    assert not await store.renew(KEY, "a", "a:1", 30.0, epoch=1)
    assert await store.get_claim(KEY) is None


async def _answers(store: ClusterStore) -> bool:
    try:
        await store.redis.ping()
    except Exception:
        return False
    return True


async def test_nodes_expire(store: ClusterStore) -> None:
    assert not await store.heartbeat("a", 0.5, "127.0.0.1:1", "http://127.0.0.1:2", 3, 0.5)
    assert await store.heartbeat("a", 0.5, "127.0.0.1:1", "http://127.0.0.1:2", 4, 0.5)
    await store.heartbeat("b", 30, "127.0.0.1:3", "http://127.0.0.1:4", 0, 0.0)
    nodes = await store.nodes()
    assert set(nodes) == {"a", "b"} and nodes["a"].legs == 4
    await eventually(lambda: _only_b(store), timeout=5)


async def _only_b(store: ClusterStore) -> bool:
    return set(await store.nodes()) == {"b"}


async def test_members_and_hostile_names(store: ClusterStore) -> None:
    # A customer id with the key separator in it does not alias another customer's room.
    evil = RoomKey("cust_1/room-1", "x")
    await store.add_member(KEY, "call_1", "a")
    await store.add_member(evil, "call_2", "b")
    assert await store.members(KEY) == {"call_1": "a"}
    assert await store.members(evil) == {"call_2": "b"}
    await store.claim(evil, "b", "b:1", 30.0)
    await store.claim(KEY, "a", "a:1", 30.0)
    assert await store.rooms_named("x") == [evil]
    assert await store.rooms_named("room-1") == [KEY]
    await store.remove_member(KEY, "call_1")
    assert await store.members(KEY) == {}


async def test_a_rooms_status_url_is_shared_and_ends_with_its_last_member(
    store: ClusterStore,
) -> None:
    """The first status_url given on any node is the room's; the last member's leave (on
    any node) takes it, once; a room whose members were all on nodes that died is a new
    room for the next caller (their status_url is not inherited)."""
    await store.heartbeat("a", 30, "a:1", "http://a", 0, 0.0)
    await store.heartbeat("b", 30, "b:1", "http://b", 0, 0.0)
    got = await store.join(KEY, "call_1", "a", "http://hook/1", "app_1")
    assert (got.url, got.app_id, got.first, got.others) == ("http://hook/1", "app_1", True, 0)
    got = await store.join(KEY, "call_2", "b", "http://hook/2", "app_2")  # not the first
    assert (got.url, got.app_id, got.first, got.others) == ("http://hook/1", "app_1", False, 1)
    got = await store.join(KEY, "call_3", "b", None, "")
    assert (got.url, got.first, got.others) == ("http://hook/1", False, 1)
    assert (await store.leave(KEY, "call_2", "b")).first is False
    left = await store.leave(KEY, "call_1", "a")
    assert (left.first, left.others) == (False, 1)
    last = await store.leave(KEY, "call_3", "b")
    assert (last.first, last.url, last.app_id) == (True, "http://hook/1", "app_1")
    assert (await store.leave(KEY, "call_3", "b")).first is False  # once
    # A room without a status_url: no room-wide events, whoever leaves last.
    got = await store.join(KEY, "call_4", "a", None, "")
    assert (got.url, got.first) == (None, False)
    assert (await store.leave(KEY, "call_4", "a")).first is False
    # Members (and a status_url) left by a node that died: not inherited by a new room.
    await store.join(KEY, "call_5", "dead", "http://hook/old", "app_1")
    got = await store.join(KEY, "call_6", "a", "http://hook/new", "app_1")
    assert (got.url, got.first, got.others) == ("http://hook/new", True, 0)
    assert await store.members(KEY) == {"call_6": "a"}
    # Crafted call ids and urls are stored as given, under the room's own keys only.
    odd = "call_" + "\u00e9" * 64 + "'; redis.call('FLUSHALL') --"
    got = await store.join(KEY, odd, "a", "http://hook/" + "x" * 4000, "app_1")
    assert got.others == 0 and odd in await store.members(KEY)
    assert await store.get_claim(RoomKey("cust_1", "other")) is None
