"""Never take the gateway down: the INVITE that aborted it, at the gateway and through the
edge; crash-only recovery after kill -9; outbound legs with many caller IDs."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest

from tests.audio import levels
from tests.checks import two_callers_hear_each_other
from tests.edge_stack import start_stack
from tests.fuzz import messages as msgs
from tests.harness import AppServer, GatewayProc, Phonebank, app_config, start_gateway

pytestmark = pytest.mark.sip

# The SDP of the fuzzing-corpus INVITE that aborted the process (pjlib assertion
# `str_addr->slen < PJ_MAX_HOSTNAME` in pj_sockaddr_in_set_str_addr): c= of ~500 characters.
OVERLONG_C = "c=IN IP4 " + "%n" * 125 + "%x" * 125


def hostile_invite(host: str, port: int, local_port: int, n: int, transport: str = "UDP",
                   source: str = "127.0.0.1") -> bytes:
    d = msgs.Dialog(host, port, local_port, transport=transport, call_id=f"overlong-c-{n}",
                    from_tag=f"oc{n}")
    m = msgs.invite(d, f"oc{n}")
    m.body = m.body.replace("c=IN IP4 127.0.0.1", OVERLONG_C)
    return m.encode().replace(b"127.0.0.1:" + str(local_port).encode(),
                              f"{source}:{local_port}".encode())


def final_status(sock: socket.socket, timeout: float = 5.0) -> int:
    sock.settimeout(timeout)
    while True:
        data = sock.recv(65535)
        m = re.match(rb"SIP/2\.0 (\d{3})", data)
        if m and int(m.group(1)) >= 200:
            return int(m.group(1))


async def send_hostile(host: str, port: int, n: int, source: str = "127.0.0.1") -> int:
    """One overlong-c= INVITE over UDP from `source`; the final status it got."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    try:
        sock.sendto(hostile_invite(host, port, sock.getsockname()[1], n, source=source),
                    (host, port))
        return await asyncio.to_thread(final_status, sock)
    finally:
        sock.close()


async def test_overlong_connection_address_is_refused(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    for n in range(5):  # the process used to abort at the second one
        assert await send_hostile("127.0.0.1", gateway.sip_port, n) == 488
    # and over TCP
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.sip_port)
    local = writer.get_extra_info("sockname")[1]
    writer.write(hostile_invite("127.0.0.1", gateway.sip_port, local, 99, transport="TCP"))
    await writer.drain()
    answer = b""
    while b"SIP/2.0 488" not in answer:
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk, answer
        answer += chunk
    writer.close()
    await asyncio.sleep(0.3)
    assert app.answers() == [] and app.webhooks() == [], "refused offers reach no application"
    assert "invite.rejected" in gateway.log() and "c= address is not an IP literal" in gateway.log()
    status, _ = await gateway.get("/healthz")
    assert status == 200
    await two_callers_hear_each_other(gateway.uri("1001"), app, phones, tmp_path)


async def test_overlong_connection_address_through_the_edge(
    tmp_path: Path, app: AppServer, phones: Phonebank
) -> None:
    # the test phones call from 127.0.0.1: trusted too, so no registration is needed
    stack = await start_stack(tmp_path, [app_config(app)], trusted=["127.0.0.0/8"])
    try:
        for n in range(3):  # from a trusted trunk: relayed to the gateway, refused there
            assert await send_hostile("127.0.0.1", stack.edge_port, n, source="127.0.0.5") == 488
        assert app.answers() == [] and app.webhooks() == []
        assert stack.gw.proc.poll() is None
        status, _ = await stack.gw.get("/healthz")
        assert status == 200
        assert "edge.stopped" not in stack.gw.log()
        # trusted source, so no registration needed for a normal call through the edge
        await two_callers_hear_each_other(stack.uri("1001"), app, phones, tmp_path)
    finally:
        assert stack.gw.stop() == 0


