"""Messages from asyncio to the SIP thread: what the control plane may ask for."""

from __future__ import annotations

from dataclasses import dataclass

from media.rooms import Link


@dataclass(frozen=True)
class Answer:
    call_id: str
    code: int = 200


@dataclass(frozen=True)
class Hangup:
    """Reject (before answer) or end a call. `code` is the SIP status for a rejection."""

    call_id: str
    code: int = 603
    reason: str = ""


@dataclass(frozen=True)
class ApplyLinks:
    """Connect/disconnect conference bridge links between calls (src -> dst)."""

    connect: tuple[Link, ...] = ()
    disconnect: tuple[Link, ...] = ()


@dataclass(frozen=True)
class Shutdown:
    pass


Command = Answer | Hangup | ApplyLinks | Shutdown
