"""Room control without SIP: the conference action's new fields, the REST bodies (hostile ones
included), and the Conferences orchestration (beeps, announcements, DTMF keys, limits) with
the bridge commands recorded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.actions.base import RoomFull
from gateway.actions.conference import Conference
from gateway.actions.play import Play
from gateway.actions.say import Say
from gateway.actions.schema import parse_document
from gateway.conferences import Conferences, TooManyAnnouncements
from gateway.config import RoomsConfig
from gateway.media_cache import MediaError
from gateway.room_requests import MAX_SPEAK_TO, parse_announcement, parse_patch
from gateway.strict import ValidationError
from media.rooms import MemberOptions, RoomKey
from sip.commands import ApplyLinks
from tests.fakes import FakeCall
from tests.waiting import eventually

KEY = RoomKey("cust", "r1")


# -- the conference action -----------------------------------------------------------------
def conference_errors(fields: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as err:
        parse_document({"actions": [{"conference": {"room": "r", **fields}}]})
    return {d.path.rsplit(".", 1)[-1]: d.reason for d in err.value.details}


def test_conference_fields_are_strict() -> None:
    (action,) = parse_document({"actions": [{"conference": {
        "room": "r", "start_on_enter": False, "wait_url": "https://m.example/a.mp3",
        "beep": "both", "max_participants": 2, "dtmf_controls": True}}]})
    assert action == Conference("r", start_on_enter=False, wait_url="https://m.example/a.mp3",
                                beep="both", max_participants=2, dtmf_controls=True)
    assert parse_document({"actions": [{"conference": {"room": "r", "wait_url": ""}}]})
    errors = conference_errors({"start_on_enter": "no", "wait_url": "ftp://x", "beep": "loud",
                                "max_participants": 1, "dtmf_controls": 1})
    assert set(errors) == {"start_on_enter", "wait_url", "beep", "max_participants",
                           "dtmf_controls"}, errors
    assert "must be >= 2" in conference_errors({"max_participants": 1})["max_participants"]
    assert "must be <= 1000" in conference_errors({"max_participants": 1001})["max_participants"]
    assert conference_errors({"max_participants": True})  # a bool is not an int
    assert conference_errors({"beep": 1})


class WaitCall(FakeCall):
    def __init__(self, fail: bool) -> None:
        super().__init__()
        self.fail = fail
        self.options: list[MemberOptions] = []

    async def prompt_file(self, url: str) -> Path:
        if self.fail:
            raise MediaError(f"{url}: HTTP 404")
        return Path("/cache/music.wav")

    async def conference(self, room: str, options: MemberOptions) -> None:
        self.options.append(options)


async def test_wait_url_is_fetched_and_a_failure_joins_in_silence() -> None:
    ok = WaitCall(fail=False)
    await Conference("r", wait_url="http://m.test/music.wav", beep="enter").run(ok)
    assert ok.options[0].wait == "/cache/music.wav" and ok.options[0].beep == "enter"
    failing = WaitCall(fail=True)
    await Conference("r", wait_url="http://m.test/missing.wav").run(failing)
    assert failing.options[0].wait is None  # joined all the same
    (event, fields), = failing.timeline
    assert event == "conference.wait_url_failed" and "HTTP 404" in fields["message"]


# -- REST bodies ----------------------------------------------------------------------------
def patch_paths(body: Any) -> list[str]:
    with pytest.raises(ValidationError) as err:
        parse_patch(json.dumps(body).encode() if not isinstance(body, bytes) else body)
    return [d.path for d in err.value.details]


def test_patch_bodies() -> None:
    p = parse_patch(b'{"muted": true, "hold": false}')
    assert (p.muted, p.hold, p.sets_speak_to) == (True, False, False)
    p = parse_patch(b'{"speak_to": null}')
    assert p.sets_speak_to and p.speak_to is None
    p = parse_patch(b'{"speak_to": ["call_a", "call_b", "call_a"]}')
    assert p.speak_to == ("call_a", "call_b")
    assert parse_patch(b'{"speak_to": []}').speak_to == ()
    # every problem at once
    assert sorted(patch_paths({"muted": "yes", "hold": None, "mute": 1, "speak_to": 5})) == [
        "hold", "mute", "muted", "speak_to"]
    assert patch_paths({}) == [""]
    assert patch_paths(b"[1]") == [""] and patch_paths(b"{") == [""] and patch_paths(b"\xff")
    assert patch_paths({"speak_to": ["call_a", "x", 3, None]}) == [
        "speak_to[1]", "speak_to[2]", "speak_to[3]"]


def test_patch_bodies_crafted_to_break_it() -> None:
    assert patch_paths({"speak_to": [f"call_{i}" for i in range(MAX_SPEAK_TO + 1)]}) == [
        "speak_to"]
    # many bad entries: a bounded number of details, not one per entry
    assert len(patch_paths({"speak_to": ["x"] * MAX_SPEAK_TO})) == 10
    assert patch_paths({"speak_to": ["call_" + "a" * 65]}) == ["speak_to[0]"]
    assert patch_paths({"k" * 10000: 1})[0] == "k" * 64  # unknown keys are cut short
    assert patch_paths(b"[" * 100000) == [""]  # nesting past the stack: still a 400


def test_announcement_bodies() -> None:
    assert parse_announcement(b'{"say": {"text": "hello"}}') == Say("hello")
    assert parse_announcement(b'{"play": {"url": "https://x.test/a.wav", "loop": 2}}') == Play(
        "https://x.test/a.wav", loop=2)
    for bad in (b"{}", b'{"say": {"text": "a"}, "play": {"url": "https://x"}}', b'{"sing": 1}',
                b"[]", b'{"say": {"text": ""}}', b'{"say": {"text": "a", "loop": 0}}',
                b'{"play": {"url": "https://x.test/a", "loop": 11}}',
                b'{"say": {"text": "a", "volume": 3}}', b'{"say": "hello"}',
                b'{"say": {"text": "' + b"a" * 4001 + b'"}}'):
        with pytest.raises(ValidationError) as err:
            parse_announcement(bad)
        assert err.value.details, bad


# -- Conferences with the bridge commands recorded -------------------------------------------
class Caller:
    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.digits: asyncio.Queue[str] = asyncio.Queue()
        self.notes: list[tuple[str, dict[str, Any]]] = []

    def note(self, event: str, **fields: Any) -> None:
        self.notes.append((event, fields))

    def clear_digits(self) -> None:
        while not self.digits.empty():
            self.digits.get_nowait()

    async def next_digit(self, timeout: float | None) -> str | None:
        return await self.digits.get()


def rooms(**cfg: Any) -> tuple[Conferences, list[ApplyLinks]]:
    sent: list[ApplyLinks] = []
    conf = Conferences(sent.append, RoomsConfig(**cfg))
    conf.beeps = {"enter": Path("/beep-enter.wav"), "exit": Path("/beep-exit.wav")}
    return conf, sent


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_beeps_go_to_the_others_and_end_when_played() -> None:
    conf, sent = rooms()
    a = asyncio.create_task(conf.join(KEY, "a", MemberOptions(beep="both")))
    await settle()
    assert not any(c.start for c in sent)  # alone: nobody to beep for
    b = asyncio.create_task(conf.join(KEY, "b", MemberOptions(beep="both")))
    await settle()
    beep = sent[-1]
    assert [p.path for p in beep.start] == ["/beep-enter.wav"]
    assert [(lk.src, lk.dst) for lk in beep.connect] == [(beep.start[0].name, "a")]
    conf.on_player_done(beep.start[0].name)
    assert sent[-1].stop == (beep.start[0].name,)
    b.cancel()  # b hangs up: a hears the exit beep
    await settle()
    assert [p.path for p in sent[-1].start] == ["/beep-exit.wav"]
    a.cancel()
    await settle()
    assert conf.book.rooms == {}


async def test_announcements_play_loop_times_and_are_limited_per_room() -> None:
    conf, sent = rooms(max_announcements=2)
    task = asyncio.create_task(conf.join(KEY, "a", MemberOptions()))
    await settle()
    gate = asyncio.Event()

    async def slow() -> Path:
        await gate.wait()
        return Path("/ann.wav")

    async def broken() -> Path:
        raise MediaError("cannot fetch")

    conf.announce(KEY, slow, 2)
    conf.announce(KEY, broken, 1)
    with pytest.raises(TooManyAnnouncements):
        conf.announce(KEY, slow, 1)
    await settle()  # the broken one is over: its slot is free again
    conf.announce(KEY, slow, 1)
    gate.set()
    await settle()
    started = [p.name for c in sent for p in c.start if p.path == "/ann.wav"]
    assert len(started) == 2
    for name in started:
        conf.on_player_done(name)
    await settle()
    started = [p.name for c in sent for p in c.start if p.path == "/ann.wav"]
    assert len(started) == 3  # the loop-2 announcement's second time
    conf.on_player_done(started[-1])
    await eventually(lambda: not conf._announcing)
    task.cancel()


async def test_dtmf_keys_toggle_mute_and_leave() -> None:
    conf, _ = rooms(dtmf_controls=True)  # the config's default applies (option not given)
    caller = Caller("a")
    caller.digits.put_nowait("9")  # pressed before joining: dropped
    joined = asyncio.create_task(conf.join(KEY, "a", MemberOptions(), caller))
    other = asyncio.create_task(conf.join(KEY, "b", MemberOptions()))
    await settle()
    for d in "*6":
        caller.digits.put_nowait(d)
    await eventually(lambda: conf.book.rooms[KEY].members["a"].muted)
    for d in "1*6":
        caller.digits.put_nowait(d)
    await eventually(lambda: not conf.book.rooms[KEY].members["a"].muted)
    caller.digits.put_nowait("#")
    assert await asyncio.wait_for(joined, 2) == "dtmf"
    assert "a" not in conf.book.room_of
    assert [e for e, _ in caller.notes] == ["participant.muted", "participant.unmuted"]
    other.cancel()


async def test_dtmf_keys_are_off_unless_asked() -> None:
    conf, _ = rooms()
    caller = Caller("a")
    joined = asyncio.create_task(conf.join(KEY, "a", MemberOptions(), caller))
    await settle()
    caller.digits.put_nowait("#")
    await settle()
    assert not joined.done() and caller.digits.qsize() == 1  # left for a later gather
    joined.cancel()


async def test_a_participants_own_max_participants() -> None:
    conf, _ = rooms()
    tasks = [asyncio.create_task(conf.join(KEY, c, MemberOptions())) for c in "ab"]
    await settle()
    with pytest.raises(RoomFull):
        await conf.join(KEY, "c", MemberOptions(max_participants=2))
    assert set(conf.book.rooms[KEY].members) == {"a", "b"}
    assert conf.limit(MemberOptions(max_participants=500)) == 500
    small, _ = rooms(max_participants=10)
    assert small.limit(MemberOptions(max_participants=500)) == 10  # the config caps it
    for t in tasks:
        t.cancel()


async def test_close_stops_announcements_under_way() -> None:
    conf, _ = rooms()
    joined = asyncio.create_task(conf.join(KEY, "a", MemberOptions()))
    await settle()

    async def never() -> Path:
        await asyncio.Event().wait()
        return Path("/x.wav")

    conf.announce(KEY, never, 1)
    await conf.close()
    assert not conf._tasks and not conf._announcing
    joined.cancel()
