"""The compose cluster of docker-compose.cluster.yml, for real: redis, the edge as dispatcher,
gateway-a, gateway-b and the app up and healthy; a phone registered at the edge's published
port puts two callers into one room, one on each node; a tone from each is heard by the other
(through the cascade leg between the nodes); either node's API lists both with their node;
the app gets the webhooks; gateway-b is killed (`docker kill`) and the caller on gateway-a
stays up, while the call that was on gateway-b gets its call.completed (gateway_lost) from
gateway-a. One `up` for all of it, `down -v` always.

Steering the callers onto the two nodes: the edge picks a node with a hash of the Request-URI
(Kamailio dispatcher, algorithm 3: its user and host:port). The demo app puts the caller of
number N in room `room-N` after dropping the characters a room name cannot have, so `1001`
and `+1001` (or `*1001`, ...) are one room but hash apart. The second caller dials such
variants until one lands on the node the first did not: the order is the parity of
Kamailio's hash (ds_get_hash, ported below), so normally the first variant does; a variant that
lands on the same node anyway is hung up and the next one tried. Calls are placed only through
the edge, as a phone would: the nodes refuse INVITEs that do not come from it.

Needs Docker and docker-compose, like tests/test_compose_stack.py (starts dockerd if it can,
skips with the reason otherwise). Its own compose project name; images reused (the build is
cached: seconds when the code did not change). The published host ports and the nodes' RTP
ranges are free ones; the network (172.29.61.0/24) is the compose file's own: a developer's
own cluster stack (`docker-compose -f docker-compose.cluster.yml up`) must not be up at the
same time.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.audio import levels
from tests.compose_kit import (  # noqa: F401 (docker: a fixture)
    Compose,
    app_events,
    docker,
    free_host_port,
    free_udp_blocks,
    wait_edge,
)
from tests.harness import ROOT, Phonebank
from tests.waiting import eventually

pytestmark = [pytest.mark.compose, pytest.mark.sip, pytest.mark.timeout(3600)]

PROJECT = "minivoiceclustertest"  # its own compose project: a developer's own stack is left alone
PASSWORD = "compose-cluster-password-1"
CONFIG = yaml.safe_load((ROOT / "configs" / "compose-cluster.yaml").read_text())
TOKEN = CONFIG["api"]["tokens"][0]["token"]
NUMBER = "1001"
ROOM = "room-1001"
SERVICE = {"gw-a": "gateway-a", "gw-b": "gateway-b"}
HTTP_PORT = {"gw-a": "MINIVOICE_HTTP_PORT_A", "gw-b": "MINIVOICE_HTTP_PORT_B"}
HEARD_DB = -40.0
# Variants of NUMBER that the demo app maps to the same room (it keeps [A-Za-z0-9._-] only).
VARIANTS = [p + NUMBER + s for p in ("+", "*", "+*", "**", "") for s in ("", "*", "**")
            if p + s]


def ds_hash(user: str, hostport: str) -> int:
    """Kamailio dispatcher's ds_get_hash(user, host[:port]): what algorithm 3 takes modulo the
    number of nodes (the port is part of it unless it is 5060)."""
    mask = 0xFFFFFFFF
    h = 0
    for text in (user, hostport):
        b = text.encode()
        i = 0
        while i + 4 <= len(b):
            v = (b[i] << 24) + (b[i + 1] << 16) + (b[i + 2] << 8) + b[i + 3]
            h = (h + (v ^ (v >> 3))) & mask
            i += 4
        v = 0
        for ch in b[i:]:
            v = ((v << 8) + ch) & mask
        h = (h + (v ^ (v >> 3))) & mask
    h = ((h + (h >> 11)) + ((h >> 13) + (h >> 23))) & mask
    return h or 1


def steering_order(first: str, hostport: str) -> list[str]:
    """VARIANTS, those that hash to the other node than `first` first."""
    parity = ds_hash(first, hostport) % 2
    return sorted(VARIANTS, key=lambda n: ds_hash(n, hostport) % 2 == parity)


def test_the_hash_port() -> None:
    # Kamailio's own arithmetic, worked by hand for a short key: "ab" is one partial word
    # v = 0x6162, h = v ^ (v >> 3) = 0x6162 ^ 0x0C2C = 0x6D4E, then the final mix.
    h = 0x6D4E
    assert ds_hash("ab", "") == (h + (h >> 11)) + ((h >> 13) + (h >> 23))
    order = steering_order(NUMBER, "172.29.61.1:40000")
    assert sorted(order) == sorted(VARIANTS) and NUMBER not in order
    assert ds_hash(order[0], "172.29.61.1:40000") % 2 != ds_hash(NUMBER, "172.29.61.1:40000") % 2


@pytest.fixture(scope="module")
def cluster(docker: None) -> Iterator[Compose]:  # noqa: F811
    # Logs kept in the repository's state directory: pytest's temporary directories are pruned.
    work = ROOT / "var" / "compose-cluster-test"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{var: str(free_host_port()) for var in (
        "MINIVOICE_SIP_PORT", "MINIVOICE_TLS_PORT", "MINIVOICE_HTTP_PORT_A",
        "MINIVOICE_HTTP_PORT_B", "MINIVOICE_APP_PORT")}}
    # each node's RTP range, published as it is: free ones, not the file's 10000-10199
    span = CONFIG["sip"]["rtp_port_range"]
    for node, start in zip("AB", free_udp_blocks(2, span), strict=True):
        env[f"MINIVOICE_RTP_START_{node}"] = str(start)
        env[f"MINIVOICE_RTP_END_{node}"] = str(start + span - 1)
    c = Compose(PROJECT, "docker-compose.cluster.yml", "minivoice-cluster", env, work)
    c.build("--cluster")
    c.run("down", "-v", "--remove-orphans", check=False)  # leftovers of an interrupted run
    t0 = time.monotonic()
    try:
        # `up -d` returns once the edge is started, i.e. redis, the app and both gateways
        # were healthy (depends_on: service_healthy)
        c.run("up", "-d", timeout=600)
        wait_edge(c)
        c.up_s = time.monotonic() - t0
        yield c
    finally:
        t0 = time.monotonic()
        # Stopped first, so that the logs show the shutdown. 10 s, not the 40 s grace: a node
        # drains its calls, and the owner keeps the dead node's cascade leg until the media
        # timeout (30 s), holding gateway-a's drain that long when it owned the room.
        c.run("stop", "-t", "10", check=False, timeout=300)
        (work / "compose.log").write_text(c.logs())
        c.run("down", "-v", "--remove-orphans", check=False, timeout=300)
        down_s = time.monotonic() - t0
        print(f"\ncompose cluster: build {c.build_s:.0f} s, up {c.up_s:.0f} s, "
              f"down {down_s:.0f} s, logs in {work}")


async def api(c: Compose, node: str, path: str) -> tuple[int, Any]:
    url = c.url(HTTP_PORT[node], path)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, \
                s.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            return r.status, (await r.json() if r.status == 200 else await r.text())
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, repr(exc)


async def room_nodes(c: Compose, node: str) -> dict[str, str]:
    """call ID -> node of every participant of ROOM that `node`'s API lists."""
    status, body = await api(c, node, f"/v1/conferences/{ROOM}")
    return {p["call_id"]: p["node"] for p in body["participants"]} if status == 200 else {}


