"""limits.max_calls_per_customer across two real nodes (real processes, a real
redis-server, real SIP and RTP): a customer's calls on either node count; a refused call
gets 486 and sends no webhooks, and POST /v1/calls gets the 429 a single node gives; a
killed node's calls stop counting once its liveness record expires; cascade legs (one per
room and node) never count, so a room across the nodes is not refused by its own legs."""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cluster import cascade
from gateway.cluster.redis_store import ClusterStore
from media.rooms import RoomKey
from tests.checks import hang_up_and_hear_each_other
from tests.cluster import (  # noqa: F401 (cluster, cluster_store: fixtures)
    CLUSTER_SECRET,
    Cluster,
    cluster,
    cluster_store,
    room_nodes,
    settle,
)
from tests.harness import Phonebank
from tests.test_cluster_nodes import _invite
from tests.test_cluster_steering import API, MINE
from tests.waiting import eventually

pytestmark = pytest.mark.sip

PAUSE = {"actions": [{"pause": {"length": 60}}]}  # a call that stays up, in no room
KEY = RoomKey("cust_test", "r1")
TONES = {"x": 440, "y": 700, "z": 1100, "w": 1300, "v": 1500}
# Nodes read each other's counts every tick (0.5 s in the tests): this is a few of them.
REFRESH_S = 2.0


def _dial(phones: Phonebank, cid: str, gw: Any, tmp: Path) -> Path:
    rec = tmp / f"{cid}.wav"
    phones.call(cid, gw.uri(), record=str(rec), tone_hz=TONES[cid],
                **{"from": f"+1555000{TONES[cid]}"})
    return rec


async def _published(store: ClusterStore, node: str, n: int) -> bool:
    """Node `node` has `n` live calls of the test's customer in Redis (none: no field)."""
    got = await store.redis.hget(f"mv:quota:{node}", "cust_test")
    return (int(got) if got else 0) == n


async def _refused(phones: Phonebank, cid: str) -> None:
    ended = await phones.wait("ended", cid, timeout=15)
    assert ended["code"] == 486, ended
    assert phones.find("media", cid) is None


def _callers(c: Cluster) -> set[str]:
    return {w["call"]["from"] for w in c.app.webhooks()}


async def _limited(c: Cluster, cap: int) -> tuple[Any, Any]:
    nodes = []
    for name in ("a", "b"):
        gw = await c.start_node(name, {"limits": {"max_calls_per_customer": cap}, **API},
                                app={"caller_ids": ["+1555*"]})
        gw.token = MINE
        nodes.append(gw)
    return nodes[0], nodes[1]


async def _two_calls_on_a(c: Cluster, phones: Phonebank, store: ClusterStore, tmp: Path,
                          cap: int) -> tuple[Any, Any, dict[str, Path]]:
    """Nodes a and b with the customer's limit at `cap`, and x and y up on a, once b can have
    read a's count of 2. Returns the nodes and x's and y's recordings."""
    a, b = await _limited(c, cap)
    recs = {}
    for cid in ("x", "y"):
        recs[cid] = _dial(phones, cid, a, tmp)
        await phones.wait("media", cid)
    await eventually(lambda: _published(store, "a", 2), timeout=10)
    await settle(REFRESH_S)
    return a, b, recs


async def _at_the_limit(c: Cluster, phones: Phonebank, store: ClusterStore, tmp: Path
                        ) -> tuple[Any, Any]:
    """Limit 2, and two calls that stay up (in no room) on node a: b has no call of the
    customer, a has two, and the customer is at its limit: z, on b, is refused."""
    c.app.answer = lambda p: PAUSE
    a, b, _ = await _two_calls_on_a(c, phones, store, tmp, 2)
    _dial(phones, "z", b, tmp)
    await _refused(phones, "z")
    return a, b


