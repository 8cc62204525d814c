"""RFC 4475 torture messages at the edge, from an untrusted and from a trusted source: nothing
crashes, valid messages are answered, invalid ones rejected or dropped, nothing is relayed
off this machine, and a normal call works afterwards."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest

from tests.edge_stack import SipClient, start_stack
from tests.harness import ROOT, AppServer, app_config

pytestmark = pytest.mark.sip

TORTURE = ROOT / "tests" / "fixtures" / "rfc4475"
# Any top Via, whatever its transport or host: answers must come back to our socket.
# (\s also spans folded lines, as in wsinv.dat)
_TOP_VIA = re.compile(rb"^((?:Via|v)\s*:\s*)SIP\s*/\s*[\d.]+\s*/\s*\w+\s+([^;\s]+)",
                      re.IGNORECASE | re.MULTILINE)
_FOREIGN_IP = re.compile(rb"192\.0\.2\.\d+|255\.255\.255\.255")


def torture(reply_port: int) -> list[tuple[str, bytes]]:
    files = sorted(TORTURE.glob("*.dat"))
    assert len(files) >= 40, f"RFC 4475 fixtures missing at {TORTURE}"
    out = []
    for f in files:
        msg = _FOREIGN_IP.sub(b"127.0.0.1", f.read_bytes())
        # Host names (example.com, ...) stay: the edge must neither resolve nor relay to them.
        msg = _TOP_VIA.sub(rb"\g<1>SIP/2.0/UDP 127.0.0.1:" + str(reply_port).encode(), msg,
                           count=1)
        out.append((f.name, msg))
    return out


METHODS = {f.name: f.read_bytes().split(b" ", 1)[0] for f in TORTURE.glob("*.dat")}
# Section 3.1.2 of RFC 4475, the invalid messages that are INVITEs.
INVALID_INVITES: tuple[str, ...] = (
    "badinv01.dat", "clerr.dat", "ncl.dat", "mcl01.dat", "ltgtruri.dat", "lwsruri.dat",
    "lwsstart.dat", "trws.dat", "escruri.dat", "baddate.dat", "badvers.dat", "mismatch02.dat",
    "quotbal.dat", "lwsdisp.dat")
INVALID_INVITES = tuple(n for n in INVALID_INVITES if METHODS.get(n) == b"INVITE")


def blast(source: str, port: int) -> dict[str, list[int]]:
    """Send every message over UDP from `source`; the status codes that came back, by file."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    answers: dict[str, list[int]] = {}
    for name, msg in torture(sock.getsockname()[1]):
        sock.sendto(msg[:65000], ("127.0.0.1", port))
        sock.settimeout(0.15)
        codes = answers.setdefault(name, [])
        try:
            while True:
                data = sock.recv(65535)
                if data.startswith(b"SIP/2.0 "):
                    codes.append(int(data.split(b" ", 2)[1]))
        except (TimeoutError, OSError, ValueError):
            pass
    sock.close()
    return answers


async def test_torture_at_the_edge(tmp_path: Path, app: AppServer) -> None:
    # Calls that reach the gateway are rejected before answer: no media, no BYE to anyone.
    app.answer = lambda p: {"actions": [{"hangup": {"reason": "torture"}}]}
    stack = await start_stack(tmp_path, [app_config(app)], trusted=["127.0.0.5/32"],
                              flood_requests=5000)
    try:
        anyone = await asyncio.to_thread(blast, "127.0.0.51", stack.edge_port)
        await asyncio.sleep(0.5)
        assert app.answers() == [], "an untrusted torture INVITE reached the gateway"
        trunk = await asyncio.to_thread(blast, "127.0.0.5", stack.edge_port)
        for msg in [m for _, m in torture(9)][:20]:  # and over TCP, one connection each
            _, writer = await asyncio.open_connection("127.0.0.1", stack.edge_port)
            writer.write(msg)
            await writer.drain()
            writer.close()

        # valid requests get answers; an untrusted INVITE is challenged or refused, never
        # passed on (tm would have said 100 Trying) and never accepted
        assert sum(1 for codes in anyone.values() if codes) > 25, anyone
        for name, codes in anyone.items():
            if METHODS[name] == b"INVITE":
                assert all(c >= 400 for c in codes), (name, codes)
        # RFC 4475 3.1.2 invalid INVITEs: rejected or dropped, by the edge or behind it
        for name in INVALID_INVITES:
            assert not [c for c in anyone[name] + trunk[name] if 200 <= c < 300], name
        assert sum(1 for codes in trunk.values() if codes) > 25, trunk
        # Trusted INVITEs pass the edge. Behind it, the gateway refuses RFC 4475's SDPs
        # (`a=rtpmap:31 LPC` has no clock rate) with 488 before asking the answer_url, so
        # reaching the gateway shows in its log, not necessarily in app.answers().
        await asyncio.sleep(0.5)
        gw_log = stack.gw.log()
        assert "edge.invite src=127.0.0.5 " in gw_log, "no trusted torture INVITE passed"
        assert app.answers() or re.search(r"INFO invite\.rejected .*source=127\.0\.0\.1:",
                                          gw_log), "no trusted torture INVITE reached the gateway"

        # still alive: Kamailio answers, the gateway is healthy, a normal call works
        c = SipClient(("127.0.0.1", stack.edge_port), "127.0.0.52")
        ok = c.request("OPTIONS", stack.uri("x"), "after")
        assert ok is not None and ok.code == 200
        c.close()
        status, _ = await stack.gw.get("/healthz")
        assert status == 200
        app.answer = lambda p: {"actions": [{"conference": {"room": "after"}}]}
        result = await stack.trunk_calls(tmp_path, calls=1, rate=1, hold_ms=1000,
                                         timeout_s=30)
        assert result.successful == 1, result.errors
        log = stack.gw.log()
        assert "edge.exited" not in log
    finally:
        code = stack.gw.stop()
    log = stack.gw.log()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
