"""What every action is, and what an action may ask of the call it runs on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from gateway.webhook_events import ActionsEvent
from media.rooms import MemberOptions
from sip import commands as cmd

E = TypeVar("E")


class CallContext(Protocol):
    """The operations an action executor may use. Implemented by the call session;
    unit tests may pass a fake."""

    call_id: str
    customer_id: str

    async def answer(self) -> None: ...

    async def hangup(self, reason: str | None = None) -> None: ...

    async def conference(self, room: str, options: MemberOptions) -> None:
        """Join the room and return when the caller has left it without hanging up.
        Raises RoomFull, without joining, when the room is at its size limit."""
        ...

    def room_status_url(self, url: str) -> None:
        """The status_url of the room this call joins next (if the room has none yet)."""
        ...

    def record_room(self, room: str) -> None:
        """Start recording the room as soon as this call has joined it (unless it is being
        recorded already); a refusal goes in the timeline."""
        ...

    def note(self, event: str, **fields: Any) -> None:
        """Add an entry to the call's timeline (and log it)."""
        ...

    async def prompt_file(self, url: str) -> Path:
        """A prompt fetched over HTTP(S), ready to play (cached)."""
        ...

    async def prompt_speech(self, text: str, voice: str | None) -> Path:
        """Text spoken by the local TTS engine, ready to play (cached)."""
        ...

    async def play(self, path: Path) -> None:
        """Play a prepared file to the caller once; return when it has ended."""
        ...

    def clear_digits(self) -> None: ...

    async def next_digit(self, timeout: float | None) -> str | None:
        """The next DTMF digit the caller presses, or None after `timeout` seconds."""
        ...

    async def fetch_actions(
        self, url: str, event: ActionsEvent, data: dict[str, Any]
    ) -> tuple[Action, ...]:
        """POST the call's envelope (signed) to `url`; the validated actions it returns."""
        ...

    async def transfer(self, to: str, caller_id: str | None, timeout: float) -> str:
        """Dial `to` and bridge; return the outcome: answered | busy | no-answer | failed
        (or canceled, when the ringing leg is hung up through the API or at shutdown)."""
        ...

    async def command(self, command: cmd.Command) -> Any:
        """Send a command to the SIP engine; its result. For an action that needs an engine
        capability the session has no method for (sip/commands.py, a handler in the engine's
        table); raises sip.engine.SipCommandError when the engine refuses."""
        ...

    async def next_event(self, kind: type[E], timeout: float | None = None) -> E | None:
        """The next event of type `kind` (sip/events.py) the engine sends for this call, or
        None after `timeout` seconds."""
        ...


class RoomFull(Exception):
    """`CallContext.conference` into a room at its size limit (the caller's
    max_participants, or rooms.max_participants)."""


@dataclass(frozen=True)
class Replace:
    """An action's outcome that replaces the rest of the list (gather, redirect)."""

    actions: tuple[Action, ...]


@dataclass(frozen=True)
class Stop:
    """An action's outcome that ends the list (hangup)."""


Outcome = Replace | Stop | None


@dataclass(frozen=True)
class Action:
    """Base of every action: a frozen, validated dataclass that knows how to run itself.

    Subclasses set `name` and declare their fields; `gateway.strict` turns the JSON
    into an instance (the `type` key of the typed form is handled by the schema).
    `run` must be cancellable at every await: the call session cancels it when the
    caller hangs up.
    """

    name: ClassVar[str] = ""

    async def run(self, call: CallContext) -> Outcome:
        raise NotImplementedError