async def test_the_limit_counts_the_customers_calls_on_every_node(
    cluster: Cluster, phones: Phonebank, tmp_path: Path,  # noqa: F811
    cluster_store: ClusterStore,  # noqa: F811
) -> None:
    a, b = await _at_the_limit(cluster, phones, cluster_store, tmp_path)
    assert "reason=customer_call_limit" in b.log()
    status, err = await b.request("POST", "/v1/calls", {
        "to": "sip:nobody@127.0.0.1:9", "from": "+15550009", **PAUSE})
    assert status == 429, err
    assert err["error"]["code"] == "too_many_calls"
    assert err["error"]["message"] == "2 live calls (limits.max_calls_per_customer)"
    assert len(cluster.app.answers()) == 2, "a refused call reached answer_url"
    assert "+15550001100" not in _callers(cluster), "the refused call sent webhooks"

    # one of a's calls ends: b admits a new one
    phones.hangup("x")
    await phones.wait("ended", "x")
    ended = time.monotonic()
    await eventually(lambda: _published(cluster_store, "a", 1), timeout=10)
    print(f"a's count in Redis {1000 * (time.monotonic() - ended):.0f} ms after the "
          "caller's end (polled every 50 ms)")
    await settle(REFRESH_S)
    _dial(phones, "v", b, tmp_path)
    await phones.wait("media", "v", timeout=15)
    await eventually(lambda: _published(cluster_store, "b", 1), timeout=10)
    await settle(REFRESH_S)
    # and now a is at the limit too (y there, v on b)
    _dial(phones, "w", a, tmp_path)
    await _refused(phones, "w")
    await phones.hangup_all(("y", "v"))
    await cluster.app.completed(count=3)
    assert _callers(cluster) == {"+1555000440", "+1555000700", "+15550001500"}


async def test_a_killed_nodes_calls_stop_counting_when_its_liveness_expires(
    cluster: Cluster, phones: Phonebank, tmp_path: Path,  # noqa: F811
    cluster_store: ClusterStore,  # noqa: F811
) -> None:
    _, b = await _at_the_limit(cluster, phones, cluster_store, tmp_path)
    cluster.kill("a")
    killed = time.monotonic()
    # its liveness record expires (node_ttl_s, 4 s here); its counts then stop counting
    await eventually(lambda: _gone(cluster_store, "mv:node:a"), timeout=15)
    await settle(REFRESH_S)
    _dial(phones, "v", b, tmp_path)
    await phones.wait("media", "v", timeout=15)
    print(f"a call on b admitted {time.monotonic() - killed:.1f} s after a's kill "
          f"(of which {REFRESH_S} s waited on purpose)")
    phones.hangup("v")
    await phones.wait("ended", "v")
    for cid in ("x", "y"):  # their node is gone: no answer expected
        phones.hangup(cid)


async def _gone(store: ClusterStore, key: str) -> bool:
    return not await store.redis.exists(key)


async def test_a_room_across_nodes_is_not_refused_by_its_cascade_legs(
    cluster: Cluster, phones: Phonebank, tmp_path: Path,  # noqa: F811
    cluster_store: ClusterStore,  # noqa: F811
) -> None:
    """Limit 3. x and y on a, in room r1; z on b joins it (b bridges to a: one leg out of b,
    one into a) and the customer is at 3: w is refused. x leaves: 2 callers, and 2 cascade
    legs that would make 4 if they counted; v is admitted and the room carries on."""
    a, b, recs = await _two_calls_on_a(cluster, phones, cluster_store, tmp_path, 3)
    recs["z"] = _dial(phones, "z", b, tmp_path)  # the leg is made with the customer at 3
    await phones.wait("media", "z", timeout=15)
    await eventually(lambda: _in_room(a, 3), timeout=10, message="room not joined")
    # the legs are not published: each node has its callers only
    await eventually(lambda: _published(cluster_store, "b", 1), timeout=10)
    assert await _published(cluster_store, "a", 2)
    await settle(REFRESH_S)
    _dial(phones, "w", b, tmp_path)
    await _refused(phones, "w")

    phones.hangup("x")
    await phones.wait("ended", "x")
    await eventually(lambda: _published(cluster_store, "a", 1), timeout=10)
    await settle(REFRESH_S)
    recs["v"] = _dial(phones, "v", a, tmp_path)
    await phones.wait("media", "v", timeout=15)
    await eventually(lambda: _in_room(b, 3), timeout=10, message="v not in the room")
    await settle(3.0)
    # through the cascade leg both ways: z (on b) hears y and v (on a), they hear z (and y
    # and v, both on a, hear each other)
    await hang_up_and_hear_each_other(phones, {c: recs[c] for c in ("y", "z", "v")}, TONES)
    assert "+15550001300" not in _callers(cluster), "the refused call sent webhooks"
    assert "cluster.leg_refused" not in a.log()


