"""Failures in a cluster of real nodes: the owner killed (-9), a stale owner coming back
with an old epoch, Redis restarting. Audio measured at the end of each."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from gateway.cluster.redis_store import ClusterStore
from media.rooms import RoomKey
from tests.checks import callers_on_two_nodes, hang_up_and_hear_each_other
from tests.cluster import (  # noqa: F401 (cluster, cluster_store: fixtures)
    Cluster,
    call_id_from,
    cluster,
    cluster_store,
    completions,
    room_nodes,
)
from tests.harness import Phonebank
from tests.httpkit import Server
from tests.test_conference_events import StatusReceiver
from tests.waiting import eventually

pytestmark = pytest.mark.sip

KEY = RoomKey("cust_test", "r1")
TONES = {"x": 300, "y": 440, "z": 700, "w": 1100, "v": 1500}


def dial(phones: Phonebank, cid: str, gw, tmp: Path) -> Path:  # type: ignore[no-untyped-def]
    rec = tmp / f"{cid}.wav"
    phones.call(cid, gw.uri(), record=str(rec), tone_hz=TONES[cid],
                **{"from": f"+1555000{TONES[cid]}"})
    return rec


def with_status(nodes: Cluster, server: Server) -> StatusReceiver:
    """Room r1 gets a status_url, received (and its signatures checked) by `server`."""
    nodes.app.answer = lambda p: {"actions": [{"conference": {
        "room": "r1", "status_url": server.url + "/status"}}]}
    return StatusReceiver(server)


async def claim_of(store: ClusterStore):  # type: ignore[no-untyped-def]
    try:
        return await store.get_claim(KEY)
    except Exception:
        return None


async def test_owner_killed_survivors_take_over_and_new_callers_join(
    cluster: Cluster, phones: Phonebank, tmp_path: Path, server: Server,  # noqa: F811
    cluster_store: ClusterStore,  # noqa: F811
) -> None:
    status = with_status(cluster, server)
    a = await cluster.start_node("a")
    b = await cluster.start_node("b")
    c = await cluster.start_node("c")
    recs = {"x": dial(phones, "x", a, tmp_path)}
    await phones.wait("media", "x")
    await eventually(lambda: claim_of(cluster_store), timeout=10)
    recs["y"] = dial(phones, "y", b, tmp_path)
    recs["z"] = dial(phones, "z", b, tmp_path)
    recs["w"] = dial(phones, "w", c, tmp_path)
    for cid in "yzw":
        await phones.wait("media", cid)
    await eventually(lambda: _count(b, 4), timeout=10, message="room incomplete")
    first = await cluster_store.get_claim(KEY)
    assert first is not None and first.owner == "a" and first.epoch == 1

    cluster.kill("a")
    killed_at = time.monotonic()
    taken = await eventually(lambda: _taken_over(cluster_store), timeout=10,
                             message="nobody took the room over within 10 s")
    takeover_s = time.monotonic() - killed_at
    assert taken.epoch == 2 and taken.owner in ("b", "c")
    # The new owner tells the room's status_url, once (checked again at the end).
    await status.until("conference.owner_changed")
    moved = [e for e in status.events if e["event"] == "conference.owner_changed"]
    assert moved[0]["data"] == {"owner": taken.owner, "previous_owner": "a", "epoch": 2}
    assert moved[0]["call"] is None and moved[0]["conference"]["room"] == "r1"
    assert moved[0]["stream"] == "room:cust_test:r1"
    # A new caller, on the node that did not win, joins within 10 s of the kill.
    loser = c if taken.owner == "b" else b
    recs["v"] = dial(phones, "v", loser, tmp_path)
    await phones.wait("media", "v")
    seen = await eventually(lambda: _has(b, "+15550001500"), timeout=10)
    join_s = time.monotonic() - killed_at
    assert join_s <= 10, join_s
    # x's node is dead: its participant is no longer listed
    assert "a" not in seen.values(), seen
    await asyncio.sleep(3.5)
    phones.hangup("x")  # x's call died with node a (its phone never got a BYE)
    print(f"takeover {takeover_s:.2f} s, new caller listed {join_s:.2f} s after the kill")
    # Everyone left hears everyone else, across the two surviving nodes.
    heard = await hang_up_and_hear_each_other(
        phones, {k: v for k, v in recs.items() if k != "x"}, TONES)
    for listener in "yzwv":
        assert heard[listener][TONES["x"]] < -40, heard  # x is gone
    assert status.names().count("conference.owner_changed") == 1, status.names()
    assert status.bad_signatures == 0

    # x's call.completed came from a survivor; node a, back on its own database,
    # does not send it again.
    x_id = await call_id_from(cluster, "+1555000300")
    done = await cluster.app.completed(x_id, timeout=15)
    assert done[0]["data"]["hangup_cause"] == "gateway_lost"
    a2 = await cluster.start_node("a")
    await eventually(lambda: "call.lost_elsewhere" in a2.log(), timeout=10)
    assert len(completions(cluster, x_id)) == 1


async def _count(gw, n: int):  # type: ignore[no-untyped-def]
    seen = await room_nodes(gw, "r1")
    return seen if len(seen) == n else None


async def _has(gw, caller: str):  # type: ignore[no-untyped-def]
    status, body = await gw.get("/v1/conferences/r1")
    if status != 200 or caller not in {p["from"] for p in body["participants"]}:
        return None
    return {p["call_id"]: p["node"] for p in body["participants"]}


async def room_across(phones: Phonebank, a, b, store: ClusterStore,  # type: ignore[no-untyped-def]
                      tmp: Path) -> dict[str, Path]:
    """x calls node a, which claims the room; then y calls node b, which bridges to a. Returns
    the callers' recordings once both nodes show both in the room."""
    return await callers_on_two_nodes(
        phones, a, b, tmp, tones={"x": TONES["x"], "y": TONES["y"]},
        before_y=lambda: eventually(lambda: claim_of(store), timeout=10))


