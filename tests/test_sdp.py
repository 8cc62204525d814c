"""The offer check (sip/sdp.py): real offers pass, hostile ones are refused with a reason,
and no input makes it raise."""

from __future__ import annotations

import random

import pytest

from sip.sdp import MAX_SDP_BYTES, check_offer, sdp_body

PJSUA = (
    "v=0\r\no=- 3913000000 3913000000 IN IP4 127.0.0.1\r\ns=pjmedia\r\nb=AS:84\r\nt=0 0\r\n"
    "a=X-nat:0\r\nm=audio 4000 RTP/AVP 0 8 9 111 101\r\nc=IN IP4 127.0.0.1\r\nb=TIAS:64000\r\n"
    "a=rtcp:4001 IN IP4 127.0.0.1\r\na=sendrecv\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\na=rtpmap:9 G722/8000\r\na=rtpmap:111 opus/48000/2\r\n"
    "a=fmtp:111 useinbandfec=1\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
    "a=ssrc:123456 cname:abc\r\n"
)
# A softphone offering video and IPv6 audio, LF line ends, multicast-style TTL on c=.
LINPHONE_V6 = (
    "v=0\no=alice 1234 5678 IN IP6 ::1\ns=Talk\nc=IN IP6 ::1\nt=0 0\n"
    "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\n"
    "m=audio 7078 RTP/AVPF 96 0 8 101\na=rtpmap:96 opus/48000/2\n"
    "a=rtpmap:101 telephone-event/8000\n"
    "a=rtcp-fb:* trr-int 1000\nm=video 9078 RTP/AVPF 97\na=rtpmap:97 VP8/90000\n"
)
SIPP = ("v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1/127\r\n"
        "t=0 0\r\nm=audio 6000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")


@pytest.mark.parametrize("offer", [PJSUA, LINPHONE_V6, SIPP, "", "\r\n"])
def test_real_offers_pass(offer: str) -> None:
    assert check_offer(offer) is None


def bad(mutate_from: str, old: str, new: str) -> str:
    assert old in mutate_from
    return mutate_from.replace(old, new, 1)


