"""RTP from a second source to a live call's port is neither heard in the room nor sent the
room's mix (pjmedia latches a stream's address only at its start; see config_site.h)."""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from bench import g711
from tests.audio import levels
from tests.harness import AppServer, GatewayProc, Phonebank

pytestmark = pytest.mark.sip


def udp_ports(pid: int) -> set[int]:
    out = subprocess.run(["ss", "-H", "-uanp"], capture_output=True, text=True, timeout=10).stdout
    ports = set()
    for line in out.splitlines():
        if f"pid={pid}," in line:
            m = re.search(r"\s\S+:(\d+)\s+\S+\s+users:", line)
            if m:
                ports.add(int(m.group(1)))
    return ports


def rogue_rtp(ports: list[int], seconds: float) -> int:
    """Bursts of a 1 kHz A-law tone to every port (15 packets per 20 ms each, more than
    pjmedia's old NAT probation of 10); returns how many packets came back to the rogue."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    received, seq, ts = 0, 0, 0
    ssrc = 0x0BADF00D
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(15):
            payload = g711.encode(g711.tone(1000, 160, start=ts))
            packet = struct.pack("!BBHII", 0x80, 8, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload
            for port in ports:
                sock.sendto(packet, ("127.0.0.1", port))
            seq, ts = seq + 1, ts + 160
        try:
            while True:
                sock.recv(2048)
                received += 1
        except BlockingIOError:
            pass
        time.sleep(0.02)
    sock.close()
    return received


async def test_second_rtp_source_is_neither_heard_nor_answered(
    gateway: GatewayProc, app: AppServer, tmp_path: Path
) -> None:
    app.answer = lambda p: {"actions": [{"conference": {"room": "private"}}]}
    phones = await Phonebank.start(tmp_path, "--codec", "PCMA")
    try:
        before = udp_ports(gateway.proc.pid)
        recs = {cid: tmp_path / f"{cid}.wav" for cid in ("a", "b")}
        phones.call("a", gateway.uri(), tone_hz=440, record=str(recs["a"]))
        phones.call("b", gateway.uri(), tone_hz=700, record=str(recs["b"]))
        for cid in recs:
            await phones.wait("media", cid)
        await asyncio.sleep(1.0)  # both streams have latched on their phones' addresses
        media_ports = sorted(udp_ports(gateway.proc.pid) - before)
        assert len(media_ports) >= 4, media_ports  # RTP + RTCP of two calls
        received = await asyncio.to_thread(rogue_rtp, media_ports, 3.0)
        await asyncio.sleep(0.5)
        await phones.hangup_all(recs)
    finally:
        await phones.close()
    assert received == 0, f"the rogue source was sent {received} packets of the mix"
    for cid, other in (("a", 700), ("b", 440)):
        heard = levels(recs[cid], other, 1000, skip_s=1.5, tail_s=0.8)
        assert heard[other] > -25, (cid, heard)  # the room still works
        assert heard[1000] < -45, (cid, heard)  # and the rogue is not heard


async def test_each_stream_gets_a_random_port(gateway: GatewayProc, app: AppServer,
                                              tmp_path: Path) -> None:
    """Not counted up from the last call's: a live call's port is not one guess away."""
    app.answer = lambda p: {"actions": [{"conference": {"room": "ports"}}]}
    phones = await Phonebank.start(tmp_path)
    try:
        before = udp_ports(gateway.proc.pid)
        for i in range(6):
            phones.call(f"p{i}", gateway.uri())
            await phones.wait("media", f"p{i}")
        new = sorted(udp_ports(gateway.proc.pid) - before)
        rtp = [p for p in new if p % 2 == 0]
        await phones.hangup_all(f"p{i}" for i in range(6))
    finally:
        await phones.close()
    assert len(rtp) >= 6, rtp
    steps = {b - a for a, b in itertools.pairwise(rtp)}
    assert steps != {2}, f"sequential RTP ports: {rtp}"
