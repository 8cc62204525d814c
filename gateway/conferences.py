"""Live conference rooms: the pure RoomBook plus the bridge commands it implies.

`join` returns only when the caller leaves the room without hanging up (the room
ended, or the API removed them); a hang-up cancels it, and its `finally` takes
the caller out of the room (ending the room for everyone if they joined with
end_on_exit).

Large rooms mix only their current speakers: `run_speaker_detection` polls the
members' levels from the bridge and moves the links as people start and stop talking.

Rooms with a status_url (set by the first participant that gives one) get room events
(conference.started/ended, participant.joined/left/muted/unmuted/speaking.*): each is handed
to `on_event` in the order it happened; `notify` is the one place they go through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.actions.base import RoomFull
from gateway.config import RoomsConfig
from media.rooms import (
    Departure,
    LinkChange,
    Room,
    RoomBook,
    RoomKey,
    SpeakerState,
    choose_speakers,
)
from media.speaking import SpeakingTracker
from sip.commands import ApplyLinks

# Ask the bridge for the current level (0-255) of each call.
LevelQuery = Callable[[tuple[str, ...]], Awaitable[dict[str, int]]]

log = logging.getLogger("minivoice.conference")


@dataclass(frozen=True)
class StatusHook:
    """Where a room's events go, and the application whose secret signs them."""

    url: str
    app_id: str


# (room, event name, the participant's call ID or None, participants after the event, data)
RoomEventSink = Callable[[RoomKey, str, str | None, int, dict[str, Any]], None]


