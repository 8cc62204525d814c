"""Messages from asyncio to the SIP thread: what the control plane may ask for."""

from __future__ import annotations

from dataclasses import dataclass

from media.rooms import Link, Player
from sip.config import jb_max_ms_problem


def check_jb_max_ms(value: int) -> None:
    problem = jb_max_ms_problem(value)
    if problem:
        raise ValueError(f"jb_max_ms {problem}")


@dataclass(frozen=True)
class Answer:
    call_id: str
    code: int = 200
    # 0: pjmedia's adaptive jitter buffer (every phone). JB_MAX_MS_RANGE: the call's audio
    # stream gets a small buffer of at most that many ms and no prefetch (sip.calls): for a
    # peer on the same LAN whose packets come at a steady 20 ms (cluster.cascade_jitter_ms).
    jb_max_ms: int = 0

    def __post_init__(self) -> None:
        check_jb_max_ms(self.jb_max_ms)


@dataclass(frozen=True)
class Hangup:
    """Reject (before answer) or end a call. `code` is the SIP status for a rejection.
    `cause`: the gateway's name for why (a `hangup_cause`, docs/api.md), sent to the caller
    in a Warning header (sip.calls.warning_value), so a rejection tells its cause on the wire
    as well as in the log: several causes share SIP 500."""

    call_id: str
    code: int = 603
    reason: str = ""
    cause: str = ""


@dataclass(frozen=True)
class ApplyLinks:
    """Connect/disconnect conference bridge links (src -> dst) between calls and room
    players. In order: create the `start` players, disconnect, connect, destroy the `stop`
    players. A one-shot player (loop=False) that ends, or cannot start, posts RoomPlayDone."""

    connect: tuple[Link, ...] = ()
    disconnect: tuple[Link, ...] = ()
    start: tuple[Player, ...] = ()
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Play:
    """Play a WAV file (16-bit PCM) to the caller once; `PlayDone` follows at its end."""

    call_id: str
    path: str
    play_id: int


@dataclass(frozen=True)
class StopPlay:
    call_id: str
    play_id: int


@dataclass(frozen=True)
class Dial:
    """Place an outbound call to `uri` whose MiniVoice call ID is `call_id`."""

    call_id: str
    uri: str
    from_user: str = ""
    # Extra headers on the INVITE (a cluster's cascade leg: X-Room-Epoch and its MAC).
    headers: tuple[tuple[str, str], ...] = ()
    # As Answer.jb_max_ms.
    jb_max_ms: int = 0

    def __post_init__(self) -> None:
        check_jb_max_ms(self.jb_max_ms)


@dataclass(frozen=True)
class QueryLevels:
    """The level (0-255) of what each call is sending into the bridge right now."""

    call_ids: tuple[str, ...]


@dataclass(frozen=True)
class StartRecording:
    """Open a WAV recorder (16-bit mono PCM at the bridge's clock rate) writing to `path`: a
    bridge port that links to `rec_id` (a room listener, see media.rooms) feed."""

    rec_id: str
    path: str


@dataclass(frozen=True)
class StopRecording:
    """Close the recorder; pjmedia writes the WAV header's sizes as it destroys the port."""

    rec_id: str


@dataclass(frozen=True)
class Shutdown:
    pass


Command = (Answer | Hangup | ApplyLinks | Play | StopPlay | Dial | QueryLevels | StartRecording
           | StopRecording | Shutdown)
