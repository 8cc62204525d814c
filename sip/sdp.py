"""Is an SDP offer one the gateway can safely answer? A pure check, run before anything else.

pjmedia parses SDP leniently and trusts what it parsed further down: a `c=` address of 500
characters reaches `pj_sockaddr_in_set_str_addr`, whose assertion aborted the whole process in
a debug build (a release build returns an error, but the call is half set up by then), and a
host name in `c=` makes pjmedia resolve it with a blocking DNS query on the SIP thread. So the
gateway refuses, with 488 and before the answer_url is asked, any offer that is not plainly
usable: IP literals only, ports and payload types in range, a bounded number of lines, media
and formats, and at least one audio stream it could take.

`check_offer(body)` returns None for a usable offer, else a short reason for the log.
"""

from __future__ import annotations

import ipaddress
import re

MAX_SDP_BYTES = 16 * 1024  # a rich audio offer is about 1 KiB; pjsip's own packet cap is 4000
MAX_LINES = 200
MAX_LINE = 1024
MAX_MEDIA = 16
MAX_FORMATS = 32
# RTP/AVP family only: the gateway does not speak anything else (no T.38 "udptl" etc.).
AUDIO_PROTOS = {"RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"}
_TYPE_LINE = re.compile(r"^[a-z]=")
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")


def ip_literal(addrtype: str, addr: str) -> bool:
    """An IPv4 or IPv6 literal of the stated type, optionally with a multicast /ttl suffix
    (which pjmedia ignores); nothing that would need a DNS query."""
    if len(addr) > 64:
        return False
    addr = addr.split("/", 1)[0] if addrtype == "IP4" else addr
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return (ip.version == 4) == (addrtype == "IP4")


def _connection(value: str) -> str | None:
    parts = value.split(" ")
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        return "c= must be 'IN IP4|IP6 <address>'"
    if not ip_literal(parts[1], parts[2]):
        return "c= address is not an IP literal"
    return None


def _origin(value: str) -> str | None:
    parts = value.split(" ")
    if len(parts) != 6:
        return "o= must have 6 fields"
    _, sess_id, sess_ver, net, addrtype, addr = parts
    if not (sess_id.isdigit() and sess_ver.isdigit()) or len(sess_id) > 20 or len(sess_ver) > 20:
        return "o= session id/version must be numbers"
    if net != "IN" or addrtype not in ("IP4", "IP6"):
        return "o= must be IN IP4|IP6"
    # pjmedia copies the origin address into a fixed buffer too; a host name is allowed here
    # (nothing resolves it) but it must look like one.
    if len(addr) > 253 or not (_TOKEN.match(addr) or ip_literal(addrtype, addr)):
        return "o= address is not an address"
    return None


def _port(text: str, allow_zero: bool) -> int | None:
    if not text.isdigit() or len(text) > 5:
        return None
    n = int(text)
    return n if (allow_zero or n > 0) and n <= 65535 else None


def _media(value: str) -> tuple[str | None, bool]:
    """(problem, usable audio stream)"""
    parts = value.split(" ")
    if len(parts) < 4:
        return "m= must be '<media> <port> <proto> <fmt> ...'", False
    media, port_s, proto, fmts = parts[0], parts[1], parts[2], parts[3:]
    if not _TOKEN.match(media) or not _TOKEN.match(proto.replace("/", "")):
        return "m= media or proto is not a token", False
    port_s, _, count = port_s.partition("/")
    port = _port(port_s, allow_zero=True)
    if port is None or (count and _port(count, allow_zero=False) is None):
        return "m= port out of range", False
    if len(fmts) > MAX_FORMATS:
        return "m= has too many formats", False
    if media != "audio" or proto not in AUDIO_PROTOS:
        return None, False  # another media type: declined in the answer, not an error
    if any(not f.isdigit() or len(f) > 3 or int(f) > 127 for f in fmts):
        return "m= audio payload type out of range", False
    return None, port != 0