# -- crash-only recovery -------------------------------------------------------------------
async def test_kill_9_then_restart_completes_the_lost_calls_once(
    tmp_path: Path, app: AppServer, phones: Phonebank
) -> None:
    apps = [app_config(app)]
    first = await start_gateway(tmp_path, apps)
    phones.call("a", first.uri("1001"), tone_hz=440)
    phones.call("b", first.uri("1001"), tone_hz=700)
    await phones.wait("media", "a")
    await phones.wait("media", "b")
    initiated = await app.wait_for(lambda: [w for w in app.webhooks()
                                            if w["event"] == "call.answered"][1:])
    assert initiated
    lost = {w["call"]["id"] for w in app.webhooks()}
    assert len(lost) == 2
    first.proc.kill()  # SIGKILL: nothing inside the process runs
    first.proc.wait()
    for cid in ("a", "b"):
        phones.hangup(cid)  # their BYEs go nowhere; these phones are done

    second = await start_gateway(tmp_path, apps)  # same tmp_path: the same SQLite file
    try:
        done = await app.completed(count=2, timeout=15)
        assert {w["call"]["id"] for w in done} == lost
        for w in done:
            assert w["call"]["status"] == "failed"
            assert w["data"]["hangup_cause"] == "gateway_restart"
            assert w["data"]["hangup_by"] == "gateway"
            assert w["data"]["duration_s"] >= 0
            status, record = await second.get(f"/v1/calls/{w['call']['id']}")
            assert status == 200 and record["hangup_cause"] == "gateway_restart", record
        # a new call works meanwhile, on a fresh phonebank
        fresh = await Phonebank.start(tmp_path)
        try:
            await two_callers_hear_each_other(second.uri("1001"), app, fresh, tmp_path)
        finally:
            await fresh.close()
    finally:
        assert second.stop() == 0
    # and a third start owes nothing: exactly once
    third = await start_gateway(tmp_path, apps)
    try:
        await asyncio.sleep(1.5)
        restarts = [w for w in app.webhooks() if w["event"] == "call.completed"
                    and w["data"].get("hangup_cause") == "gateway_restart"]
        assert len(restarts) == 2, restarts
    finally:
        assert third.stop() == 0
    assert "Traceback" not in second.log() + third.log()


# -- outbound legs: many caller IDs at once ----------------------------------------------
async def test_transfers_with_eight_caller_ids_all_bridge(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    """Each transfer has its own From. (It used to take one pjsua account per caller ID and
    evict the oldest past 4: deleting an account under its live calls.)"""
    callee = await Phonebank.start(tmp_path)
    try:
        port = callee.find("ready", None)["port"]  # type: ignore[index]
        callee.send(op="listen", mode="answer", tone_hz=700, record=str(tmp_path / "bob"))
        tones = [350, 450, 550, 850, 950, 1100, 1250, 1400]
        app.answer = lambda p: {"actions": [{"transfer": {
            "to": f"sip:bob@127.0.0.1:{port}", "caller_id": "+1555000" + p["call"]["from"][-4:]}}]}
        for i, hz in enumerate(tones):
            cid = f"c{i}"
            phones.call(cid, gateway.uri("1001"), tone_hz=hz, record=str(tmp_path / f"{cid}.wav"),
                        **{"from": f"+1999000{i:04d}"})
            await callee.wait("media", f"in{i + 1}", timeout=15)
        await asyncio.sleep(2.5)  # all eight bridged at once
        incoming = {e["id"]: e["from"] for e in callee.events if e.get("event") == "incoming"}
        await phones.hangup_all([f"c{i}" for i in range(len(tones))], timeout=15)
        for i, hz in enumerate(tones):
            caller_id = f"+1555000{i:04d}"
            leg = next(k for k, v in incoming.items() if caller_id in v)
            heard_by_caller = levels(tmp_path / f"c{i}.wav", 700, start_s=1.0, end_s=3.0)
            heard_by_callee = levels(tmp_path / f"bob-{leg}.wav", hz, skip_s=0.8)
            assert heard_by_caller[700] > -25, (i, heard_by_caller)
            assert heard_by_callee[hz] > -25, (i, heard_by_callee)
    finally:
        await callee.close()
    assert gateway.proc.poll() is None


async def test_large_udp_invite_is_answered(gateway: GatewayProc, app: AppServer) -> None:
    """An INVITE of ~9 KB over UDP (the edge relays such) gets an answer, not silence."""
    app.answer = lambda p: {"actions": [{"hangup": {"reason": "big"}}]}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        d = msgs.Dialog("127.0.0.1", gateway.sip_port, sock.getsockname()[1], call_id="big-1")
        m = msgs.invite(d, "big1")
        m.headers.append(("X-Padding", "p" * 8000))
        data = m.encode()
        assert 8000 < len(data) < 16384
        sock.sendto(data, ("127.0.0.1", gateway.sip_port))
        assert await asyncio.to_thread(final_status, sock) == 603
    finally:
        sock.close()
    assert len(app.answers()) == 1
