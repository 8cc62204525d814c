"""Probe legs: a minimal SIP UAC and RTP endpoint, written for measuring.

SIPp carries the bulk load, but it cannot tell us *when* a tone burst came out
of the gateway, nor whether each of 250 callers in one room hears anything. A
probe leg places a real SIP call over UDP on loopback, sends G.711 A-law RTP
every 20 ms (silence or a tone burst, chosen per packet), and timestamps and
grades every packet it receives. All legs share one SIP socket and one 20 ms
ticker, so hundreds of legs stay cheap enough to run next to the gateway.

Only what the gateway needs is implemented: INVITE (with retransmission),
ACK, BYE, and answering the gateway's own BYE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import g711

log = logging.getLogger("bench.probe")

FRAME = 160  # samples per 20 ms packet at 8 kHz
PTIME_S = 0.020
LOUD = 8  # a packet whose peak |sample| >= 8*256 (about -24 dBFS) carries tone, not noise


class SipError(Exception):
    pass


class Refused(SipError):
    """The INVITE got a final response >= 300. `reason`: its reason phrase; `warning`: its
    Warning header if any (the gateway names its cause there, e.g. `399 minivoice
    "answer_url_error"`: several causes share SIP 500), so a report says why, not only that."""

    def __init__(self, leg: str, code: int, reason: str, warning: str = "",
                 call_id: str = "") -> None:
        self.leg, self.code, self.reason, self.warning = leg, code, reason, warning
        why = f"{code} {reason}".strip() + (f" (Warning: {warning})" if warning else "")
        # the Call-ID finds the call in the gateway's log (its `invite` line: sip_call_id)
        super().__init__(f"{leg}: INVITE answered {why}"
                         + (f" [Call-ID {call_id}]" if call_id else ""))


MAX_REPORTED = 200  # characters of a reason phrase or Warning kept: they go into reports


def refusal(leg: str, resp: str) -> Refused:
    """A Refused from a final response's text (status line and headers)."""
    status = resp.split("\r\n", 1)[0].split(" ", 2)
    reason = status[2] if len(status) > 2 else ""
    printable = "".join(c for c in reason if c.isprintable())[:MAX_REPORTED]
    warning = "".join(c for c in _header(resp, "Warning") if c.isprintable())[:MAX_REPORTED]
    call_id = "".join(c for c in (_header(resp, "Call-ID") or _header(resp, "i"))
                      if c.isprintable())[:MAX_REPORTED]
    return Refused(leg, int(status[1]), printable, warning, call_id)


@dataclass
class Received:
    """What one leg heard: per packet arrival time and peak (for timing and grading)."""

    arrivals: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    keep_payloads: bool = False

    def add(self, at: float, payload: bytes) -> None:
        self.arrivals.append(at)
        self.peaks.append(max(payload.translate(g711.loudness_map()), default=0))
        if self.keep_payloads:
            self.payloads.append(payload)


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, leg: Leg) -> None:
        self.leg = leg

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # 12-byte RTP header, no CSRC/extension from pjmedia's G.711 streams
        if len(data) > 12 and self.leg.listening:
            self.leg.rx.add(time.monotonic(), data[12:])


@dataclass
class Leg:
    """One probe call. `payload(leg, seq)` picks what it sends in packet `seq`."""

    name: str
    dialed: str
    payload: Callable[[Leg, int], bytes]
    call_id: str = field(default_factory=lambda: secrets.token_hex(12) + "@bench")
    tag: str = field(default_factory=lambda: secrets.token_hex(6))
    rtp_sock: socket.socket | None = None
    transport: asyncio.DatagramTransport | None = None
    remote_rtp: tuple[str, int] | None = None
    remote_tag: str = ""
    setup_ms: float | None = None
    rx: Received = field(default_factory=Received)
    listening: bool = True
    seq: int = 0
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    sent_at: dict[int, float] = field(default_factory=dict)
    ended_by_gateway: bool = False

    @property
    def rtp_port(self) -> int:
        assert self.rtp_sock is not None
        return int(self.rtp_sock.getsockname()[1])

    def send_next(self, now: float) -> None:
        if self.transport is None or self.remote_rtp is None:
            return
        body = self.payload(self, self.seq)
        header = struct.pack("!BBHII", 0x80, 8, self.seq & 0xFFFF, (self.seq * FRAME) & 0xFFFFFFFF,
                             self.ssrc)
        self.transport.sendto(header + body, self.remote_rtp)
        if body is not _SILENT_FRAME:
            self.sent_at[self.seq] = now  # only non-silent packets are worth remembering
        self.seq += 1


