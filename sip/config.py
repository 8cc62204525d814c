"""The SIP engine's configuration: the `sip:` section of the gateway's YAML file.

It lives here, not in `gateway`, so that `sip` does not import `gateway` (the layers are
checked by import-linter). `gateway.strict` validates it like any other dataclass: it reads
the value checks from each field's metadata ("checks": callables returning a reason or
None) and calls `cross_check`. The two helpers below make the same metadata as
`gateway.strict.checked`/`between`, with the same messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

# A small jitter buffer's capacity: at least one 20 ms packet, at most pjmedia's default.
# Here, not in sip.commands: gateway.cluster.config checks cascade_jitter_ms against it, and
# the edge's image has only this module of sip/ (no pjsua2, no media).
JB_MAX_MS_RANGE = (20, 500)


def jb_max_ms_problem(value: object) -> str | None:
    """Why `value` is not a jitter buffer setting (0: adaptive, or a size in range), or None.

    The one check behind both the config key cluster.cascade_jitter_ms and the SIP
    commands' jb_max_ms.
    """
    lo, hi = JB_MAX_MS_RANGE
    if type(value) is int and (value == 0 or lo <= value <= hi):
        return None
    return f"must be 0 (adaptive) or {lo}-{hi}, not {value!r}"


__all__ = ["JB_MAX_MS_RANGE", "MAX_CALLS_BUILT", "Codec", "SipConfig", "jb_max_ms_problem"]


def _between(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v < lo:
            return f"must be >= {lo}"
        if v > hi:
            return f"must be <= {hi}"
        return None

    return check


def checked(*checks: Callable[[Any], str | None], default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"checks": checks})


Codec = Literal["PCMU", "PCMA", "G722", "opus"]

# PJSUA_MAX_CALLS in sip/build/config_site.h (a test keeps the two equal): the calls pjsua
# holds at most, so the most `max_calls` may be.
MAX_CALLS_BUILT = 4000


@dataclass(frozen=True)
class SipConfig:
    host: str = "127.0.0.1"
    port: int = checked(_between(0, 65535), default=5060)
    transports: tuple[Literal["udp", "tcp"], ...] = ("udp", "tcp")
    # Address written in SDP/Contact when it differs from `host` (e.g. bound to 0.0.0.0).
    public_host: str | None = None
    # Where RTP sockets bind; default `host`. Behind the edge the SIP socket is loopback-only
    # but phones on the LAN send RTP straight to the gateway: set 0.0.0.0 (SDP then carries
    # the machine's primary address, or `public_host`).
    rtp_host: str | None = None
    rtp_port_start: int = checked(_between(1024, 65000), default=10000)
    # Each stream gets a random even port in [rtp_port_start, +rtp_port_range); 0 = count up
    # from rtp_port_start without limit (guessable: only for tests and special setups).
    rtp_port_range: int = checked(_between(0, 60000), default=10000)
    codecs: tuple[Codec, ...] = ("PCMU", "PCMA", "G722", "opus")
    clock_rate: int = checked(_between(8000, 48000), default=8000)
    # At most the build's PJSUA_MAX_CALLS (sip/build/config_site.h); pjsua refuses more.
    max_calls: int = checked(_between(1, MAX_CALLS_BUILT), default=2000)
    # pjmedia conference bridge worker threads. Only effective in a pjproject built with the
    # parallel bridge (PJMEDIA_CONF_BACKEND), which ours is not: on 2 cores it measured no
    # gain (BENCHMARKS.md). Kept for builds and machines where it pays.
    conf_threads: int = checked(_between(1, 64), default=1)
    media_timeout_s: float = checked(_between(0, 3600), default=30.0)
    # SRTP with SDES keys in the SDP. optional: take SRTP offers, answer plain ones plainly,
    # offer both on outbound legs; mandatory: refuse calls without SRTP (488). The keys travel
    # in SIP: they are only as private as the signalling (TLS at the edge; the hop from the
    # edge to the gateway is on loopback).
    srtp: Literal["off", "optional", "mandatory"] = "optional"
    # The process exits (code 70, for its supervisor to restart it) when the SIP thread has
    # died, at once, or has not turned its loop for this long (a deadlock in C).
    watchdog_s: float = checked(_between(1, 600), default=10.0)
    log_level: int = checked(_between(0, 6), default=1)

    def cross_check(self) -> Iterator[tuple[str, str]]:
        if self.rtp_port_start + self.rtp_port_range > 65535:
            yield "rtp_port_range", "rtp_port_start + rtp_port_range must be <= 65535"
