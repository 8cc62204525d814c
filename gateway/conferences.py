"""Live conference rooms: the pure RoomBook plus the bridge commands it implies.

`join` returns only when the caller leaves the room without hanging up (the room
ended, or the API removed them); a hang-up cancels it, and its `finally` takes
the caller out of the room (ending the room for everyone if they joined with
end_on_exit).

Large rooms mix only their current speakers: `run_speaker_detection` polls the
members' levels from the bridge and moves the links as people start and stop talking.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
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
from sip.commands import ApplyLinks

# Ask the bridge for the current level (0-255) of each call.
LevelQuery = Callable[[tuple[str, ...]], Awaitable[dict[str, int]]]

log = logging.getLogger("minivoice.conference")


class Conferences:
    def __init__(self, send: Callable[[ApplyLinks], Any],
                 cfg: RoomsConfig | None = None) -> None:
        self.cfg = cfg or RoomsConfig()
        self.book = RoomBook(self.cfg.full_mesh_max)
        self._send = send
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._speaker_state: dict[RoomKey, SpeakerState] = {}

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
            for room in self.book.large_rooms():
                try:
                    heard = await levels(tuple(room.members))
                except Exception as exc:  # a failed poll must not stop detection
                    log.warning("speaker poll failed", extra={"room": room.key.name,
                                                              "error": str(exc)})
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

    async def join(
        self, key: RoomKey, call_id: str, *, mute: bool, end_on_exit: bool,
        always_source: bool = False,
    ) -> str:
        """Put `call_id` in the room; return why it left ("room_ended" | "removed").
        Raises RoomFull when the room already has rooms.max_participants members."""
        existing = self.book.rooms.get(key)
        if existing is not None and len(existing.members) >= self.cfg.max_participants:
            log.warning("conference.full", extra={
                "call_id": call_id, "room": key.name, "customer_id": key.customer_id,
                "limit": self.cfg.max_participants})
            raise RoomFull(key.name)
        self._apply(self.book.join(key, call_id, muted=mute, end_on_exit=end_on_exit,
                                   now=time.time(), always_source=always_source))
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

    def leave(self, call_id: str) -> None:
        key = self.book.room_of[call_id]
        dep = self.book.leave(call_id)
        log.info("conference.leave", extra={"call_id": call_id, "room": key.name,
                                            "room_ended": dep.room_ended})
        self._after_departure(dep, "room_ended")

    def set_muted(self, call_id: str, muted: bool) -> None:
        self._apply(self.book.set_muted(call_id, muted))

    def remove(self, call_id: str) -> None:
        """Take a caller out of its room alive: their next action runs."""
        self.leave(call_id)
        waiter = self._waiters.get(call_id)
        if waiter and not waiter.done():
            waiter.set_result("removed")

    def end(self, key: RoomKey) -> None:
        log.info("conference.end", extra={"room": key.name, "customer_id": key.customer_id})
        self._after_departure(self.book.end(key), "room_ended")

    def _after_departure(self, dep: Departure, why: str) -> None:
        self._apply(dep.change)
        for cid in dep.evicted:
            waiter = self._waiters.get(cid)
            if waiter and not waiter.done():
                waiter.set_result(why)

    def _apply(self, change: LinkChange) -> None:
        if change:
            self._send(ApplyLinks(change.connect, change.disconnect))
