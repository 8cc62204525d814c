"""Fakes for fast control-plane tests, no pjsua2: a call context for actions, the services a
session uses (engine that records commands, outbox that records events, a ledger of live
calls), scripted SIP events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.actions.base import Action
from gateway.call.services import Services
from gateway.call.session import CallSession
from gateway.config import Application, LimitsConfig
from media.rooms import MemberOptions
from sip import commands as cmd
from sip import events as ev
from sip.engine import SipCommandError


@dataclass
class FakeCall:
    """A CallContext: digits are scripted, prompts last `prompt_s`, action_urls answer from
    `documents` (one tuple of actions per request, in order)."""

    call_id: str = "call_fake"
    customer_id: str = "cust"
    prompt_s: float = 0.05
    documents: list[tuple[Action, ...]] = field(default_factory=list)
    answered: bool = False
    hung_up: str | None = None
    rooms: list[str] = field(default_factory=list)
    played: list[Path] = field(default_factory=list)
    posts: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    timeline: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    digits: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    commands: list[cmd.Command] = field(default_factory=list)
    scripted: list[ev.Event] = field(default_factory=list)  # what next_event returns

    def press(self, keys: str, after_s: float = 0.0) -> None:
        """Digits the caller presses, `after_s` from now (gather drops earlier ones)."""
        def put() -> None:
            for k in keys:
                self.digits.put_nowait(k)
        if after_s:
            asyncio.get_running_loop().call_later(after_s, put)
        else:
            put()

    async def answer(self) -> None:
        self.answered = True

    async def hangup(self, reason: str | None = None) -> None:
        self.hung_up = reason or ""

    async def conference(self, room: str, options: MemberOptions) -> None:
        self.rooms.append(room)

    def room_status_url(self, url: str) -> None:
        self.timeline.append(("room_status_url", {"url": url}))

    def record_room(self, room: str) -> None:
        self.timeline.append(("record_room", {"room": room}))

    def note(self, event: str, **fields: Any) -> None:
        self.timeline.append((event, fields))

    async def prompt_file(self, url: str) -> Path:
        return Path("/prompt/" + url.rsplit("/", 1)[-1])

    async def prompt_speech(self, text: str, voice: str | None) -> Path:
        return Path("/speech/" + text[:10])

    async def play(self, path: Path) -> None:
        self.played.append(path)
        await asyncio.sleep(self.prompt_s)

    def clear_digits(self) -> None:
        while not self.digits.empty():
            self.digits.get_nowait()

    async def next_digit(self, timeout: float | None) -> str | None:
        try:
            return await asyncio.wait_for(self.digits.get(), timeout)
        except TimeoutError:
            return None

    async def fetch_actions(self, url: str, event: str, data: dict[str, Any]
                            ) -> tuple[Action, ...]:
        self.posts.append((url, event, data))
        return self.documents.pop(0) if self.documents else ()

    async def transfer(self, to: str, caller_id: str | None, timeout: float) -> str:
        return "busy"

    async def command(self, command: cmd.Command) -> Any:
        self.commands.append(command)
        return None

    async def next_event(self, kind: type[Any], timeout: float | None = None) -> Any:
        for i, e in enumerate(self.scripted):
            if isinstance(e, kind):
                return self.scripted.pop(i)
        return None

    def events(self) -> list[str]:
        return [e for e, _ in self.timeline]


APP = Application(id="app1", customer_id="cust", answer_url="http://app.test/answer",
                  event_url="http://app.test/events", secret="s3cret-s3cret")


class FakeEngine:
    """Records commands; each resolves at once (or with `fail` for the command's type)."""

    def __init__(self) -> None:
        self.sent: list[cmd.Command] = []
        self.fail: set[type] = set()  # these command types fail with SipCommandError

    def send(self, command: cmd.Command) -> asyncio.Future[Any]:
        self.sent.append(command)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if type(command) in self.fail:
            fut.set_exception(SipCommandError("refused"))
        else:
            fut.set_result(None)
        return fut


class FakeOutbox:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def add(self, call_id: str, url: str, app_id: str, payload: dict[str, Any], *,
            ends_call: bool = False) -> str | None:
        self.events.append((call_id, url, payload))
        return f"evt_{len(self.events)}"

    def names(self, call_id: str) -> list[str]:
        return [p["event"] for c, _, p in self.events if c == call_id]


class FakeLedger:
    """The live calls, in memory only; `finish` is the real end path of a session."""

    def __init__(self) -> None:
        self.live: dict[str, CallSession] = {}
        self.finished: list[CallSession] = []

    def admit(self, session: CallSession) -> None:
        self.live[session.call_id] = session

    def remember(self, session: CallSession) -> None:
        pass

    def finish(self, session: CallSession, sip_code: int, reason: str, by_gateway: bool,
               cause: str) -> None:
        self.live.pop(session.call_id, None)
        session.on_ended(sip_code, by_gateway, cause)
        self.finished.append(session)


class NoRooms:
    async def join(self, key: Any, call_id: str, opts: MemberOptions, caller: Any = None,
                   status: Any = None) -> str:
        raise AssertionError("no rooms in this test")


class NoMedia:
    async def fetch(self, url: str) -> Path:
        return Path("/prompt/" + url.rsplit("/", 1)[-1])

    async def speak(self, text: str, voice: str | None) -> Path:
        return Path("/speech/" + text[:10])


class NoHooks:
    async def fetch_actions(self, urls: list[str], secret: str, payload: dict[str, Any],
                            call_id: str, kind: str = "answer_url",
                            error_code: str = "answer_url_error",
                            guarded: bool | None = None) -> tuple[Action, ...]:
        return ()


async def _as_is(to: str) -> str:
    return to


async def no_dialer(services: Services, app: Application, uri: str, from_user: str,
                    parent: CallSession | None) -> CallSession:
    raise AssertionError("no outbound legs in this test")


@dataclass
class Fakes:
    """The services of a session, each a fake you can inspect."""

    engine: FakeEngine = field(default_factory=FakeEngine)
    outbox: FakeOutbox = field(default_factory=FakeOutbox)
    calls: FakeLedger = field(default_factory=FakeLedger)
    hooks: Any = field(default_factory=NoHooks)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    @property
    def services(self) -> Services:
        return Services(engine=self.engine, hooks=self.hooks, media=NoMedia(), rooms=NoRooms(),
                        outbox=self.outbox, calls=self.calls, dialer=no_dialer,
                        limits=self.limits, dial_target=_as_is,
                        ringback=Path("/ringback.wav"))

    def session(self, leg: ev.IncomingCall | None = None, app: Application = APP
                ) -> CallSession:
        return CallSession.inbound(self.services, leg or incoming(), app)


def incoming(call_id: str = "call_1") -> ev.IncomingCall:
    return ev.IncomingCall(call_id=call_id, sip_call_id="sip-1", from_uri="<sip:+1555@x>",
                           to_uri="<sip:1001@gw>", from_user="+1555", dialed="1001",
                           source="127.0.0.1:5062")
