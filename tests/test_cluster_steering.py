"""Steering a room from any node of a cluster (real nodes, real redis-server, real SIP and
RTP): the list of rooms is cluster-wide; a participant on node A is muted through node B's
API (checked by audio at a caller on B); the room is ended through the node that does not
own it; a customer's token reaches no other customer's room or call through a forward, and
a forward without the cluster's signature is refused."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import TypedDict

import aiohttp
import pytest

from gateway.api import FORWARDED_HEADER
from gateway.cluster.http import SCOPE_HEADER, STAMP_HEADER, _forward_mac
from media.tones import sine, write_wav
from tests.audio import levels
from tests.cluster import (  # noqa: F401 (cluster: a fixture)
    CLUSTER_SECRET,
    Cluster,
    cluster,
    room_nodes,
    tail_levels,
)
from tests.harness import GatewayProc, Phonebank
from tests.waiting import eventually

pytestmark = pytest.mark.sip

HEARD_DB = -25.0
SILENT_DB = -45.0
ANNOUNCE_HZ = 1500
ADMIN = "admin-token-0123456789"
MINE = "cust-test-token-0123456789"
OTHER = "cust-other-token-0123456789"
API = {"api": {"tokens": [{"token": ADMIN}, {"token": MINE, "customer_id": "cust_test"},
                          {"token": OTHER, "customer_id": "cust_other"}]}}


async def api_nodes(c: Cluster, token: str = MINE) -> tuple[GatewayProc, GatewayProc]:
    """Nodes a and b with the API's tokens (API); requests through them carry `token`."""
    nodes = []
    for name in ("a", "b"):
        gw = await c.start_node(name, sections=API)
        gw.token = token
        nodes.append(gw)
    return nodes[0], nodes[1]


class _Forgery(TypedDict, total=False):
    """What a forged request changes of `forged`'s defaults."""

    secret: str
    stamp: str
    signed: tuple[str, str, bytes]


async def forged(gw: GatewayProc, method: str, path: str, scope: str,
                 secret: str = CLUSTER_SECRET, body: bytes = b"", stamp: str | None = None,
                 signed: tuple[str, str, bytes] | None = None) -> int:
    """A forwarded request as another node would send it (signed with `secret`; `signed`:
    the method, path and body the signature covers, if not those sent)."""
    stamp = str(int(time.time())) if stamp is None else stamp
    m, p, b = signed or (method, path, body)
    headers = {FORWARDED_HEADER: _forward_mac(secret, m, p, scope, stamp, b),
               SCOPE_HEADER: scope, STAMP_HEADER: stamp}
    async with aiohttp.ClientSession() as s, s.request(method, gw.http + path, data=body,
                                                       headers=headers) as r:
        return r.status


async def test_forged_forwards_are_refused(cluster: Cluster) -> None:  # noqa: F811
    """Every part of a forward's signature counts; a scope that is not exactly `admin` or
    `customer:<id>` is refused even when signed."""
    a = await cluster.start_node("a", sections=API)
    path = "/v1/conferences/r1/participants/call_abc"
    body = b'{"muted": true}'
    ok = await forged(a, "PATCH", path, "admin", body=body)
    assert ok == 404  # signed correctly: handled, and there is no such room
    old = str(int(time.time()) - 3600)
    cases: list[_Forgery] = [
        dict(stamp=old), dict(stamp="soon"), dict(stamp="9" * 5000), dict(stamp=""),
        dict(signed=("PATCH", path, b'{"muted": false}')),  # another body
        dict(signed=("DELETE", path, body)),  # another method
        dict(signed=("PATCH", path + "?customer_id=x", body)),  # another path
        dict(secret="wrong-secret-0123456789"),
    ]
    for case in cases:
        assert await forged(a, "PATCH", path, "admin", body=body, **case) == 403, case
    for scope in ("", "customer:", "root", "admin ", "customer", "\u00e9\u00e9"):
        assert await forged(a, "PATCH", path, scope, body=body) == 403, scope
    # A forward header without any signature is not a bearer token either.
    async with aiohttp.ClientSession() as s, s.get(
            a.http + "/v1/calls", headers={FORWARDED_HEADER: "x"}) as r:
        assert r.status == 403
    async with aiohttp.ClientSession() as s, s.get(a.http + "/v1/calls") as r:
        assert r.status == 401


