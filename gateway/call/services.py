"""What a call session may use, as one small value. The gateway builds it once; unit tests
build it from fakes (tests/fakes.py). Each service is typed by the narrow protocol the
session needs, not by the class that happens to implement it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.actions.base import Action
from gateway.config import Application, LimitsConfig
from media.rooms import MemberOptions
from sip import commands as cmd

if TYPE_CHECKING:
    from gateway.call.session import CallSession

log = logging.getLogger("minivoice.gateway")


class Engine(Protocol):
    """The SIP thread's command queue (sip.engine.SipEngine)."""

    def send(self, command: cmd.Command) -> asyncio.Future[Any]: ...


class Hooks(Protocol):
    """answer_url / action_url requests (gateway.hooks.HookClient)."""

    async def fetch_actions(
        self, urls: list[str], secret: str, payload: dict[str, Any], call_id: str,
        kind: str = ..., error_code: str = ..., guarded: bool | None = ...,
    ) -> tuple[Action, ...]: ...


class Media(Protocol):
    """Prompts ready to play (gateway.media_cache.MediaCache)."""

    async def fetch(self, url: str) -> Path: ...

    async def speak(self, text: str, voice: str | None) -> Path: ...


class Rooms(Protocol):
    """Conference rooms (gateway.conferences.Conferences)."""

    async def join(self, key: Any, call_id: str, opts: MemberOptions,
                   caller: Any = None, status: Any = None) -> str: ...


class Recorder(Protocol):
    """Room recordings (gateway.recordings.Recordings)."""

    async def start(self, key: Any, app: Application, *, by: str) -> Any: ...


class Outbox(Protocol):
    """The durable webhook outbox (gateway.outbox.Outbox)."""

    def add(self, call_id: str, url: str, app_id: str, payload: dict[str, Any], *,
            ends_call: bool = False) -> str | None: ...


class Ledger(Protocol):
    """Where live calls are kept: in memory for routing, in SQLite for crash recovery
    (gateway.call.table.CallTable)."""

    def admit(self, session: CallSession) -> None: ...

    def remember(self, session: CallSession) -> None: ...

    def finish(self, session: CallSession, sip_code: int, reason: str, by_gateway: bool,
               cause: str) -> None: ...


class Dialer(Protocol):
    """Start an outbound leg (gateway.call.outbound.dial)."""

    async def __call__(self, services: Services, app: Application, uri: str, from_user: str,
                       parent: CallSession | None) -> CallSession: ...


@dataclass(frozen=True)
class Services:
    engine: Engine
    hooks: Hooks
    media: Media
    rooms: Rooms
    outbox: Outbox
    calls: Ledger
    dialer: Dialer
    limits: LimitsConfig
    # A `transfer` or API target ("sip:..." or a registered user) -> the URI to dial;
    # raises ValueError with a message for the application.
    dial_target: Callable[[str], Awaitable[str]]  # a target -> the URI to dial, or ValueError
    ringback: Path
    recorder: Recorder | None = None  # None: recording is not available (unit tests)

    def send_quiet(self, command: cmd.Command) -> None:
        """Send a command whose failure is only worth a log line."""
        self.engine.send(command).add_done_callback(log_failure)


def log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("sip command failed", extra={"error": str(fut.exception())})