async def test_callers_on_both_nodes_through_the_edge_then_a_node_dies(
        cluster: Compose, tmp_path: Path) -> None:
    c = cluster
    t_start = time.monotonic()
    # users.db is in the volume shared by the edge and the nodes: added in gateway-a, read by
    # the edge (and by gateway-b, for calls to a registered user)
    c.run("exec", "-T", "gateway-a", ".venv/bin/python", "-m", "gateway", "users",
          "--config", "configs/compose-cluster.yaml", "add", "alice", "--password", PASSWORD)
    listed = c.run("exec", "-T", "gateway-b", ".venv/bin/python", "-m", "gateway", "users",
                   "--config", "configs/compose-cluster.yaml", "list").stdout
    assert "alice" in listed, listed
    for node in SERVICE:  # both nodes up
        status, health = await api(c, node, "/healthz")
        assert status == 200 and health["accepting_calls"], (node, status, health)
    # each node's var/ is its own volume (its database, media-cache/), users/ the shared one
    var = {name: set(c.run("exec", "-T", name, "ls", "-A", "var").stdout.split())
           for name in ("gateway-a", "gateway-b", "edge")}
    for name, own, other in (("gateway-a", "gw-a", "gw-b"), ("gateway-b", "gw-b", "gw-a")):
        assert {f"{own}.db", "media-cache", "users"} <= var[name], var
        assert not any(f.startswith(other) for f in var[name]), var
    assert var["edge"] == {"edge", "users"}, var

    # The phone lives on the host's address on the compose network (as a LAN phone on its
    # LAN address) and reaches the edge's published port there.
    host = c.host_address()
    edge = f"{host}:{c.env['MINIVOICE_SIP_PORT']}"
    phone = await Phonebank.start(tmp_path, "--bind", host)
    tones = {"x": 440, "y": 1000}
    recs: dict[str, Path] = {}
    node_of: dict[str, str] = {}  # phone call -> node
    mv_id: dict[str, str] = {}  # phone call -> MiniVoice call ID
    dialed: dict[str, str] = {}
    media_at: dict[str, float] = {}  # phone call -> when its media started (the test's clock)
    tried: list[str] = []
    try:
        phone.send(op="register", user="alice", password=PASSWORD, domain=edge,
                   registrar=f"sip:{edge}")
        assert (await phone.wait("registered", None, user="alice", timeout=20))["code"] == 200

        async def place(cid: str, number: str, tone: int) -> tuple[str, str]:
            """Call `number` through the edge; (MiniVoice call ID, node) once it is in ROOM."""
            known = set(mv_id.values())
            recs[cid] = tmp_path / f"{cid}.wav"
            dialed[cid] = number
            phone.call(cid, f"sip:{number}@{edge}", account="alice", tone_hz=tone,
                       record=str(recs[cid]))
            media_at[cid] = (await phone.wait("media", cid, timeout=20))["at"]

            async def new_member() -> tuple[str, str] | None:
                fresh = {k: v for k, v in (await room_nodes(c, "gw-a")).items()
                         if k not in known}
                return next(iter(fresh.items())) if len(fresh) == 1 else None
            return await eventually(new_member, timeout=20, interval=0.3,
                                    message=f"{cid} ({number}) never listed in {ROOM}")

        mv_id["x"], node_of["x"] = await place("x", NUMBER, tones["x"])
        for n, number in enumerate(steering_order(NUMBER, edge)):
            cid = f"y{n}"
            call_id, node = await place(cid, number, tones["y"])
            if node != node_of["x"]:
                mv_id["y"], node_of["y"] = call_id, node
                recs["y"], dialed["y"] = recs.pop(cid), dialed.pop(cid)
                media_at["y"] = media_at[cid]
                ycid = cid
                break
            tried.append(call_id)  # landed with x: hung up, the next variant is tried
            phone.hangup(cid)
            await phone.wait("ended", cid, timeout=15)
            mv_id[cid] = call_id
        else:
            raise AssertionError(f"every variant of {NUMBER} landed on {node_of['x']}")
        print(f"\nsteering: x dialed {NUMBER} -> {node_of['x']}, y dialed {dialed['y']} -> "
              f"{node_of['y']} after {len(tried)} variant(s) on the same node")
        on = {node_of[cid]: cid for cid in ("x", "y")}  # node -> phone call
        assert set(on) == {"gw-a", "gw-b"}, node_of
        pcid = {"x": "x", "y": ycid}  # our name -> the phonebank's call id

        # Either node's API lists both callers, each with its node (the cascade leg is none).
        want = {mv_id["x"]: node_of["x"], mv_id["y"]: node_of["y"]}
        for node in SERVICE:
            await eventually(functools.partial(_lists, c, node, want), timeout=15,
                             interval=0.3, message=f"{node} does not list both callers")
        loop = asyncio.get_running_loop()
        both_at = loop.time()
        await asyncio.sleep(5.0)  # both talking: measured over this window below
        talked_until = loop.time()

        # gateway-b dies (SIGKILL): the caller on gateway-a stays up.
        c.run("kill", "gateway-b")
        killed_at = loop.time()
        a_call = on["gw-a"]
        # past lease_s + tick_s: gateway-b's lease on the room (if it owned it) has lapsed
        # and gateway-a has taken it over
        cl = CONFIG["cluster"]
        await asyncio.sleep(cl.get("lease_s", 4) + cl.get("tick_s", 1) + 1.0)
        assert phone.find("ended", pcid[a_call]) is None, phone.events[-10:]
        status, rec = await api(c, "gw-a", f"/v1/calls/{mv_id[a_call]}")
        assert status == 200 and rec["status"] == "in-progress" and rec["ended_at"] is None, rec
        members = await room_nodes(c, "gw-a")
        assert members.get(mv_id[a_call]) == "gw-a", members
        status, health = await api(c, "gw-a", "/healthz")
        assert status == 200, health
        # the room lives on gateway-a: it owned it, or took it over from gateway-b
        assert "conference.owner room=room-1001 customer_id=cust_example node=gw-a" in \
            c.logs("gateway-a"), c.logs("gateway-a")[-3000:]
        still_up_s = loop.time() - killed_at

        phone.hangup(pcid[a_call])
        await phone.wait("ended", pcid[a_call], timeout=15)
        phone.hangup(pcid[on["gw-b"]])  # its node is gone: whatever the edge answers
        await phone.wait("ended", pcid[on["gw-b"]], timeout=40)
    finally:
        await phone.close()

    # What each caller heard while both were in the room: the other's tone, through the
    # cascade leg between the nodes; never its own.
    heard = {}
    for cid in ("x", "y"):
        t0 = media_at[cid]
        heard[cid] = levels(recs[cid], *tones.values(), start_s=both_at - t0 + 1.0,
                            end_s=talked_until - t0)
    print(f"levels heard (dBFS): {heard}; caller on gw-a up {still_up_s:.1f} s after the kill")
    b_call, a_call = on["gw-b"], on["gw-a"]
    assert heard[b_call][tones[a_call]] > HEARD_DB, f"gw-b's caller does not hear gw-a's: {heard}"
    assert heard[a_call][tones[b_call]] > HEARD_DB, f"gw-a's caller does not hear gw-b's: {heard}"
    for cid in ("x", "y"):
        other_hz = tones["y" if cid == "x" else "x"]
        assert heard[cid][other_hz] - heard[cid][tones[cid]] >= 25, f"{cid} hears itself: {heard}"

    # The app got the webhooks of the callers (cascade legs send none). The call on the dead
    # gateway-b gets its call.completed from gateway-a (gateway_lost) once gateway-b's
    # liveness record in Redis has expired.
    kinds: dict[str, list[str]] = {}

    def completed() -> bool:
        kinds.clear()
        for e in app_events(c):
            kinds.setdefault(e["call"]["id"], []).append(e["event"])
        return all(kinds.get(i, [])[-1:] == ["call.completed"]
                   for i in [mv_id[a_call], mv_id[b_call], *tried])
    await eventually(lambda: asyncio.to_thread(completed), timeout=30, interval=0.5,
                     message=lambda: f"webhooks: {kinds}")
    events = app_events(c)
    assert set(kinds) == {mv_id["x"], mv_id["y"], *tried}, kinds
    for call_id in (mv_id[a_call], *tried):
        assert kinds[call_id] == ["call.initiated", "call.answered", "call.completed"], kinds
    assert kinds[mv_id[b_call]] == ["call.initiated", "call.answered", "call.completed"], kinds
    [lost] = [e for e in events if e["call"]["id"] == mv_id[b_call]
              and e["event"] == "call.completed"]
    assert lost["data"]["hangup_cause"] == "gateway_lost", lost
    assert {e["call"]["from"] for e in events} == {"alice"}
    by_id = {e["call"]["id"]: e["call"]["to"] for e in events}
    assert by_id[mv_id["x"]] == NUMBER and by_id[mv_id["y"]] == dialed["y"], by_id

    edge_log = c.logs("edge")
    assert "edge.registered" in edge_log and "user=alice" in edge_log, edge_log[-3000:]
    for service in ("gateway-a", "gateway-b"):
        log = c.logs(service)
        assert "Traceback" not in log, log[-6000:]
    print(f"test body {time.monotonic() - t_start:.0f} s")


async def _lists(c: Compose, node: str, want: dict[str, str]) -> bool:
    """`node`'s API lists exactly `want` (call ID -> node) in ROOM."""
    return await room_nodes(c, node) == want
