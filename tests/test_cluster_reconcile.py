"""A dead node's calls get their call.completed from a survivor: real nodes, a real
redis-server, the application's real event_url. Who sent each webhook is read from the
nodes' outboxes (the event ID the application received is in exactly one node's SQLite)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from gateway.cluster.redis_store import ClusterStore
from tests.cluster import (  # noqa: F401 (cluster, cluster_store: fixtures)
    Cluster,
    call_id_from,
    cluster,
    cluster_store,
    completions,
    senders,
)
from tests.harness import Phonebank
from tests.test_cluster_failover import dial, room_across
from tests.waiting import eventually

pytestmark = pytest.mark.sip

X, Y, Z, W = "+1555000300", "+1555000440", "+1555000700", "+15550001100"


async def _live(gw, call_id: str) -> bool:  # type: ignore[no-untyped-def]
    status, body = await gw.get(f"/v1/calls/{call_id}")
    return status == 200 and body.get("ended_at") is None


async def test_killed_node_call_completed_sent_once_by_the_survivor(
    cluster: Cluster, phones: Phonebank, tmp_path: Path,  # noqa: F811
    cluster_store: ClusterStore,  # noqa: F811
) -> None:
    a = await cluster.start_node("a")
    b = await cluster.start_node("b")
    await room_across(phones, a, b, cluster_store, tmp_path)
    x_id, y_id = await call_id_from(cluster, X), await call_id_from(cluster, Y)
    await eventually(lambda: cluster_store.redis.hexists("mv:calls:b", y_id), timeout=10)
    assert not await cluster_store.redis.hexists("mv:calls:b", x_id)  # a's call is a's
    cluster.kill("b")
    killed = time.monotonic()
    await cluster.app.completed(y_id, timeout=15)
    took = time.monotonic() - killed
    await asyncio.sleep(3.0)  # a second one would have come by now
    got = completions(cluster, y_id)
    assert len(got) == 1, got
    payload, event_id = got[0]
    assert payload["data"]["hangup_cause"] == "gateway_lost", payload
    assert payload["data"]["error"]["code"] == "gateway_lost"
    assert payload["call"]["from"] == Y and payload["call"]["direction"] == "inbound"
    assert payload["data"]["duration_s"] > 0
    assert senders(cluster, event_id) == ["a"]
    status, record = await a.get(f"/v1/calls/{y_id}")  # a keeps the call's record
    assert status == 200 and record["hangup_cause"] == "gateway_lost", record
    # a's own caller is untouched
    assert await _live(a, x_id)
    assert not completions(cluster, x_id)
    assert phones.find("ended", "x") is None
    assert "call.lost" in a.log() and await cluster_store.call_nodes() == {"a": True}
    # b's cascade leg into a's room got no BYE: a ends it once b's record has expired
    # (it used to stay up until the media timeout, 30 s, keeping the room alive)
    await eventually(lambda: "cluster.leg_of_dead_node" in a.log(), timeout=10)
    print(f"call.completed of the killed node's call {took:.1f} s after the kill")
    phones.hangup("x")
    phones.hangup("y")
    done = await cluster.app.completed(x_id, timeout=10)
    assert done[0]["data"]["hangup_by"] == "caller"


async def test_racing_survivors_and_the_restarted_node_send_each_once(
    cluster: Cluster, phones: Phonebank, tmp_path: Path,  # noqa: F811
    cluster_store: ClusterStore,  # noqa: F811
) -> None:
    """Three nodes; c, with two callers, is killed: a and b race, each of c's calls gets one
    call.completed. c then restarts on its own database and sends none of them again."""
    a = await cluster.start_node("a")
    b = await cluster.start_node("b")
    c = await cluster.start_node("c")
    dial(phones, "x", a, tmp_path)
    dial(phones, "y", b, tmp_path)
    dial(phones, "z", c, tmp_path)
    dial(phones, "w", c, tmp_path)
    for cid in "xyzw":
        await phones.wait("media", cid)
    lost = [await call_id_from(cluster, Z), await call_id_from(cluster, W)]
    await eventually(lambda: _published(cluster_store, "c", lost), timeout=10)
    cluster.kill("c")
    for cid in lost:
        await cluster.app.completed(cid, timeout=15)
    await asyncio.sleep(2.0)
    by = set()
    for cid in lost:
        got = completions(cluster, cid)
        assert len(got) == 1, got
        assert got[0][0]["data"]["hangup_cause"] == "gateway_lost"
        who = senders(cluster, got[0][1])
        assert len(who) == 1 and who[0] in ("a", "b"), who
        by.add(who[0])
    assert len(by) == 1, by  # one survivor took the node

    c2 = await cluster.start_node("c")  # on its own SQLite: both calls are live there
    await eventually(lambda: c2.log().count("call.lost_elsewhere") == 2, timeout=10,
                     message=lambda: c2.log()[-3000:])
    await asyncio.sleep(2.0)
    assert [len(completions(cluster, cid)) for cid in lost] == [1, 1]
    for cid in "xyzw":
        phones.hangup(cid)


async def test_node_back_before_any_survivor_ends_its_calls_itself(
    cluster: Cluster, phones: Phonebank, tmp_path: Path,  # noqa: F811
    cluster_store: ClusterStore,  # noqa: F811
) -> None:
    """b's liveness outlasts its restart (node_ttl_s 60): no survivor takes its calls, and
    the restarted b sends y's call.completed itself (gateway_restart), once."""
    a = await cluster.start_node("a")
    b = await cluster.start_node("b", node_ttl_s=60)
    dial(phones, "x", a, tmp_path)
    dial(phones, "y", b, tmp_path)
    for cid in "xy":
        await phones.wait("media", cid)
    y_id = await call_id_from(cluster, Y)
    await eventually(lambda: _published(cluster_store, "b", [y_id]), timeout=10)
    cluster.kill("b")
    await cluster.start_node("b", node_ttl_s=60)
    await cluster.app.completed(y_id, timeout=15)
    await asyncio.sleep(3.0)
    got = completions(cluster, y_id)
    assert len(got) == 1 and got[0][0]["data"]["hangup_cause"] == "gateway_restart", got
    assert senders(cluster, got[0][1]) == ["b"]
    assert not await cluster_store.redis.hexists("mv:calls:b", y_id)
    for cid in "xy":
        phones.hangup(cid)