_SILENT_FRAME = bytes([g711.SILENCE]) * FRAME


def silence(leg: Leg, seq: int) -> bytes:
    return _SILENT_FRAME


class _SipProtocol(asyncio.DatagramProtocol):
    def __init__(self, ua: ProbeUA) -> None:
        self.ua = ua

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.ua.on_message(data.decode(errors="replace"), addr)


def _header(msg: str, name: str) -> str:
    m = re.search(rf"^{name}\s*:\s*(.*)$", msg, re.IGNORECASE | re.MULTILINE)
    return m.group(1).strip() if m else ""


class ProbeUA:
    """Many probe legs on one SIP socket, one RTP ticker."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.legs: dict[str, Leg] = {}
        self._waiters: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._sip: asyncio.DatagramTransport | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _SipProtocol(self), local_addr=(self.host, 0))
        self._sip = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        self._ticker = asyncio.create_task(self._tick())

    async def close(self) -> None:
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for leg in self.legs.values():
            if leg.transport:
                leg.transport.close()
        if self._sip:
            self._sip.close()

    # -- RTP -----------------------------------------------------------------------
    async def _tick(self) -> None:
        # Absolute deadlines, so the 20 ms cadence does not drift with loop latency.
        start = time.monotonic()
        n = 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, start + n * PTIME_S - time.monotonic()))
            now = time.monotonic()
            for leg in list(self.legs.values()):
                leg.send_next(now)

    async def _open_rtp(self, leg: Leg) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        sock.bind((self.host, 0))
        leg.rtp_sock = sock
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _RtpProtocol(leg), sock=sock)
        leg.transport = transport

    # -- SIP -----------------------------------------------------------------------
    def _send(self, text: str) -> None:
        assert self._sip is not None
        self._sip.sendto(text.replace("\n", "\r\n").encode(), self.target)

    def _request(self, leg: Leg, method: str, cseq: int, branch: str, body: str = "") -> str:
        th, tp = self.target
        to_tag = f";tag={leg.remote_tag}" if leg.remote_tag and method != "INVITE" else ""
        ctype = "Content-Type: application/sdp\n" if body else ""
        return (f"{method} sip:{leg.dialed}@{th}:{tp} SIP/2.0\n"
                f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{branch};rport\n"
                f"From: <sip:probe-{leg.name}@{self.host}:{self.port}>;tag={leg.tag}\n"
                f"To: <sip:{leg.dialed}@{th}:{tp}>{to_tag}\n"
                f"Call-ID: {leg.call_id}\nCSeq: {cseq} {method}\n"
                f"Contact: <sip:probe@{self.host}:{self.port}>\nMax-Forwards: 70\n"
                f"User-Agent: MiniVoice bench probe\n{ctype}"
                f"Content-Length: {len(body.replace(chr(10), chr(13) + chr(10)).encode())}\n\n"
                + body)

    def _sdp(self, leg: Leg) -> str:
        return (f"v=0\no=probe 1 1 IN IP4 {self.host}\ns=-\nc=IN IP4 {self.host}\nt=0 0\n"
                f"m=audio {leg.rtp_port} RTP/AVP 8\na=rtpmap:8 PCMA/8000\na=ptime:20\n"
                "a=sendrecv\n")

    async def _transaction(self, leg: Leg, method: str, text: str, timeout_s: float) -> str:
        """Send with RFC 3261 timer A/E doubling from 500 ms; return the final response."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[(leg.call_id, method)] = fut
        deadline = time.monotonic() + timeout_s
        interval = 0.5
        try:
            while True:
                self._send(text)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(fut), interval)
                if time.monotonic() > deadline:
                    raise SipError(f"{method} timed out for {leg.name} [Call-ID {leg.call_id}]")
                interval = min(interval * 2, 4.0)
        finally:
            self._waiters.pop((leg.call_id, method), None)

    async def call(self, leg: Leg, timeout_s: float = 32.0) -> None:
        """INVITE until 200 OK, ACK, then start sending RTP to the gateway."""
        await self._open_rtp(leg)
        self.legs[leg.call_id] = leg
        branch = secrets.token_hex(8)
        invite = self._request(leg, "INVITE", 1, branch, self._sdp(leg))
        t0 = time.monotonic()
        resp = await self._transaction(leg, "INVITE", invite, timeout_s)
        leg.setup_ms = (time.monotonic() - t0) * 1000
        code = int(resp.split(" ", 2)[1])
        to = _header(resp, "To") or _header(resp, "t")
        m = re.search(r";tag=([^;>\s]+)", to)
        leg.remote_tag = m.group(1) if m else ""
        if code >= 300:
            self._send(self._request(leg, "ACK", 1, branch))
            raise refusal(leg.name, resp)
        self._send(self._request(leg, "ACK", 1, secrets.token_hex(8)))
        sdp = resp.split("\r\n\r\n", 1)[-1]
        c = re.search(r"^c=IN IP4 (\S+)", sdp, re.MULTILINE)
        a = re.search(r"^m=audio (\d+)", sdp, re.MULTILINE)
        if not (c and a):
            raise SipError(f"{leg.name}: no audio in the answer SDP")
        leg.remote_rtp = (c.group(1), int(a.group(1)))

    async def hangup(self, leg: Leg, timeout_s: float = 8.0) -> None:
        leg.remote_rtp = None  # stop sending first: the gateway tears the stream down
        if leg.ended_by_gateway:
            return
        with contextlib.suppress(SipError):
            await self._transaction(leg, "BYE", self._request(
                leg, "BYE", 2, secrets.token_hex(8)), timeout_s)

    def on_message(self, msg: str, addr: tuple[str, int]) -> None:
        first = msg.split("\r\n", 1)[0]
        call_id = _header(msg, "Call-ID") or _header(msg, "i")
        if first.startswith("SIP/2.0 "):
            code = int(first.split(" ", 2)[1])
            method = _header(msg, "CSeq").split()[-1].upper()
            leg = self.legs.get(call_id)
            if leg is not None and method == "INVITE" and code == 200 and (
                    (call_id, "INVITE") not in self._waiters):
                # a retransmitted 200: our ACK was lost, send it again
                self._send(self._request(leg, "ACK", 1, secrets.token_hex(8)))
            fut = self._waiters.get((call_id, method))
            if fut is not None and not fut.done() and code >= 200:
                fut.set_result(msg)
            return
        # A request from the gateway (its BYE when it ends the call): answer 200.
        method = first.split(" ", 1)[0]
        leg = self.legs.get(call_id)
        if method == "BYE" and leg is not None:
            leg.ended_by_gateway = True
            leg.remote_rtp = None
        if method != "ACK":
            vias = re.findall(r"^(?:Via|v)\s*:.*$", msg, re.IGNORECASE | re.MULTILINE)
            copy = [h for h in ("From", "To", "Call-ID", "CSeq") if _header(msg, h)]
            lines = ["SIP/2.0 200 OK", *vias, *(f"{h}: {_header(msg, h)}" for h in copy),
                     "Content-Length: 0", "", ""]
            assert self._sip is not None
            self._sip.sendto("\r\n".join(lines).encode(), addr)
