"""limits.max_calls_per_customer across nodes, without a SIP stack: the pure rule
(gateway.cluster.quota), the call table's count (cascade legs never count), and the Redis
side against a real redis-server: two nodes' counts, a dead node's counts dropping out,
garbage in Redis ignored with a log line, and Redis unreachable (our own calls only)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, cast

import pytest

from bench.gateway import free_port
from gateway.call.table import CallTable
from gateway.cluster import quota
from gateway.cluster.node import INTERNAL_APP_ID, internal_app
from gateway.cluster.quota import CustomerQuota
from gateway.cluster.redis_store import ClusterStore
from gateway.config import Application
from gateway.store import Store
from media.rooms import RoomKey
from tests.fakes import APP, Fakes, incoming
from tests.waiting import eventually

CUSTOMERS = ["cust", "cust_b"]


# -- the rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("cap", "mine", "elsewhere", "ok"), [
    (None, 10**6, 10**6, True),  # no limit
    (2, 0, 0, True), (2, 1, 0, True), (2, 0, 1, True),
    (2, 2, 0, False), (2, 1, 1, False), (2, 0, 2, False),  # the other nodes' calls count
    (2, 0, 5, False), (1, 0, 0, True),
])
def test_admission_is_ours_plus_the_other_live_nodes_below_the_cap(
        cap: int | None, mine: int, elsewhere: int, ok: bool) -> None:
    assert quota.admits(cap, mine, elsewhere) is ok


def test_cascade_legs_are_not_a_customers_calls() -> None:
    calls = [("app1", "cust"), (INTERNAL_APP_ID, "cust"), ("app1", "cust"),
             ("app2", "cust_b"), (INTERNAL_APP_ID, "cust_b")]
    assert quota.local_counts(calls, INTERNAL_APP_ID) == {"cust": 2, "cust_b": 1}


def test_what_is_published_is_bounded() -> None:
    assert quota.to_publish({"a": 2, "b": 0, "": 3, "x" * 65: 1, "c": 10**7}) == {"a": "2"}
    many = {f"c{i}": 1 + i % 7 for i in range(quota.MAX_CUSTOMERS + 500)}
    out = quota.to_publish(many)
    assert len(out) == quota.MAX_CUSTOMERS
    assert min(int(v) for v in out.values()) >= 1 and "7" in out.values()  # the largest kept


@pytest.mark.parametrize(("raw", "n"), [
    (None, 0), (b"", 0), ("", 0), (b"0", 0), (b"7", 7), ("12", 12), (b"1000000", 10**6),
    (b"1000001", None), (b"-1", None), (b"01", None), (b" 1", None), (b"1.5", None),
    (b"1e3", None), (b"nan", None), (b"\xff\xfe", None), (b"9" * 24, None),
    (b"\xd9\xa3", None),  # an Arabic-Indic digit: int() would take it
    (3, None), ([b"1"], None),
])
def test_garbage_counts_count_as_nothing(raw: object, n: int | None) -> None:
    assert quota.parse_count(raw) == n


def test_combine_sums_the_other_nodes_and_reports_garbage() -> None:
    rows: list[Any] = [
        [b"a", b"2", b""],
        [b"b", b"1", b"3"],
        [b"me", b"50", b"50"],  # an earlier process of ours: our calls are counted live
        [b"c", b"junk", b"1"],  # one bad value: the rest of the row counts
        [b"d", b"!", b"a string, not a hash"],
        [b"e", b"1"],  # wrong length
        "not a row", [],
    ]
    got = quota.combine("me", CUSTOMERS, rows)
    assert got.elsewhere == {"cust": 3, "cust_b": 4}
    assert [n for n, _ in got.bad] == ["c", "d", "e", "?", "?"]


# -- the call table ----------------------------------------------------------------------------
class _Quota:
    def __init__(self, elsewhere: int) -> None:
        self.n = elsewhere
        self.changes = 0

    def counts(self, session: Any) -> bool:
        return bool(session.app.id != INTERNAL_APP_ID)

    def elsewhere(self, customer_id: str) -> int:
        return self.n if customer_id == "cust" else 0

    def changed(self) -> None:
        self.changes += 1


def test_the_call_table_counts_the_cluster_but_never_a_cascade_leg(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        table = CallTable(store)
        fakes = Fakes()
        caller = fakes.session(incoming("call_1"))
        leg = fakes.session(incoming("call_2"), internal_app(RoomKey("cust", "r1")))
        for s in (caller, leg):
            table.admit(s)
        assert table.count("cust") == 2  # a single node: no cascade legs there anyway
        table.quota = q = _Quota(elsewhere=3)
        assert table.count("cust") == 1 + 3 and table.count("cust_b") == 0
        table.finish(caller, 200, "", False, "normal")
        assert table.count("cust") == 3 and q.changes == 1  # told at once: published
        table.admit(fakes.session(incoming("call_3")))
        assert q.changes == 2
    finally:
        store.close()


# -- Redis -------------------------------------------------------------------------------------
class _Calls(list[Any]):
    """A call table's iteration: what the quota publishes."""

    quota: Any = None


def _session(app_id: str, customer: str) -> Any:
    return type("S", (), {"app": Application(id=app_id, customer_id=customer,
                                             answer_url="http://x/", secret="s"),
                          "customer_id": customer})()