async def test_steer_a_room_from_the_node_that_does_not_have_the_participant(
    cluster: Cluster, phones: Phonebank, tmp_path: Path  # noqa: F811
) -> None:
    a, b = await api_nodes(cluster)
    recs = {cid: tmp_path / f"{cid}.wav" for cid in "xyz"}
    phones.call("x", a.uri(), record=str(recs["x"]), tone_hz=440, **{"from": "+15550001"})
    await phones.wait("media", "x")  # x first: node a owns the room
    phones.call("z", a.uri(), record=str(recs["z"]), tone_hz=1100, **{"from": "+15550003"})
    phones.call("y", b.uri(), record=str(recs["y"]), tone_hz=700, **{"from": "+15550002"})
    await phones.wait("media", "y")
    y_started = time.monotonic()
    await phones.wait("media", "z")
    nodes = await eventually(lambda: _all(b, 3), timeout=10, message="room incomplete")
    x_id = next(c for c, n in nodes.items() if n == "a" and _from(c) == "+15550001")

    # The list is cluster-wide, on either node; cascade legs are not participants.
    for gw in (a, b):
        status, body = await gw.get("/v1/conferences")
        assert status == 200, body
        [room] = body["conferences"]
        assert room["room"] == "r1" and room["customer_id"] == "cust_test"
        assert sorted(p["node"] for p in room["participants"]) == ["a", "a", "b"], room
        assert {p["from"] for p in room["participants"]} == {
            "+15550001", "+15550002", "+15550003"}
    status, body = await b.request("GET", "/v1/conferences", token=ADMIN)
    assert status == 200 and len(body["conferences"][0]["participants"]) == 3
    # Another customer sees nothing, and reaches nothing through node b's forwards.
    status, body = await b.request("GET", "/v1/conferences", token=OTHER)
    assert status == 200 and body["conferences"] == [], body
    part = f"/v1/conferences/r1/participants/{x_id}"
    assert (await b.request("PATCH", part, {"muted": True}, token=OTHER))[0] == 404
    assert (await b.request("DELETE", part, token=OTHER))[0] == 404
    assert (await b.request("DELETE", f"/v1/calls/{x_id}", token=OTHER))[0] == 404
    assert (await b.request("DELETE", "/v1/conferences/r1", token=OTHER))[0] == 404
    assert (await b.request("POST", "/v1/conferences/r1/announcements",
                            {"say": {"text": "hi"}}, token=OTHER))[0] == 404
    # Node a applies the scope a forward carries (even one that names the room's key
    # outright), and refuses a forward not signed by the cluster.
    assert await forged(a, "DELETE", f"/v1/calls/{x_id}", "customer:cust_other") == 404
    assert await forged(a, "DELETE", part + "?customer_id=cust_test",
                        "customer:cust_other") == 404
    assert await forged(a, "DELETE", f"/v1/calls/{x_id}", "admin",
                        secret="not-the-cluster-secret-0") == 403
    assert await forged(a, "DELETE", f"/v1/calls/{x_id}", "admin; customer:cust_test") == 403
    status, body = await a.get(f"/v1/calls/{x_id}")
    assert status == 200 and body["status"] == "in-progress", body  # untouched

    # Mute x (on node a) through node b: y (on b) stops hearing x, still hears z (on a).
    await asyncio.sleep(3.0)
    status, body = await b.request("PATCH", part, {"muted": True})
    assert status == 200 and body["muted"] is True and body["call_id"] == x_id, body
    muted_at = time.monotonic() - y_started
    _, room = await a.get("/v1/conferences/r1")
    assert {p["call_id"]: p["muted"] for p in room["participants"]}[x_id] is True
    await asyncio.sleep(3.5)

    # End the room through node b, which does not own it: every caller on both nodes ends.
    assert (await b.request("DELETE", "/v1/conferences/r1"))[0] == 204
    for cid in "xyz":
        await phones.wait("ended", cid, timeout=15)
    before = levels(recs["y"], 440, 1100, start_s=max(0.5, muted_at - 2.5),
                    end_s=muted_at - 0.3)
    after = tail_levels(recs["y"], 440, 1100)
    print(f"y hears x/z before the mute {before}, after {after}")
    assert before[440] > HEARD_DB and before[1100] > HEARD_DB, before
    assert after[440] < SILENT_DB and after[1100] > HEARD_DB, after
    done = await cluster.app.completed(count=3, timeout=15)
    assert len({w["call"]["id"] for w in done}) == 3
    for gw in (a, b):
        await eventually(functools.partial(_empty, gw), timeout=10, message="room left over")


