"""`conference`: put the caller in a named room (docs/api.md, section 4)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.actions.base import Action, CallContext, Outcome, RoomFull
from gateway.strict import URL, checked, length, pattern

ROOM_PATTERN = r"[A-Za-z0-9._-]{1,128}"


@dataclass(frozen=True)
class Conference(Action):
    name = "conference"

    room: str = checked(
        pattern(ROOM_PATTERN, "1-128 characters of letters, digits, '.', '-' or '_'")
    )
    mute: bool = False
    end_on_exit: bool = False
    record: bool = False  # record the room from when this caller joins, unless it is already
    # Where the room's events go; the first participant that gives one sets it for the room.
    status_url: str | None = checked(URL, length(1, 2048), default=None)

    async def run(self, call: CallContext) -> Outcome:
        await call.answer()
        if self.status_url:
            call.room_status_url(self.status_url)
        if self.record:
            call.record_room(self.room)
        # Returns only when the caller leaves the room alive (room ended, removed by
        # the API); a hang-up cancels us instead. The next action then runs.
        try:
            await call.conference(self.room, mute=self.mute, end_on_exit=self.end_on_exit)
        except RoomFull:  # as if the room had ended at once: the application's next action
            call.note("conference.full", room=self.room)
        return None
