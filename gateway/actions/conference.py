"""`conference`: put the caller in a named room (docs/api.md, section 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.actions.base import Action, CallContext, Outcome, RoomFull
from gateway.media_cache import MediaError
from gateway.strict import URL, between, checked, length, pattern
from media.rooms import MemberOptions

ROOM_PATTERN = r"[A-Za-z0-9._-]{1,128}"


def _url_or_empty(value: str) -> str | None:
    return None if value == "" else URL(value)


@dataclass(frozen=True)
class Conference(Action):
    name = "conference"

    room: str = checked(
        pattern(ROOM_PATTERN, "1-128 characters of letters, digits, '.', '-' or '_'")
    )
    mute: bool = False
    end_on_exit: bool = False
    start_on_enter: bool = True
    wait_url: str = checked(_url_or_empty, default="")
    beep: Literal["none", "enter", "exit", "both"] = "none"
    max_participants: int | None = checked(between(2, 1000), default=None)
    dtmf_controls: bool | None = None
    record: bool = False  # record the room from when this caller joins, unless it is already
    # Where the room's events go; the first participant that gives one sets it for the room.
    status_url: str | None = checked(URL, length(1, 2048), default=None)

    async def run(self, call: CallContext) -> Outcome:
        await call.answer()
        wait = None
        if self.wait_url:
            try:
                wait = str(await call.prompt_file(self.wait_url))
            except MediaError as exc:  # joins all the same, waiting in silence
                call.note("conference.wait_url_failed", room=self.room, message=str(exc))
        options = MemberOptions(
            muted=self.mute, end_on_exit=self.end_on_exit, start_on_enter=self.start_on_enter,
            wait=wait, beep=self.beep, max_participants=self.max_participants,
            dtmf_controls=self.dtmf_controls)
        # (after the wait music is ready: the recording starts once the caller has joined)
        if self.status_url:
            call.room_status_url(self.status_url)
        if self.record:
            call.record_room(self.room)
        # Returns only when the caller leaves the room alive (room ended, removed by
        # the API, `#`); a hang-up cancels us instead. The next action then runs.
        try:
            await call.conference(self.room, options)
        except RoomFull:  # as if the room had ended at once: the application's next action
            call.note("conference.full", room=self.room, reason="room_full")
        return None
