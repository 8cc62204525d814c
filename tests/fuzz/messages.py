"""Valid SIP requests to mutate: an INVITE with an SDP offer, and the in-dialog requests of a
call (re-INVITE, INFO with a DTMF body, BYE), plus CANCEL and OPTIONS. A message is a list of
(name, value) headers and a body, so a mutation can address one header or one SDP line."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Message:
    start: str  # request line
    headers: list[tuple[str, str]]
    body: str = ""
    content_length: str | None = None  # None: computed; else written as given
    extra_raw: bytes = b""  # appended after the body (pipelining, trailing junk)

    def encode(self) -> bytes:
        body = self.body.encode("utf-8", "surrogateescape")
        lines = [self.start] + [f"{n}: {v}" for n, v in self.headers]
        cl = str(len(body)) if self.content_length is None else self.content_length
        lines.append(f"Content-Length: {cl}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body \
            + self.extra_raw


@dataclass(frozen=True)
class Dialog:
    """Where requests go and who they claim to be."""

    host: str  # the target's address
    port: int
    local_port: int  # our socket (Via, Contact)
    transport: str = "UDP"
    call_id: str = "fuzz-0"
    from_tag: str = "ft0"
    to_tag: str = ""  # set for in-dialog requests
    cseq: int = 1
    user: str = "1001"
    rtp_port: int = 40000
    extra_headers: tuple[tuple[str, str], ...] = field(default=())


def sdp(d: Dialog, version: int = 1) -> str:
    return (
        "v=0\r\n"
        f"o=fuzz 1000 {version} IN IP4 127.0.0.1\r\n"
        "s=fuzz\r\n"
        "c=IN IP4 127.0.0.1\r\n"
        "t=0 0\r\n"
        f"m=audio {d.rtp_port} RTP/AVP 0 8 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


def _common(d: Dialog, method: str, branch: str, cseq: int | None = None) -> list[tuple[str, str]]:
    to = f"<sip:{d.user}@{d.host}:{d.port}>" + (f";tag={d.to_tag}" if d.to_tag else "")
    return [
        ("Via", f"SIP/2.0/{d.transport} 127.0.0.1:{d.local_port};branch=z9hG4bK{branch};rport"),
        ("Max-Forwards", "70"),
        ("From", f"\"Fuzz\" <sip:fuzzer@127.0.0.1:{d.local_port}>;tag={d.from_tag}"),
        ("To", to),
        ("Call-ID", d.call_id),
        ("CSeq", f"{d.cseq if cseq is None else cseq} {method}"),
        ("Contact", f"<sip:fuzzer@127.0.0.1:{d.local_port};transport={d.transport.lower()}>"),
        ("User-Agent", "minivoice-fuzz"),
        *d.extra_headers,
    ]


def invite(d: Dialog, branch: str) -> Message:
    h = _common(d, "INVITE", branch)
    h += [("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE"),
          ("Supported", "timer"), ("Content-Type", "application/sdp")]
    return Message(f"INVITE sip:{d.user}@{d.host}:{d.port} SIP/2.0", h, sdp(d, 1))


def reinvite(d: Dialog, branch: str) -> Message:
    h = [*_common(d, "INVITE", branch), ("Content-Type", "application/sdp")]
    return Message(f"INVITE sip:minivoice@{d.host}:{d.port} SIP/2.0", h, sdp(d, 2))


def info_dtmf(d: Dialog, branch: str) -> Message:
    h = [*_common(d, "INFO", branch), ("Content-Type", "application/dtmf-relay")]
    return Message(f"INFO sip:minivoice@{d.host}:{d.port} SIP/2.0", h,
                   "Signal=5\r\nDuration=160\r\n")


def bye(d: Dialog, branch: str) -> Message:
    return Message(f"BYE sip:minivoice@{d.host}:{d.port} SIP/2.0", _common(d, "BYE", branch))


def cancel(d: Dialog, branch: str) -> Message:
    # CANCEL carries the INVITE's CSeq number and branch (RFC 3261 9.1)
    return Message(f"CANCEL sip:{d.user}@{d.host}:{d.port} SIP/2.0",
                   _common(d, "CANCEL", branch, cseq=1))


def options(d: Dialog, branch: str) -> Message:
    return Message(f"OPTIONS sip:{d.user}@{d.host}:{d.port} SIP/2.0",
                   [*_common(d, "OPTIONS", branch), ("Accept", "application/sdp")])


def ack(d: Dialog, branch: str, cseq: int = 1) -> Message:
    return Message(f"ACK sip:minivoice@{d.host}:{d.port} SIP/2.0",
                   _common(d, "ACK", branch, cseq=cseq))


TEMPLATES = {"INVITE": invite, "re-INVITE": reinvite, "INFO": info_dtmf, "BYE": bye,
             "CANCEL": cancel, "OPTIONS": options}
IN_DIALOG = ("re-INVITE", "INFO", "BYE")