class Conferences:
    def __init__(self, send: Callable[[ApplyLinks], Any],
                 cfg: RoomsConfig | None = None) -> None:
        self.cfg = cfg or RoomsConfig()
        self.book = RoomBook(self.cfg.full_mesh_max)
        self._send = send
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._speaker_state: dict[RoomKey, SpeakerState] = {}
        # Called with the key of each room that ends (its recording stops).
        self.on_room_ended: Callable[[RoomKey], None] = lambda key: None
        self.status: dict[RoomKey, StatusHook] = {}
        # Always-mixed members (a cluster's cascade legs) are links, not participants: no
        # room events name them.
        self._internal: set[str] = set()
        self.on_event: RoomEventSink = lambda *event: None
        self._speaking: dict[RoomKey, SpeakingTracker] = {}

    def live(self) -> list[Room]:
        """Every live room."""
        return list(self.book.rooms.values())

    def room(self, key: RoomKey) -> Room | None:
        return self.book.room(key)

    async def run_speaker_detection(self, levels: LevelQuery) -> None:
        """Forever: every poll, pick the speakers of each large room and relink it."""
        period = self.cfg.speaker_poll_ms / 1000
        while True:
            await asyncio.sleep(period)
            # Large rooms choose their speakers; rooms with a status_url report who speaks.
            polled = {r.key: r for r in self.book.large_rooms()}
            polled.update((k, r) for k, r in self.book.rooms.items() if k in self.status)
            for room in list(polled.values()):
                try:
                    heard = await levels(tuple(room.members))
                except Exception as exc:  # a failed poll must not stop detection
                    log.warning("speaker poll failed", extra={"room": room.key.name,
                                                              "error": str(exc)})
                    continue
                if room.key in self.status:
                    self._report_speaking(room.key, heard)
                if not room.large or self.book.rooms.get(room.key) is not room:
                    continue
                state = self._speaker_state.setdefault(room.key, SpeakerState())
                speakers = choose_speakers(
                    heard, room.speakers, state, now=time.monotonic(),
                    max_speakers=self.cfg.max_speakers, threshold=self.cfg.speaker_level,
                    hold_s=self.cfg.speaker_hold_s)
                if speakers != room.speakers:
                    self._apply(self.book.set_speakers(room.key, speakers))
            for key in [k for k in self._speaker_state if k not in self.book.rooms]:
                del self._speaker_state[key]

    def _report_speaking(self, key: RoomKey, heard: dict[str, int]) -> None:
        room = self.book.rooms.get(key)
        if room is None:
            return
        tracker = self._speaking.setdefault(key, SpeakingTracker(
            self.cfg.speaker_level, self.cfg.speaker_hold_s, min_gap_s=1.0))
        # A muted participant is not heard by anyone: not speaking, whatever they say.
        levels = {cid: 0 if room.members[cid].muted else heard.get(cid, 0)
                  for cid in room.members}
        for cid, started in tracker.update(levels, time.monotonic()):
            self.notify(key, "participant.speaking." + ("started" if started else "stopped"),
                        cid)

    def notify(self, key: RoomKey, event: str, call_id: str | None = None,
               data: dict[str, Any] | None = None, participants: int | None = None) -> None:
        """Send a room event, if the room has a status_url. `participants` defaults to the
        room's size now. Also the hook for participant.held / participant.unheld."""
        if key not in self.status or call_id in self._internal:
            return
        room = self.book.rooms.get(key)
        count = participants if participants is not None else len(room.members) if room else 0
        self.on_event(key, event, call_id, count, data or {})

    def _departed(self, key: RoomKey, before: int, gone: list[str], ended: bool) -> None:
        for i, cid in enumerate(gone):
            self.notify(key, "participant.left", cid, participants=before - i - 1)
        if ended:
            self.notify(key, "conference.ended", participants=0)
            self.status.pop(key, None)
            self._speaking.pop(key, None)

    async def join(
        self, key: RoomKey, call_id: str, *, mute: bool, end_on_exit: bool,
        always_source: bool = False,
        status: StatusHook | None = None,
    ) -> str:
        """Put `call_id` in the room; return why it left ("room_ended" | "removed").
        Raises RoomFull when the room already has rooms.max_participants members.
        `status`: the room's status_url, if it has none yet."""
        existing = self.book.rooms.get(key)
        if existing is not None and len(existing.members) >= self.cfg.max_participants:
            log.warning("conference.full", extra={
                "call_id": call_id, "room": key.name, "customer_id": key.customer_id,
                "limit": self.cfg.max_participants})
            raise RoomFull(key.name)
        created = key not in self.book.rooms
        if always_source:
            self._internal.add(call_id)
        self._apply(self.book.join(key, call_id, muted=mute, end_on_exit=end_on_exit,
                                   now=time.time(), always_source=always_source))
        if status is not None:
            self.status.setdefault(key, status)
        if created:
            self.notify(key, "conference.started")
        self.notify(key, "participant.joined", call_id, {"muted": mute})
        room = self.book.rooms[key]
        log.info("conference.join", extra={
            "call_id": call_id, "room": key.name, "customer_id": key.customer_id,
            "mute": mute, "end_on_exit": end_on_exit, "members": len(room.members)})
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[call_id] = waiter
        try:
            return await waiter
        finally:
            self._waiters.pop(call_id, None)
            if call_id in self.book.room_of:  # cancelled (hung up): leave now
                self.leave(call_id)
            self._internal.discard(call_id)

    def leave(self, call_id: str) -> None:
        key = self.book.room_of[call_id]
        before = len(self.book.rooms[key].members)
        dep = self.book.leave(call_id)
        log.info("conference.leave", extra={"call_id": call_id, "room": key.name,
                                            "room_ended": dep.room_ended})
        self._after_departure(dep, "room_ended")
        self._departed(key, before, [call_id, *dep.evicted], dep.room_ended)
        if dep.room_ended:
            self.on_room_ended(key)

    def set_muted(self, call_id: str, muted: bool) -> None:
        key = self.book.room_of.get(call_id)
        was = self.book.rooms[key].members[call_id].muted if key else None
        self._apply(self.book.set_muted(call_id, muted))
        if key is not None and was != muted:
            self.notify(key, "participant.muted" if muted else "participant.unmuted", call_id)

    def remove(self, call_id: str) -> None:
        """Take a caller out of its room alive: their next action runs."""
        self.leave(call_id)
        waiter = self._waiters.get(call_id)
        if waiter and not waiter.done():
            waiter.set_result("removed")

    def end(self, key: RoomKey) -> None:
        log.info("conference.end", extra={"room": key.name, "customer_id": key.customer_id})
        room = self.book.rooms.get(key)
        members = list(room.members) if room else []
        self._after_departure(self.book.end(key), "room_ended")
        self._departed(key, len(members), members, True)
        self.on_room_ended(key)

    def _after_departure(self, dep: Departure, why: str) -> None:
        self._apply(dep.change)
        for cid in dep.evicted:
            waiter = self._waiters.get(cid)
            if waiter and not waiter.done():
                waiter.set_result(why)

    def _apply(self, change: LinkChange) -> None:
        if change:
            self._send(ApplyLinks(change.connect, change.disconnect))