FROM: dict[str, str] = {}


def _from(call_id: str) -> str:
    return FROM.get(call_id, "")


async def _all(gw: GatewayProc, n: int) -> dict[str, str] | None:
    status, body = await gw.get("/v1/conferences/r1")
    if status != 200 or len(body["participants"]) != n:
        return None
    FROM.update({p["call_id"]: p["from"] for p in body["participants"]})
    return {p["call_id"]: p["node"] for p in body["participants"]}


async def _empty(gw: GatewayProc) -> bool:
    status, body = await gw.get("/v1/conferences")
    return status == 200 and body["conferences"] == []


async def test_announce_and_hang_up_through_another_node(
    cluster: Cluster, phones: Phonebank, tmp_path: Path  # noqa: F811
) -> None:
    """With an admin token (no ?customer_id): the announcement is played by the room's
    owner only, and reaches the other node's caller through the cascade; a participant on
    node a is taken out of the room, and a call on node a hung up, through node b."""
    path = tmp_path / "announce.wav"
    write_wav(path, sine(ANNOUNCE_HZ, 1.5))
    cluster.app.media["announce"] = (path.read_bytes(), {"Content-Type": "audio/wav"})
    a, b = await api_nodes(cluster, ADMIN)
    recs = {cid: tmp_path / f"{cid}.wav" for cid in "xy"}
    phones.call("x", a.uri(), record=str(recs["x"]), tone_hz=440, **{"from": "+15550001"})
    await phones.wait("media", "x")
    x_started = time.monotonic()
    phones.call("y", b.uri(), record=str(recs["y"]), tone_hz=700, **{"from": "+15550002"})
    await phones.wait("media", "y")
    y_started = time.monotonic()
    phones.call("z", a.uri(), tone_hz=1100, **{"from": "+15550003"})
    await phones.wait("media", "z")
    nodes = await eventually(lambda: _all(b, 3), timeout=10, message="room incomplete")
    z_id = next(c for c in nodes if _from(c) == "+15550003")
    status, _ = await b.request("DELETE", f"/v1/conferences/r1/participants/{z_id}")
    assert status == 204
    await phones.wait("ended", "z", timeout=15)  # no next action: hung up
    nodes = await eventually(lambda: _all(b, 2), timeout=10, message="z still listed")
    assert (await b.request("DELETE", f"/v1/conferences/r1/participants/{z_id}"))[0] == 404
    await asyncio.sleep(2.0)
    status, body = await b.request("POST", "/v1/conferences/r1/announcements",
                                   {"play": {"url": cluster.app.url + "/media/announce"}})
    assert status == 202 and body["status"] == "queued", body
    at = time.monotonic()
    await eventually(lambda: "conference.announcement " in a.log(), timeout=10)
    await asyncio.sleep(3.0)
    assert "conference.announcement " not in b.log()  # the owner's mix only: heard once

    x_id = next(c for c, n in nodes.items() if n == "a")
    status, body = await b.request("DELETE", f"/v1/calls/{x_id}")
    assert status == 202 and body == {"call_id": x_id, "status": "hanging_up"}, body
    await phones.wait("ended", "x", timeout=15)
    [done] = await cluster.app.completed(x_id, timeout=15)
    assert done["data"]["hangup_cause"] == "api_hangup", done["data"]
    assert (await b.request("DELETE", f"/v1/calls/{x_id}"))[0] == 404  # gone everywhere
    phones.hangup("y")
    await phones.wait("ended", "y")
    for cid, started, other in (("x", x_started, 700), ("y", y_started, 440)):
        start = at - started + 0.3
        got = levels(recs[cid], ANNOUNCE_HZ, other, start_s=start, end_s=start + 1.0)
        print(cid, "during the announcement", got)
        assert got[ANNOUNCE_HZ] > HEARD_DB and got[other] > HEARD_DB, (cid, got)