async def _taken_over(store: ClusterStore):  # type: ignore[no-untyped-def]
    got = await claim_of(store)
    return got if got is not None and got.owner != "a" else None


async def test_stale_owner_cannot_act_and_rejoins_as_a_bridge(
    cluster: Cluster, phones: Phonebank, tmp_path: Path, server: Server,  # noqa: F811
    cluster_store: ClusterStore,  # noqa: F811
) -> None:
    """Node a owns the room at epoch 1, then freezes (SIGSTOP) past its lease; b takes the
    room at epoch 2. When a wakes up its renewal at epoch 1 fails, it steps down and bridges
    its caller to b; it never takes the room back. The room's status_url hears of the
    move once, from b."""
    status = with_status(cluster, server)
    a = await cluster.start_node("a")
    b = await cluster.start_node("b")
    recs = await room_across(phones, a, b, cluster_store, tmp_path)
    a.proc.send_signal(signal.SIGSTOP)
    try:
        taken = await eventually(lambda: _taken_over(cluster_store), timeout=10)
        assert taken.owner == "b" and taken.epoch == 2
    finally:
        a.proc.send_signal(signal.SIGCONT)
    await eventually(lambda: "conference.owner_lost" in a.log(), timeout=10,
                     message=lambda: a.log()[-3000:])
    await eventually(lambda: "owner=b epoch=2" in a.log(), timeout=10,
                     message=lambda: a.log()[-3000:])
    await asyncio.sleep(3.5)
    assert await cluster_store.get_claim(KEY) == taken  # a never wrote over it
    await hang_up_and_hear_each_other(phones, recs, TONES)  # after a stepped down
    await status.until("conference.ended")  # once for the room, not once per node
    await asyncio.sleep(1.0)
    assert status.names().count("conference.ended") == 1, status.names()
    moved = [e["data"] for e in status.events if e["event"] == "conference.owner_changed"]
    assert moved == [{"owner": "b", "previous_owner": "a", "epoch": 2}], moved


@pytest.mark.parametrize("down_s", [0.0, 3.0])  # at once (within a tick), past a lease
async def test_redis_restart_drops_no_call_and_rooms_are_reclaimed(
    cluster: Cluster, phones: Phonebank, tmp_path: Path, down_s: float,  # noqa: F811
    server: Server,
    cluster_store: ClusterStore,  # noqa: F811
) -> None:
    hooks = with_status(cluster, server)
    a = await cluster.start_node("a")
    b = await cluster.start_node("b")
    recs = await room_across(phones, a, b, cluster_store, tmp_path)
    before = await cluster_store.get_claim(KEY)
    cluster.redis.stop()
    if down_s:
        # Without Redis a node shows what it has, and says the view is partial.
        status, body = await b.get("/v1/conferences/r1")
        assert status == 200 and body.get("partial") is True, body
        assert [p["node"] for p in body["participants"]] == ["b"], body
        await asyncio.sleep(down_s)
    cluster.redis.start()
    # The owner puts its claim back at the same epoch: nobody re-bridges.
    back = await eventually(lambda: claim_of(cluster_store), timeout=10)
    assert back == before, (back, before)
    await eventually(lambda: _count(a, 2), timeout=10)  # members re-published
    await asyncio.sleep(3.0)
    await hang_up_and_hear_each_other(phones, recs, TONES)  # after the Redis restart
    assert b.log().count("cluster.bridge") == 1, "the cascade leg was re-made"
    await hooks.until("conference.ended")  # its status_url re-published with members
    await asyncio.sleep(1.0)
    assert hooks.names().count("conference.ended") == 1, hooks.names()
    assert "conference.owner_changed" not in hooks.names()  # the owner never changed
    assert not any(w["event"] == "call.completed" and w["data"]["hangup_by"] != "caller"
                   for w in cluster.app.webhooks())