async def _published(store: ClusterStore, node: str, call_ids: list[str]) -> bool:
    return all([await store.redis.hexists(f"mv:calls:{node}", c) for c in call_ids])


async def test_node_taken_for_dead_hangs_up_what_was_reported_lost(
    cluster: Cluster, phones: Phonebank, tmp_path: Path,  # noqa: F811
    cluster_store: ClusterStore,  # noqa: F811
) -> None:
    """b is frozen (SIGSTOP) past node_ttl_s: a sends y's call.completed (gateway_lost).
    When b wakes, it hangs y up and sends no second call.completed; x, on a, stays up."""
    a = await cluster.start_node("a")
    b = await cluster.start_node("b")
    dial(phones, "x", a, tmp_path)
    dial(phones, "y", b, tmp_path)
    for cid in "xy":
        await phones.wait("media", cid)
    x_id, y_id = await call_id_from(cluster, X), await call_id_from(cluster, Y)
    await eventually(lambda: _published(cluster_store, "b", [y_id]), timeout=10)
    b.proc.send_signal(signal.SIGSTOP)
    try:
        await cluster.app.completed(y_id, timeout=15)
    finally:
        b.proc.send_signal(signal.SIGCONT)
    await phones.wait("ended", "y", timeout=15)  # b hung y up when it woke
    await eventually(lambda: "call.reported_lost" in b.log(), timeout=10)
    await asyncio.sleep(2.0)
    got = completions(cluster, y_id)
    assert len(got) == 1 and senders(cluster, got[0][1]) == ["a"], got
    assert got[0][0]["data"]["hangup_cause"] == "gateway_lost"
    status, record = await b.get(f"/v1/calls/{y_id}")
    assert status == 200 and record["hangup_cause"] == "gateway_lost", record
    assert any(e["event"] == "call.completed_elsewhere" for e in record["timeline"])
    assert await _live(a, x_id) and phones.find("ended", "x") is None
    phones.hangup("x")