def _node(store: ClusterStore, me: str, sessions: list[Any]) -> CustomerQuota:
    q = CustomerQuota(me, store, tick_s=0.2, ttl_s=4.0, internal_app=INTERNAL_APP_ID)
    q.attach(cast(Any, _Calls(sessions)), [APP, Application(
        id="app_b", customer_id="cust_b", answer_url="http://x/", secret="s")])
    return q


async def _alive(store: ClusterStore, *nodes: str) -> None:
    for n in nodes:
        await store.heartbeat(n, 10.0, "127.0.0.1:1", "http://127.0.0.1:1", 0, 0.0)


async def test_two_nodes_see_each_others_counts_and_a_dead_one_drops_out(
        store: ClusterStore) -> None:
    await _alive(store, "a", "b")
    a = _node(store, "a", [_session("app1", "cust"), _session("app1", "cust"),
                           _session(INTERNAL_APP_ID, "cust"), _session("app_b", "cust_b")])
    b = _node(store, "b", [_session("app1", "cust"), _session(INTERNAL_APP_ID, "cust")])
    for q in (a, b):
        await q.publish()
    assert await store.redis.hgetall("mv:quota:a") == {b"cust": b"2", b"cust_b": b"1"}
    assert 0 < await store.redis.pttl("mv:quota:a") <= 4000
    for q in (a, b):
        await q.refresh()
    assert a.others == {"cust": 1} and b.others == {"cust": 2, "cust_b": 1}
    assert b.elsewhere("cust") == 2 and b.elsewhere("nobody") == 0
    # b's liveness record expires (b died): its calls stop counting at a's next read,
    # though its counts are still there
    await store.redis.delete("mv:node:b")
    await a.refresh()
    assert a.others == {} and await store.redis.exists("mv:quota:b")
    # a call ends on a: published as it is (nothing left for a customer: no field)
    cast(_Calls, a.calls).pop()
    await a.publish()
    assert await store.redis.hgetall("mv:quota:a") == {b"cust": b"2"}
    await a.close()
    assert not await store.redis.exists("mv:quota:a")


async def test_garbage_in_redis_counts_as_nothing_and_is_logged(
        store: ClusterStore, caplog: pytest.LogCaptureFixture) -> None:
    await _alive(store, "me", "ok", "bad", "huge", "str", "big")
    me = _node(store, "me", [])
    await store.redis.hset("mv:quota:ok", mapping={"cust": "2", "other": "99"})
    await store.redis.hset("mv:quota:bad", mapping={"cust": "-5", "cust_b": "1e9"})
    await store.redis.hset("mv:quota:huge", mapping={"cust": "7" * 1_000_000, "cust_b": "1"})
    await store.redis.set("mv:quota:str", "not a hash")
    await store.redis.hset("mv:quota:big", mapping={f"f{i}": "1" for i in range(20_000)})
    await store.redis.hset("mv:quota:big", "cust", "1")
    # node ids nobody could have: too long, or with no liveness record
    await store.redis.sadd("mv:nodes", "x" * 5000, "ghost")
    await store.redis.hset("mv:quota:ghost", "cust", "40")
    with caplog.at_level(logging.WARNING, "minivoice.cluster"):
        await me.refresh()
        await me.refresh()  # once per node, not once per read
    assert me.others == {"cust": 2 + 1, "cust_b": 1}
    bad = [r for r in caplog.records if r.getMessage() == "cluster.quota_bad_counts"]
    assert sorted(r.__dict__["from_node"] for r in bad) == ["bad", "huge", "str"], bad
    # the script cut the 1 MB value before sending it
    assert all(len(str(r.__dict__["reason"])) < 200 for r in bad)


async def test_many_nodes_are_read_up_to_the_bound(store: ClusterStore) -> None:
    pipe = store.redis.pipeline()
    for i in range(quota.MAX_NODES + 100):
        pipe.hset(f"mv:node:n{i}", "sip", "x")
        pipe.sadd("mv:nodes", f"n{i}")
        pipe.hset(f"mv:quota:n{i}", "cust", "1")
    await pipe.execute()
    me = _node(store, "me", [])
    await me.refresh()
    assert me.others == {"cust": quota.MAX_NODES}


async def test_redis_unreachable_counts_our_own_calls_only_logged_once(
        store: ClusterStore, caplog: pytest.LogCaptureFixture) -> None:
    await _alive(store, "a", "b")
    b = _node(store, "b", [_session("app1", "cust")])
    await b.publish()
    a = _node(store, "a", [])
    task = asyncio.create_task(a.run())
    try:
        await eventually(lambda: a.others == {"cust": 1}, timeout=5)
        gone = ClusterStore(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
        a.store, a._read = gone, gone.redis.register_script(quota._READ)
        with caplog.at_level(logging.INFO, "minivoice.cluster"):
            await eventually(lambda: a.others == {} and not a.shared, timeout=10)
            await asyncio.sleep(1.0)  # a few more failed ticks
            a.store, a._read = store, store.redis.register_script(quota._READ)
            await eventually(lambda: a.others == {"cust": 1} and a.shared, timeout=10)
        names = [r.getMessage() for r in caplog.records]
        assert names.count("cluster.quota_local_only") == 1, names
        assert names.count("cluster.quota_shared") == 1, names
        await gone.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