async def _in_room(gw: Any, n: int) -> bool:
    return len(await room_nodes(gw, "r1")) == n


async def test_a_cascade_leg_is_taken_when_the_customer_is_at_its_limit(
    cluster: Cluster, phones: Phonebank, tmp_path: Path,  # noqa: F811
    cluster_store: ClusterStore,  # noqa: F811
) -> None:
    """One node, limit 1, its one caller in room r1: a cascade INVITE for the room (signed,
    at the owner's epoch, as another node would send it) is answered, not refused with 486;
    and the leg does not count: the next caller is refused for the caller, not for the leg,
    and once the caller has gone a new one is admitted while the leg is still up."""
    a = await cluster.start_node("a", {"limits": {"max_calls_per_customer": 1}, **API})
    a.token = MINE
    _dial(phones, "x", a, tmp_path)
    await phones.wait("media", "x")
    claim = await eventually(lambda: cluster_store.get_claim(KEY), timeout=10)
    leg = list(cascade.headers(CLUSTER_SECRET, KEY, claim.epoch, "b"))
    sock = await asyncio.to_thread(_leg_up, a.sip_port, leg)
    await eventually(lambda: "cluster.leg" in a.log(), timeout=10)
    _dial(phones, "y", a, tmp_path)
    await _refused(phones, "y")
    phones.hangup("x")
    await phones.wait("ended", "x")
    _dial(phones, "v", a, tmp_path)  # the leg (no RTP: ends at the media timeout) is up
    await phones.wait("media", "v", timeout=15)
    status, body = await a.get("/v1/calls")
    assert status == 200, body
    live = {c["application_id"] for c in body["calls"] if c.get("ended_at") is None}
    assert live == {"app_test", "app_cluster"}, body  # v, and the leg still up
    assert "cluster.leg_refused" not in a.log()
    phones.hangup("v")
    await phones.wait("ended", "v")
    await asyncio.to_thread(_leg_down, sock, a.sip_port)


class _Leg:
    def __init__(self, sock: socket.socket, ok: bytes, call_id: str, from_tag: str) -> None:
        self.sock, self.call_id, self.from_tag = sock, call_id, from_tag
        head = ok.split(b"\r\n\r\n", 1)[0].decode()
        fields = dict(line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line)
        self.to = fields["To"].strip()
        self.contact = re.search(r"<([^>]+)>", fields["Contact"]).group(1)  # type: ignore[union-attr]

    def request(self, method: str, cseq: int) -> bytes:
        port = self.sock.getsockname()[1]
        return "\r\n".join([
            f"{method} {self.contact} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70", f"From: <sip:mv-x@127.0.0.1>;tag={self.from_tag}",
            f"To: {self.to}", f"Call-ID: {self.call_id}", f"CSeq: {cseq} {method}",
            "Content-Length: 0", "", ""]).encode()


def _leg_up(port: int, headers: list[tuple[str, str]]) -> _Leg:
    """A cascade leg as another node would make it: INVITE, 200, ACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    invite = _invite(port, sock.getsockname()[1], headers)
    sock.sendto(invite, ("127.0.0.1", port))
    while True:
        reply = sock.recv(65536)
        code = int(reply.split(b" ", 2)[1])
        if code >= 200:
            break
    assert code == 200, reply[:200]
    call_id = re.search(rb"Call-ID: (\S+)", invite).group(1).decode()  # type: ignore[union-attr]
    tag = re.search(rb"From: [^\r]*;tag=(\w+)", invite).group(1).decode()  # type: ignore[union-attr]
    leg = _Leg(sock, reply, call_id, tag)
    sock.sendto(leg.request("ACK", 1), ("127.0.0.1", port))
    return leg


def _leg_down(leg: _Leg, port: int) -> None:
    leg.sock.sendto(leg.request("BYE", 2), ("127.0.0.1", port))
    try:
        while True:  # the 200 to the BYE (a retransmitted 200 to the INVITE may come first)
            reply = leg.sock.recv(65536)
            if b"CSeq: 2 BYE" in reply:
                assert int(reply.split(b" ", 2)[1]) == 200, reply[:200]
                return
    finally:
        leg.sock.close()
