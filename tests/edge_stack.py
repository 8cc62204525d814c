"""Test helpers for the SIP edge: the whole stack (Kamailio + gateway) on loopback, and a tiny
digest-speaking SIP client to poke at it. Used by tests/test_edge*.py."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import sipp
from bench.gateway import free_port
from tests.harness import ROOT, GatewayProc, rtp_block, start_gateway


@dataclass
class Stack:
    gw: GatewayProc
    edge_port: int  # UDP and TCP
    tls_port: int
    users_db: Path
    config: Path
    runtime_dir: Path

    def uri(self, user: str = "1001") -> str:
        return f"sip:{user}@127.0.0.1:{self.edge_port}"

    def edge_log(self) -> list[str]:
        return [line for line in self.gw.log().splitlines() if " edge." in line]

    async def trunk_calls(self, tmp: Path, *, calls: int, rate: int, hold_ms: int,
                          timeout_s: int) -> sipp.SippResult:
        """SIPp as the trusted trunk (from 127.0.0.5, listed in edge.trusted): calls to 1001
        without authentication, each sending a quiet 1 kHz tone."""
        tone = sipp.alaw_tone(tmp / "tone.wav", 1000, seconds=1.0, volume=0.02)
        scenario = tmp / "uac_trunk.xml"
        scenario.write_text((ROOT / "edge" / "sipp" / "uac_trunk.xml").read_text()
                            .replace("@AUDIO@", str(tone)))
        return await sipp.run(tmp, f"127.0.0.1:{self.edge_port}", scenario, service="1001",
                              calls=calls, rate=rate, hold_ms=hold_ms, media_port=rtp_block(),
                              timeout_s=timeout_s, extra=("-i", "127.0.0.5"))

    async def edge_logged(self, *parts: str, timeout: float = 5.0) -> str:
        """The first edge log line containing every one of `parts` (Kamailio's lines reach
        the gateway's log a moment after its replies reach us)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.edge_log():
                if all(p in line for p in parts):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no edge log line with {parts}:\n"
                                     + "\n".join(self.edge_log()[-20:]))
            await asyncio.sleep(0.1)


async def start_stack(tmp: Path, applications: list[dict[str, Any]],
                      **edge: Any) -> Stack:
    """The gateway behind Kamailio, both as `python -m gateway serve` would run them."""
    port, tls = free_port(), free_port()
    section = {"enabled": True, "listen": "127.0.0.1", "udp_port": port, "tcp_port": port,
               "tls_port": tls, "users_db": str(tmp / "users.db"),
               "runtime_dir": str(tmp / "edge"), "relay_networks": ["127.0.0.0/8"],
               "children": 2, **edge}
    gw = await start_gateway(tmp, applications, edge=section)
    config = next(tmp.glob(f"gateway-{gw.sip_port}.yaml"))
    return Stack(gw, port, tls, tmp / "users.db", config, tmp / "edge")


# ---------------------------------------------------------------------- digest client ---
def _h(alg: str, text: str) -> str:
    data = text.encode()
    if alg == "SHA-256":
        return hashlib.sha256(data).hexdigest()
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass
class Response:
    code: int
    text: str

    def headers(self, name: str) -> list[str]:
        return re.findall(rf"^{name}:\s*(.*?)\r?$", self.text, re.IGNORECASE | re.MULTILINE)

    def challenges(self) -> dict[str, dict[str, str]]:
        """algorithm -> params of each WWW-/Proxy-Authenticate header."""
        out = {}
        for value in self.headers("WWW-Authenticate") + self.headers("Proxy-Authenticate"):
            params = dict(re.findall(r'(\w+)="?([^",]*)"?', value))
            out[params.get("algorithm", "MD5")] = params
        return out