HOSTILE = {
    # The one that aborted the gateway: a 500-character c= address of format specifiers.
    "overlong c= (the abort)": bad(PJSUA, "c=IN IP4 127.0.0.1", "c=IN IP4 " + "%n%x" * 125),
    "host name in c= (a blocking DNS query)": bad(SIPP, "c=IN IP4 127.0.0.1/127",
                                                  "c=IN IP4 attacker.example.com"),
    "IPv6 in an IP4 c=": bad(SIPP, "c=IN IP4 127.0.0.1/127", "c=IN IP4 ::1"),
    "c= missing a field": bad(SIPP, "c=IN IP4 127.0.0.1/127", "c=IN IP4"),
    "c= ATM": bad(SIPP, "c=IN IP4 127.0.0.1/127", "c=ATM NSAP 47.0091"),
    "no c= anywhere": bad(SIPP, "c=IN IP4 127.0.0.1/127\r\n", ""),
    "port too big": bad(SIPP, "m=audio 6000", "m=audio 70000"),
    "negative port": bad(SIPP, "m=audio 6000", "m=audio -1"),
    "huge port": bad(SIPP, "m=audio 6000", "m=audio 99999999999999999999"),
    "payload type 128": bad(SIPP, "RTP/AVP 8", "RTP/AVP 128"),
    "payload type not a number": bad(SIPP, "RTP/AVP 8", "RTP/AVP %s"),
    "too many formats": bad(SIPP, "RTP/AVP 8", "RTP/AVP " + " ".join(["8"] * 40)),
    "rtpmap pt out of range": bad(SIPP, "a=rtpmap:8 PCMA/8000", "a=rtpmap:999999 PCMA/8000"),
    "rtpmap clock zero": bad(SIPP, "a=rtpmap:8 PCMA/8000", "a=rtpmap:8 PCMA/0"),
    "rtpmap no clock": bad(SIPP, "a=rtpmap:8 PCMA/8000", "a=rtpmap:8 PCMA"),
    "rtcp port zero": bad(PJSUA, "a=rtcp:4001", "a=rtcp:0"),
    "rtcp overlong address": bad(PJSUA, "a=rtcp:4001 IN IP4 127.0.0.1",
                                 "a=rtcp:4001 IN IP4 " + "1" * 300),
    "only video": LINPHONE_V6.replace("m=audio 7078", "m=text 7078"),
    "audio port 0 (declined)": bad(SIPP, "m=audio 6000", "m=audio 0"),
    "T.38 only": bad(SIPP, "m=audio 6000 RTP/AVP 8", "m=image 6000 udptl t38"),
    "no v=0": SIPP.replace("v=0\r\n", ""),
    "no o=": bad(SIPP, "o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n", ""),
    "o= overlong address": bad(SIPP, "IN IP4 127.0.0.1\r\ns", "IN IP4 " + "a" * 300 + "\r\ns"),
    "o= session id not a number": bad(SIPP, "53655765", "%n%n"),
    "NUL byte": bad(SIPP, "s=-", "s=\x00"),
    "non-ASCII": bad(SIPP, "s=-", "s=\u00e9t\u00e9"),
    "line without type": SIPP + "garbage\r\n",
    "too many m= lines": SIPP + "m=audio 6000 RTP/AVP 8\r\n" * 20,
    "too many lines": SIPP + "a=x\r\n" * 300,
    "overlong line": SIPP + "a=" + "x" * 2000 + "\r\n",
    "oversized": SIPP + ("a=" + "x" * 1000 + "\r\n") * 17,
    "ptime zero": SIPP + "a=ptime:0\r\n",
    "channels 1000": bad(SIPP, "a=rtpmap:8 PCMA/8000", "a=rtpmap:8 PCMA/8000/1000"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_offers_are_refused(name: str) -> None:
    assert check_offer(HOSTILE[name]) is not None, name


def test_oversized_is_refused_by_size() -> None:
    reason = check_offer(HOSTILE["oversized"])
    assert reason is not None and str(MAX_SDP_BYTES) in reason


def test_non_utf8_bytes_do_not_raise() -> None:
    assert check_offer(SIPP.encode() + b"a=\xff\xfe\r\n") == "SDP is not ASCII"
    # What SWIG hands over for invalid UTF-8: surrogate escapes in a str.
    assert check_offer(SIPP + "a=\udcff\r\n") == "SDP is not ASCII"


def test_random_mutations_never_raise() -> None:
    rng = random.Random(9)
    base = PJSUA.encode()
    for _ in range(3000):
        b = bytearray(base)
        for _ in range(rng.randrange(1, 8)):
            op = rng.randrange(3)
            i = rng.randrange(len(b))
            if op == 0:
                b[i] = rng.randrange(256)
            elif op == 1:
                del b[i:i + rng.randrange(1, 40)]
            else:
                b[i:i] = rng.choice([b"%n", b"\x00", b"9" * 30, b"\r\n", b" ", b"/", b":"])
        result = check_offer(bytes(b))
        assert result is None or isinstance(result, str)


def test_sdp_body_finds_the_offer() -> None:
    head = "INVITE sip:1001@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP x\r\n"
    plain = head + "Content-Type: application/sdp\r\n\r\n" + SIPP
    assert sdp_body(plain) == SIPP
    compact = head + "c: application/sdp\r\n\r\n" + SIPP
    assert sdp_body(compact) == SIPP
    multi = (head + 'Content-Type: multipart/mixed;boundary="B0UND"\r\n\r\n'
             "--B0UND\r\nContent-Type: application/isup\r\n\r\nxx\r\n"
             "--B0UND\r\nContent-Type: application/sdp\r\n\r\n" + HOSTILE["overlong c= (the abort)"]
             + "\r\n--B0UND--\r\n")
    assert check_offer(sdp_body(multi)) is not None
    assert sdp_body(head + "Content-Length: 0\r\n\r\n") == ""
    assert sdp_body(head + "Content-Type: text/plain\r\n\r\nhello") == ""