def _attribute(value: str) -> str | None:
    name, _, rest = value.partition(":")
    if name == "rtpmap":
        pt, _, enc = rest.partition(" ")
        if not pt.isdigit() or len(pt) > 3 or int(pt) > 127:
            return "a=rtpmap payload type out of range"
        fields = enc.split("/")
        if len(fields) < 2 or not fields[0] or not fields[1].isdigit() or len(fields[1]) > 6 \
                or int(fields[1]) == 0:
            return "a=rtpmap must be '<pt> <encoding>/<clock rate>'"
        if len(fields) > 2 and (not fields[2].isdigit() or not 0 < int(fields[2]) <= 8):
            return "a=rtpmap channels out of range"
    elif name == "rtcp":
        port, _, addr = rest.partition(" ")
        if _port(port, allow_zero=False) is None:
            return "a=rtcp port out of range"
        if addr and _connection(addr) is not None:
            return "a=rtcp address is not 'IN IP4|IP6 <IP literal>'"
    elif name in ("ptime", "maxptime") and not (rest.isdigit() and 0 < int(rest) <= 1000):
        return f"a={name} out of range"
    return None


def check_offer(body: bytes | str) -> str | None:
    """None if the SDP offer is usable, else why not. An empty body (delayed offer) is fine:
    the gateway makes the offer itself then."""
    raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body
    if not raw.strip():
        return None
    if len(raw) > MAX_SDP_BYTES:
        return f"SDP larger than {MAX_SDP_BYTES} bytes"
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        # RFC 8866 allows UTF-8 in a few free-text fields, which nothing here needs.
        return "SDP is not ASCII"
    lines = [ln for ln in re.split(r"\r?\n", text) if ln]
    if len(lines) > MAX_LINES:
        return "SDP has too many lines"
    if not lines or lines[0] != "v=0":
        return "SDP must start with v=0"
    session_c = False
    media_lines = 0
    media_has_c: list[bool] = []
    audio_ok = False
    seen_origin = False
    for line in lines:
        if len(line) > MAX_LINE:
            return "SDP line too long"
        if not _TYPE_LINE.match(line) or any(ord(ch) < 32 and ch != "\t" for ch in line):
            return "SDP line is not '<type>=<value>'"
        kind, value = line[0], line[2:]
        problem: str | None = None
        if kind == "o":
            seen_origin = True
            problem = _origin(value)
        elif kind == "c":
            problem = _connection(value)
            if media_lines:
                media_has_c[-1] = True
            else:
                session_c = True
        elif kind == "m":
            media_lines += 1
            if media_lines > MAX_MEDIA:
                return "SDP has too many m= lines"
            media_has_c.append(False)
            problem, usable = _media(value)
            audio_ok = audio_ok or usable
        elif kind == "a":
            problem = _attribute(value)
        if problem:
            return problem
    if not seen_origin:
        return "SDP has no o= line"
    if not media_lines:
        return "SDP has no m= line"
    if not session_c and not all(media_has_c):
        return "a media stream has no c= address"
    if not audio_ok:
        return "no usable audio stream (RTP/AVP, port > 0)"
    return None


def sdp_body(message: str) -> str:
    """The SDP part of a SIP message's body: the body itself when it is application/sdp, the
    first application/sdp part of a multipart body, '' when there is none."""
    head, sep, body = message.partition("\r\n\r\n")
    if not sep:
        head, sep, body = message.partition("\n\n")
    ctype = ""
    for line in re.split(r"\r?\n", head)[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() in ("content-type", "c"):
            ctype = value.strip()
            break
    if ctype.lower().startswith("application/sdp"):
        return body
    if ctype.lower().startswith("multipart/"):
        m = re.search(r'boundary="?([^";]+)"?', ctype, re.IGNORECASE)
        if not m:
            return body  # malformed multipart: let the check refuse its content
        for part in body.split("--" + m.group(1))[1:]:
            phead, psep, pbody = part.partition("\r\n\r\n")
            if psep and "application/sdp" in phead.lower():
                return pbody.rstrip("\r\n")
        return ""
    return "" if ctype else body