@dataclass
class SipClient:
    """One UDP socket (or TCP connection, `tcp=True`) from a chosen loopback source address
    (127.0.0.x is a distinct source for the edge's bans)."""

    target: tuple[str, int]
    source: str = "127.0.0.1"
    tcp: bool = False
    sock: socket.socket = field(init=False)
    cseq: int = 0
    _buf: bytes = b""

    def __post_init__(self) -> None:
        kind = socket.SOCK_STREAM if self.tcp else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind((self.source, 0))
        if self.tcp:
            self.sock.connect(self.target)
        self.port = self.sock.getsockname()[1]

    def _recv_message(self) -> str:
        """One SIP message: a datagram, or the next Content-Length-framed one on TCP."""
        if not self.tcp:
            return self.sock.recv(65535).decode(errors="replace")
        while True:
            head, sep, rest = self._buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"^content-length:\s*(\d+)", head, re.IGNORECASE | re.MULTILINE)
                size = int(m.group(1)) if m else 0
                if len(rest) >= size:
                    self._buf = rest[size:]
                    return (head + sep + rest[:size]).decode(errors="replace")
            data = self.sock.recv(65535)
            if not data:
                raise ConnectionError("the edge closed the connection")
            self._buf += data

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, ruri: str, user: str, *, extra: str = "",
                call_id: str | None = None, body: str = "", timeout: float = 2.0,
                to_user: str | None = None, to_tag: str | None = None,
                wait: bool = True, contact: str | None = None) -> Response | None:
        """Send one request; the final response, or None if nothing came back (banned)."""
        self.cseq += 1
        host = f"{self.source}:{self.port}"
        branch = "z9hG4bK" + secrets.token_hex(8)
        msg = (f"{method} {ruri} SIP/2.0\r\n"
               f"Via: SIP/2.0/{'TCP' if self.tcp else 'UDP'} {host};branch={branch};rport\r\n"
               f"Max-Forwards: 70\r\n"
               f"From: <sip:{user}@127.0.0.1>;tag={secrets.token_hex(4)}\r\n"
               f"To: <sip:{to_user or user}@127.0.0.1>{';tag=' + to_tag if to_tag else ''}\r\n"
               f"Call-ID: {call_id or secrets.token_hex(10)}\r\n"
               f"CSeq: {self.cseq} {method}\r\n"
               f"Contact: {contact or f'<sip:{user}@{host}>'}\r\n{extra}"
               + ("Content-Type: application/sdp\r\n" if body else "")
               + f"Content-Length: {len(body)}\r\n\r\n{body}")
        if self.tcp:
            self.sock.sendall(msg.encode())
        else:
            self.sock.sendto(msg.encode(), self.target)
        if not wait:
            return None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self._recv_message()
            except TimeoutError:
                return None
            code = int(data.split(" ", 2)[1]) if data.startswith("SIP/2.0 ") else 0
            if branch in data and code >= 200:
                return Response(code, data)

    def register(self, user: str, password: str | None, *, algorithm: str = "MD5",
                 realm: str | None = None, expires: int = 60,
                 offered: str | None = None, contact: str | None = None) -> Response | None:
        """REGISTER, answering the challenge for `algorithm` if a password is given (with the
        nonce of the `offered` challenge, to answer with an algorithm that was not offered)."""
        ruri = f"sip:127.0.0.1:{self.target[1]}"
        call_id = secrets.token_hex(10)
        first = self.request("REGISTER", ruri, user, call_id=call_id, contact=contact,
                             extra=f"Expires: {expires}\r\n")
        if first is None or first.code != 401 or password is None:
            return first
        return self.request("REGISTER", ruri, user, call_id=call_id, contact=contact,
                            extra=f"Expires: {expires}\r\n" + authorization(
                                "Authorization", first, "REGISTER", ruri, user, password,
                                algorithm, realm, offered=offered))


def authorization(header: str, challenge: Response, method: str, uri: str, user: str,
                  password: str, algorithm: str = "MD5", realm: str | None = None,
                  nc: str = "00000001", offered: str | None = None) -> str:
    """The header answering `challenge` with `algorithm`; the nonce is taken from the
    challenge for `offered` (default: the same algorithm). Only MD5 and SHA-256 can be
    computed; any other name is sent as is, with an MD5 response."""
    params = challenge.challenges()[offered or algorithm]
    realm = realm or params["realm"]
    nonce, cnonce = params["nonce"], secrets.token_hex(8)
    ha1 = _h(algorithm, f"{user}:{realm}:{password}")
    ha2 = _h(algorithm, f"{method}:{uri}")
    resp = _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return (f'{header}: Digest username="{user}", realm="{realm}", nonce="{nonce}", '
            f'uri="{uri}", response="{resp}", algorithm={algorithm}, cnonce="{cnonce}", '
            f"qop=auth, nc={nc}\r\n")
