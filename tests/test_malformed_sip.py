"""Malformed and hostile SIP straight at the gateway's own port: nothing crashes, the
engine keeps turning, and a normal call still works afterwards."""

from __future__ import annotations

import asyncio
import random
import re
import socket
from pathlib import Path

import pytest

from tests.harness import AppServer, GatewayProc, Phonebank

pytestmark = pytest.mark.sip

TORTURE = Path(__file__).resolve().parent / "fixtures" / "rfc4475"


_TOP_VIA = re.compile(rb"^((?:Via|v)[ \t]*:[ \t]*SIP/2\.0/UDP[ \t]+)([^;\s]+)",
                      re.IGNORECASE | re.MULTILINE)
_FOREIGN_IP = re.compile(rb"192\.0\.2\.\d+|255\.255\.255\.255")


def torture_messages(reply_port: int) -> list[bytes]:
    """The RFC 4475 messages, with every literal address pointed at loopback (nothing may
    leave this machine, not even an answer) and the top UDP Via at our socket, so the
    answers come back to us. The malformations themselves are untouched."""
    files = sorted(TORTURE.glob("*.dat"))
    assert len(files) >= 40, f"RFC 4475 fixtures missing at {TORTURE}"
    out = []
    for f in files:
        msg = _FOREIGN_IP.sub(b"127.0.0.1", f.read_bytes())
        msg = _TOP_VIA.sub(rb"\g<1>127.0.0.1:" + str(reply_port).encode(), msg, count=1)
        out.append(msg)
    return out


def garbage(rng: random.Random) -> list[bytes]:
    return [
        b"",
        b"\x00" * 64,
        bytes(rng.randrange(256) for _ in range(1400)),
        b"INVITE sip:1001@127.0.0.1 SIP/2.0\r\n\r\n",  # no headers at all
        b"INVITE sip:1001@127.0.0.1 SIP/2.0\r\nContent-Length: 99999\r\n\r\nv=0",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKnope\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\n" + b"X-Long: " + b"a" * 60000 + b"\r\n\r\n",
        b"\r\n\r\n",  # keep-alive
    ]


async def test_torture_and_garbage_do_not_hurt(
    gateway: GatewayProc, app: AppServer, phones: Phonebank
) -> None:
    # Calls are rejected before answer: no media and no in-dialog request is ever sent to
    # the (fictitious) hosts named in the messages.
    app.answer = lambda p: {"actions": [{"hangup": {"reason": "torture"}}]}
    rng = random.Random(4475)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    messages = torture_messages(udp.getsockname()[1]) + garbage(rng)
    udp.settimeout(0.05)
    answered = 0
    for msg in messages:
        udp.sendto(msg[:65000], ("127.0.0.1", gateway.sip_port))
        try:
            while True:
                udp.recv(65535)
                answered += 1
        except (TimeoutError, OSError):
            pass
    udp.close()
    for msg in messages[:20]:  # and over TCP, one connection per message
        _, writer = await asyncio.open_connection("127.0.0.1", gateway.sip_port)
        writer.write(msg)
        await writer.drain()
        writer.close()
    assert answered > 10, "valid torture messages got no answer at all"
    await asyncio.sleep(0.5)
    status, health = await gateway.get("/healthz")
    assert status == 200, health
    # a real call after the abuse
    app.answer = lambda p: {"actions": [{"conference": {"room": "after"}}]}
    phones.call("ok", gateway.uri("1001"))
    media = await phones.wait("media", "ok")
    assert media["codec"]
    phones.hangup("ok")
    await phones.wait("ended", "ok")
    assert gateway.proc.poll() is None
