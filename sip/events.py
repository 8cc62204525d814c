"""Messages from the SIP thread to asyncio: small, frozen, no pj objects inside."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from media.quality import CallQuality


def new_call_id() -> str:
    """A MiniVoice call ID: `call_` + 22 random URL-safe characters."""
    return "call_" + secrets.token_urlsafe(16)


@dataclass(frozen=True)
class IncomingCall:
    call_id: str  # MiniVoice call ID, assigned on the SIP thread
    sip_call_id: str
    from_uri: str
    to_uri: str
    from_user: str
    dialed: str  # Request-URI user (the number the caller dialed)
    source: str  # transport source address "ip:port"
    # The INVITE's X- headers (sip.sipmsg.x_headers: capped in number and length)
    x_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CallAnswered:
    call_id: str


@dataclass(frozen=True)
class MediaReady:
    call_id: str
    codec: str


@dataclass(frozen=True)
class CallEnded:
    call_id: str
    sip_code: int
    reason: str
    by_gateway: bool  # True when the gateway ended or rejected it
    cause: str  # "normal" | "media_timeout" (SIP thread) | "dial_failed" (gateway/app.py)
    # pjmedia's statistics of the call's audio, taken as each stream was destroyed; None when
    # the call never had media (rejected, unanswered, abandoned)
    quality: CallQuality | None = None
    # inbound legs: the final response the INVITE got (200 once answered, else the rejection
    # or 487 after a CANCEL); None for outbound legs
    final_response: int | None = None


@dataclass(frozen=True)
class CallProgress:
    """A provisional or final response on an outbound leg (180, 183, 486, ...)."""

    call_id: str
    code: int


@dataclass(frozen=True)
class DtmfDigit:
    call_id: str
    digit: str
    method: str  # "rfc4733" | "info"


@dataclass(frozen=True)
class PlayDone:
    call_id: str
    play_id: int


@dataclass(frozen=True)
class RoomPlayDone:
    """A room's one-shot player (beep, announcement) reached its end or could not start."""

    name: str


@dataclass(frozen=True)
class CommandDone:
    req_id: int
    error: str | None = None
    value: tuple[tuple[str, int], ...] | None = None  # what a query command returns


@dataclass(frozen=True)
class EngineStarted:
    port: int


@dataclass(frozen=True)
class EngineFailed:
    error: str


Event = (IncomingCall | CallAnswered | MediaReady | CallEnded | CallProgress | DtmfDigit
         | PlayDone | RoomPlayDone | CommandDone | EngineStarted | EngineFailed)
