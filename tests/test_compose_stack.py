"""The container stack of docker-compose.yml, for real: images built, services up, a softphone
registered at the published edge port, a SIPp trunk call into the same room, audio and
webhooks checked, everything torn down.

Needs Docker and docker-compose (1.29). With no daemon running it starts `dockerd` itself
when it can (root, binary installed), and skips with the reason otherwise. The first build
compiles pjsua2 inside the image (minutes); later builds reuse its layer (`make compose-test`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.audio import levels
from tests.compose_kit import (  # noqa: F401 (docker: a fixture)
    Compose,
    app_events,
    docker,
    free_host_port,
    free_udp_blocks,
    options_ok,
    wait_edge,
)
from tests.harness import ROOT, Phonebank

pytestmark = [pytest.mark.compose, pytest.mark.sip, pytest.mark.timeout(3600)]

PROJECT = "minivoicetest"  # its own compose project: a developer's own stack is left alone
PASSWORD = "compose-test-password-1"
CONFIG = yaml.safe_load((ROOT / "configs" / "compose.yaml").read_text())
EDGE_IP = CONFIG["edge"]["listen"]
SIPP_IP = CONFIG["edge"]["trusted"][0].split("/")[0]


@pytest.fixture(scope="module")
def stack(docker: None) -> Iterator[Compose]:  # noqa: F811
    # Logs kept in the repository's state directory: pytest's temporary directories are pruned.
    work = ROOT / "var" / "compose-test"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MINIVOICE_SIP_PORT": str(free_host_port()),
           "MINIVOICE_TLS_PORT": str(free_host_port()),
           "MINIVOICE_HTTP_PORT": str(free_host_port()),
           "MINIVOICE_APP_PORT": str(free_host_port())}
    # the RTP range, published as it is: a free one, not the file's 10000-10099
    span = CONFIG["sip"]["rtp_port_range"]
    [start] = free_udp_blocks(1, span)
    env["MINIVOICE_RTP_START"], env["MINIVOICE_RTP_END"] = str(start), str(start + span - 1)
    c = Compose(PROJECT, "docker-compose.yml", "minivoice", env, work)
    c.build()
    c.run("down", "-v", "--remove-orphans", check=False)  # leftovers of an interrupted run
    t0 = time.monotonic()
    try:
        c.run("up", "-d", "app", "gateway", "edge", timeout=600)
        wait_edge(c)
        c.up_s = time.monotonic() - t0
        yield c
    finally:
        (work / "compose.log").write_text(c.logs())
        c.run("down", "-v", "--remove-orphans", "-t", "20", check=False, timeout=300)
        print(f"\ncompose: build {c.build_s:.0f} s, up {c.up_s:.0f} s, logs in {work}")


async def _wait_completed(c: Compose, count: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        events = await asyncio.to_thread(app_events, c)
        if sum(e["event"] == "call.completed" for e in events) >= count:
            return events
        assert time.monotonic() < deadline, f"webhooks so far: {events}"
        await asyncio.sleep(0.5)


def test_services_run_unprivileged_and_gateway_sip_stays_on_its_network(stack: Compose) -> None:
    for service in ("gateway", "edge", "app"):
        uid = stack.run("exec", "-T", service, "id", "-u").stdout.strip()
        assert uid != "0", f"{service} runs as root"
    # /proc/net/{udp,tcp}: local address as little-endian hex; the SIP port only on the
    # compose network address, never on 0.0.0.0 (which would be every network, published too)
    host = CONFIG["sip"]["host"]
    want = "".join(f"{int(b):02X}" for b in reversed(host.split("."))) + \
        f":{CONFIG['sip']['port']:04X}"
    table = stack.run("exec", "-T", "gateway", "cat", "/proc/net/udp", "/proc/net/tcp").stdout
    sip = [line.split()[1] for line in table.splitlines()[1:]
           if line.split()[1:2] and line.split()[1].endswith(f":{CONFIG['sip']['port']:04X}")]
    assert sip and set(sip) == {want}, sip
    with urllib.request.urlopen(stack.url("MINIVOICE_HTTP_PORT", "/healthz"), timeout=5) as r:
        assert r.status == 200
    # the edge's three published transports (TCP needs /etc/protocols in the image)
    assert options_ok(int(stack.env["MINIVOICE_SIP_PORT"]), "tcp")
    assert options_ok(int(stack.env["MINIVOICE_TLS_PORT"]), "tls")


def test_gateway_refuses_calls_that_bypass_the_edge(stack: Compose) -> None:
    """The compose network is shared with other containers (and the host): an INVITE sent
    straight to the gateway, not through the edge's authentication, is refused."""
    host, port = CONFIG["sip"]["host"], CONFIG["sip"]["port"]
    me = stack.host_address()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((me, 0))
        s.settimeout(5)
        lport = s.getsockname()[1]
        sdp = (f"v=0\r\no=- 1 1 IN IP4 {me}\r\ns=-\r\nc=IN IP4 {me}\r\nt=0 0\r\n"
               "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
        invite = (f"INVITE sip:1001@{host}:{port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP {me}:{lport};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                  f"From: <sip:mallory@{me}>;tag={secrets.token_hex(4)}\r\n"
                  f"To: <sip:1001@{host}>\r\nCall-ID: {secrets.token_hex(8)}@bypass\r\n"
                  f"CSeq: 1 INVITE\r\nContact: <sip:mallory@{me}:{lport}>\r\n"
                  "Max-Forwards: 70\r\nContent-Type: application/sdp\r\n"
                  f"Content-Length: {len(sdp)}\r\n\r\n{sdp}")
        s.sendto(invite.encode(), (host, port))
        code = 100
        while code < 200:
            code = int(s.recv(65535).split(b" ", 2)[1])
    assert code == 403
    assert "invite.refused" in stack.logs("gateway")
    assert not [e for e in app_events(stack) if e["call"]["from"] == "mallory"]


async def test_phone_and_sipp_trunk_meet_in_a_room(stack: Compose, tmp_path: Path) -> None:
    stack.run("exec", "-T", "gateway", ".venv/bin/python", "-m", "gateway", "users",
              "--config", "configs/compose.yaml", "add", "alice", "--password", PASSWORD)
    # The phone registers and calls at the edge's published port, then talks to the addresses
    # the edge and the gateway write in Record-Route and SDP, on the compose network: so it
    # lives on the host's address there (as a LAN phone on its LAN address), and reaches the
    # published port at that address too (from there, 127.0.0.1 is not a way in).
    host = stack.host_address()
    edge = f"{host}:{stack.env['MINIVOICE_SIP_PORT']}"
    phone = await Phonebank.start(tmp_path, "--bind", host)
    rec = tmp_path / "alice.wav"
    try:
        phone.send(op="register", user="alice", password=PASSWORD, domain=edge,
                   registrar=f"sip:{edge}")
        assert (await phone.wait("registered", None, user="alice", timeout=20))["code"] == 200
        phone.call("a", f"sip:1001@{edge}", account="alice", tone_hz=440, record=str(rec))
        media = await phone.wait("media", "a", timeout=20)
        await asyncio.sleep(1.0)
        # The trunk call: SIPp from its trusted address, a 1000 Hz tone, 6 s in room-1001.
        loop = asyncio.get_running_loop()
        started = loop.time()
        sipp = await asyncio.to_thread(
            stack.run, "--profile", "load", "run", "--rm", "sipp", timeout=180,
            env={"SIPP_CALLS": "1", "SIPP_LIMIT": "1", "SIPP_RATE": "1", "SIPP_HOLD_MS": "6000",
                 "SIPP_TONE_HZ": "1000", "SIPP_NUMBER": "1001"})
        ended = loop.time()
        assert "Successful call" in sipp.stdout + sipp.stderr or sipp.returncode == 0, sipp
        await asyncio.sleep(0.5)
        phone.hangup("a")
        await phone.wait("ended", "a", timeout=15)
    finally:
        await phone.close()

    # What the phone heard while SIPp was in the room: SIPp's tone, never its own.
    t0 = media["at"]
    heard = levels(rec, 1000, 440, start_s=started - t0 + 2.5, end_s=ended - t0 - 1.5)
    assert heard[1000] > -40 and heard[440] < -50, heard

    events = await _wait_completed(stack, count=2)
    by_call: dict[str, list[str]] = {}
    for e in events:
        by_call.setdefault(e["call"]["id"], []).append(e["event"])
    assert len(by_call) == 2, by_call
    for kinds in by_call.values():
        assert kinds == ["call.initiated", "call.answered", "call.completed"], by_call
    callers = {e["call"]["from"] for e in events if e["event"] == "call.completed"}
    assert "alice" in callers, callers
    assert all(e["call"]["to"] == "1001" for e in events)

    edge_log = stack.logs("edge")
    assert "edge.registered" in edge_log and "user=alice" in edge_log, edge_log[-3000:]
    assert f"edge.invite src={SIPP_IP} user=- to=1001" in edge_log, edge_log[-3000:]
