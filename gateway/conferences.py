"""Live conference rooms: the pure RoomBook plus the bridge commands it implies.

`join` returns only when the caller leaves the room without hanging up (the room
ended, the API removed them, or they pressed `#` with DTMF controls on); a hang-up
cancels it, and its `finally` takes the caller out of the room (ending the room for
everyone if they joined with end_on_exit).

Large rooms mix only their current speakers: `run_speaker_detection` polls the
members' levels from the bridge and moves the links as people start and stop talking.

Every room event (join, leave, mute, hold, coach, announcement) is logged through `_event`
(and noted in the participant's timeline). Rooms with a status_url (set by the first
participant that gives one) also get room events (conference.started/ended,
participant.joined/left/muted/unmuted/held/unheld/speaking.*): each is handed to `on_event`
in the order it happened; `notify` is the one place they go through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.actions.base import RoomFull
from gateway.config import RoomsConfig
from gateway.stopwatch import bounded
from media.rooms import (
    Departure,
    LinkChange,
    MemberOptions,
    Room,
    RoomBook,
    RoomError,
    RoomKey,
    RoomKeys,
    SpeakerState,
    choose_speakers,
)
from media.speaking import SpeakingTracker
from sip.commands import ApplyLinks

# Ask the bridge for the current level (0-255) of each call.
LevelQuery = Callable[[tuple[str, ...]], Awaitable[dict[str, int]]]

log = logging.getLogger("minivoice.conference")

CLOSE_S = 0.1  # at stop, announcements' tasks end (gateway.stopwatch's budget)


class RoomCaller(Protocol):
    """What a room needs of the call in it: its timeline and its DTMF digits."""

    call_id: str

    def note(self, event: str, **fields: Any) -> None: ...

    def clear_digits(self) -> None: ...

    async def next_digit(self, timeout: float | None) -> str | None: ...


class TooManyAnnouncements(Exception):
    pass


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
        self.book = RoomBook(self.cfg.full_mesh_max, self.cfg.max_wait_sounds)
        self._send = send
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._speaker_state: dict[RoomKey, SpeakerState] = {}
        self._options: dict[str, MemberOptions] = {}
        self._callers: dict[str, RoomCaller] = {}
        # "enter" / "exit" -> a playable beep file (set by the gateway at start)
        self.beeps: dict[str, Path] = {}
        self._announcing: dict[RoomKey, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._oneshot_done: dict[str, asyncio.Future[None]] = {}
        # Called with the key of each room that ends (its recording stops).
        self.on_room_ended: Callable[[RoomKey], None] = lambda key: None
        # Called with the key of a room that a participant with end_on_exit ended by
        # leaving (a cluster ends the room's parts on the other nodes too).
        self.on_ended_by_exit: Callable[[RoomKey], None] = lambda key: None
        self.status: dict[RoomKey, StatusHook] = {}
        # Always-mixed members (a cluster's cascade legs) are links, not participants: no
        # room events name them.
        self._internal: set[str] = set()
        self.on_event: RoomEventSink = lambda *event: None
        # A cluster's node (gateway.cluster.node) sends conference.started / ended itself,
        # once per room cluster-wide (rather than once per node's part of the room), and
        # counts the other nodes' participants in `participants`.
        self.room_wide_events_here = True
        self.remote_count: Callable[[RoomKey], int] = lambda key: 0
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
                mixed = set(room.mixed())  # held and waiting members are heard by nobody
                state = self._speaker_state.setdefault(room.key, SpeakerState())
                speakers = choose_speakers(
                    {c: v for c, v in heard.items() if c in mixed}, room.speakers, state,
                    now=time.monotonic(),
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
        # A participant nobody hears (muted, held, waiting) is not speaking, whatever they say.
        mixed = set(room.mixed())
        levels = {cid: 0 if m.muted or cid not in mixed else heard.get(cid, 0)
                  for cid, m in room.members.items()}
        for cid, started in tracker.update(levels, time.monotonic()):
            self.notify(key, "participant.speaking." + ("started" if started else "stopped"),
                        cid)

    def notify(self, key: RoomKey, event: str, call_id: str | None = None,
               data: dict[str, Any] | None = None, participants: int | None = None) -> None:
        """Send a room event, if the room has a status_url. `participants` defaults to the
        room's size now. A cluster's cascade legs are named in none."""
        if key not in self.status or call_id in self._internal:
            return
        count = participants if participants is not None else self._count(key)
        self.on_event(key, event, call_id, count + self.remote_count(key), data or {})

    def notify_room(self, key: RoomKey, event: str, hook: StatusHook, participants: int
                    ) -> None:
        """A room-wide event (a cluster's conference.started / ended) sent to `hook`,
        whether or not this node's part of the room has (still) a status_url."""
        had = self.status.get(key)
        self.status[key] = hook
        try:
            self.on_event(key, event, None, participants, {})
        finally:
            if had is None:
                self.status.pop(key, None)
            else:
                self.status[key] = had

    def _count(self, key: RoomKey) -> int:
        """The room's participants here: its members but the links to other nodes."""
        room = self.book.rooms.get(key)
        return sum(1 for c in room.members if c not in self._internal) if room else 0

    def _departed(self, key: RoomKey, before: int, gone: list[str], ended: bool) -> None:
        left = before
        for cid in gone:
            if cid not in self._internal:
                left -= 1
            self.notify(key, "participant.left", cid, participants=left)
        if ended:
            if self.room_wide_events_here:
                self.notify(key, "conference.ended", participants=0)
            self.status.pop(key, None)
            self._speaking.pop(key, None)

    def limit(self, opts: MemberOptions) -> int:
        """The room size a joining caller accepts: its own max_participants, within the
        config's."""
        own = opts.max_participants or self.cfg.max_participants
        return min(own, self.cfg.max_participants)

    async def join(self, key: RoomKey, call_id: str, opts: MemberOptions,
                   caller: RoomCaller | None = None, status: StatusHook | None = None) -> str:
        """Put `call_id` in the room; return why it left ("room_ended" | "removed" |
        "dtmf"). Raises RoomFull when the room already has its limit of members.
        `status`: the room's status_url, if it has none yet."""
        existing = self.book.rooms.get(key)
        limit = self.limit(opts)
        if existing is not None and len(existing.members) >= limit:
            self._event("conference.full", key, call_id, limit=limit,
                        members=len(existing.members), level=logging.WARNING)
            raise RoomFull(key.name)
        created = key not in self.book.rooms
        if opts.always_source:
            self._internal.add(call_id)
        self._apply(self.book.join(key, call_id, muted=opts.muted, end_on_exit=opts.end_on_exit,
                                   now=time.time(), start_on_enter=opts.start_on_enter,
                                   wait=opts.wait, always_source=opts.always_source))
        self._options[call_id] = opts
        if caller is not None:
            self._callers[call_id] = caller
        if status is not None:
            self.status.setdefault(key, status)
        if created and self.room_wide_events_here:
            self.notify(key, "conference.started")
        self.notify(key, "participant.joined", call_id, {"muted": opts.muted})
        room = self.book.rooms[key]
        if opts.wait is not None and room.wait_sound(call_id) != opts.wait:
            # rooms.max_wait_sounds: the room plays the first few distinct sounds only
            self._note(call_id, "conference.wait_url_limited", key,
                       max_wait_sounds=room.max_wait_sounds)
        self._event("conference.join", key, call_id, mute=opts.muted,
                    end_on_exit=opts.end_on_exit, start_on_enter=opts.start_on_enter,
                    members=len(room.members))
        if opts.beep in ("enter", "both"):
            self._beep(key, "enter", call_id)
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[call_id] = waiter
        keys = None
        dtmf = self.cfg.dtmf_controls if opts.dtmf_controls is None else opts.dtmf_controls
        if dtmf and caller is not None:
            caller.clear_digits()
            keys = asyncio.create_task(self._keys(call_id, caller))
        try:
            return await waiter
        finally:
            if keys is not None:
                keys.cancel()
            self._waiters.pop(call_id, None)
            if call_id in self.book.room_of:  # cancelled (hung up): leave now
                self.leave(call_id)
            self._options.pop(call_id, None)
            self._callers.pop(call_id, None)
            self._internal.discard(call_id)

    async def _keys(self, call_id: str, caller: RoomCaller) -> None:
        """DTMF controls: *6 toggles the caller's mute, # takes them out of the room. The
        digits arrive out of band (RFC 4733, SIP INFO): none of them reaches the mix."""
        keys = RoomKeys()
        while call_id in self.book.room_of:
            digit = await caller.next_digit(None)
            if digit is None or call_id not in self.book.room_of:
                continue
            action = keys.press(digit, time.monotonic())
            if action == "toggle_mute":
                room = self.book.rooms[self.book.room_of[call_id]]
                self.set_muted(call_id, not room.members[call_id].muted, by="dtmf")
            elif action == "leave":
                self.remove(call_id, why="dtmf")
                return

    def leave(self, call_id: str) -> None:
        key = self.book.room_of[call_id]
        before = self._count(key)
        by_exit = self.book.rooms[key].members[call_id].end_on_exit
        dep = self.book.leave(call_id)
        self._event("conference.leave", key, call_id, room_ended=dep.room_ended)
        self._after_departure(dep, "room_ended")
        self._departed(key, before, [call_id, *dep.evicted], dep.room_ended)
        if dep.room_ended:
            self.on_room_ended(key)
            if by_exit:
                self.on_ended_by_exit(key)
        opts = self._options.get(call_id)
        if opts is not None and opts.beep in ("exit", "both") and not dep.room_ended:
            self._beep(key, "exit", call_id)

    def set_muted(self, call_id: str, muted: bool, by: str = "api") -> None:
        key = self.book.room_of.get(call_id)
        was = self.book.rooms[key].members[call_id].muted if key else None
        self._apply(self.book.set_muted(call_id, muted))
        event = "participant.muted" if muted else "participant.unmuted"
        self._event(event, self.book.room_of[call_id], call_id, by=by)
        if key is not None and was != muted:
            self.notify(key, event, call_id)

    def set_held(self, call_id: str, held: bool) -> None:
        key = self.book.room_of.get(call_id)
        was = self.book.rooms[key].members[call_id].held if key else None
        self._apply(self.book.set_held(call_id, held))
        event = "participant.held" if held else "participant.unheld"
        self._event(event, self.book.room_of[call_id], call_id)
        if key is not None and was != held:
            self.notify(key, event, call_id)

    def set_start_on_enter(self, call_id: str, start_on_enter: bool) -> None:
        """Change whether a member starts the room (a cluster's cascade legs)."""
        key = self.book.room_of.get(call_id)
        if key is None:
            return
        was = self.book.rooms[key].started
        self._apply(self.book.set_start_on_enter(call_id, start_on_enter))
        room = self.book.rooms[key]
        self._event("conference.start_on_enter", key, call_id, start_on_enter=start_on_enter,
                    started=room.started, was_started=was)

    def set_speak_to(self, call_id: str, targets: tuple[str, ...] | None) -> None:
        self._apply(self.book.set_speak_to(call_id, targets))
        self._event("participant.speak_to", self.book.room_of[call_id], call_id,
                    speak_to=",".join(targets) if targets is not None else "everyone")

    def remove(self, call_id: str, why: str = "removed") -> None:
        """Take a caller out of its room alive: their next action runs."""
        self.leave(call_id)
        waiter = self._waiters.get(call_id)
        if waiter and not waiter.done():
            waiter.set_result(why)

    def end(self, key: RoomKey) -> None:
        self._event("conference.end", key, None)
        room = self.book.rooms.get(key)
        members = list(room.members) if room else []
        before = self._count(key)
        self._after_departure(self.book.end(key), "room_ended")
        self._departed(key, before, members, True)
        self.on_room_ended(key)

    # -- one-shot players: beeps and announcements ------------------------------------------
    def _beep(self, key: RoomKey, kind: str, subject: str) -> None:
        """Heard by the others in the conversation, not by `subject` (who joined or left)."""
        room = self.book.rooms.get(key)
        path = self.beeps.get(kind)
        if room is None or path is None:
            return
        listeners = [c for c in room.mixed() if c != subject]
        if listeners:
            _, change = self.book.add_oneshot(key, str(path), listeners)
            self._apply(change)

    def announce(self, key: RoomKey, prepare: Callable[[], Awaitable[Path]], loop: int) -> None:
        """Play what `prepare` returns `loop` times to everyone in the room not on hold, mixed
        over the conversation; in the background. At most rooms.max_announcements at once
        per room (TooManyAnnouncements)."""
        if self._announcing.get(key, 0) >= self.cfg.max_announcements:
            raise TooManyAnnouncements(key.name)
        self._announcing[key] = self._announcing.get(key, 0) + 1
        task = asyncio.create_task(self._announce(key, prepare, loop))
        self._tasks.add(task)
        # when it is over, however (even cancelled before it ever ran): a slot is free again
        task.add_done_callback(lambda t: self._announced(key, t))

    def _announced(self, key: RoomKey, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        left = self._announcing.get(key, 1) - 1
        if left > 0:
            self._announcing[key] = left
        else:
            self._announcing.pop(key, None)

    async def _announce(self, key: RoomKey, prepare: Callable[[], Awaitable[Path]],
                        loop: int) -> None:
        try:
            path = await prepare()
            for _ in range(loop):
                room = self.book.rooms.get(key)
                if room is None:
                    return
                listeners = [c for c, m in room.members.items() if not m.held]
                name, change = self.book.add_oneshot(key, str(path), listeners)
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._oneshot_done[name] = done
                self._event("conference.announcement", key, None, player=name,
                            listeners=len(listeners))
                self._apply(change)
                try:
                    await done
                finally:
                    self._oneshot_done.pop(name, None)
        except Exception as exc:  # a prompt that cannot be fetched or spoken
            self._event("conference.announcement_failed", key, None, error=str(exc),
                        level=logging.WARNING)

    async def close(self) -> None:
        """Stop announcements still being prepared or played (the gateway is stopping), for
        CLOSE_S at most (gateway.stopwatch's budget)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await bounded("conferences", asyncio.gather(*self._tasks, return_exceptions=True),
                          CLOSE_S)

    def on_player_done(self, name: str) -> None:
        """A one-shot player ended (SIP thread's RoomPlayDone): unlink and stop it."""
        self._apply(self.book.end_oneshot(name))
        done = self._oneshot_done.get(name)
        if done is not None and not done.done():
            done.set_result(None)

    # -- internals -----------------------------------------------------------------------
    def _after_departure(self, dep: Departure, why: str) -> None:
        self._apply(dep.change)
        for name in dep.change.stop:  # announcements of a room that ended: over
            done = self._oneshot_done.get(name)
            if done is not None and not done.done():
                done.set_result(None)
        for cid in dep.evicted:
            waiter = self._waiters.get(cid)
            if waiter and not waiter.done():
                waiter.set_result(why)

    def _event(self, event: str, key: RoomKey, call_id: str | None,
               level: int = logging.INFO, **fields: Any) -> None:
        """A room event: logged here, and noted in the call's timeline for per-participant
        events. (Room webhooks, when they come, hook in here.)"""
        caller = self._callers.get(call_id) if call_id else None
        if caller is not None and event.startswith("participant."):
            caller.note(event, room=key.name, **fields)  # the timeline logs it too
            return
        log.log(level, event, extra={"call_id": call_id, "room": key.name,
                                     "customer_id": key.customer_id, **fields})

    def _note(self, call_id: str, event: str, key: RoomKey, **fields: Any) -> None:
        """In the caller's timeline (which logs it), or only logged for a caller without one."""
        caller = self._callers.get(call_id)
        if caller is not None:
            caller.note(event, room=key.name, **fields)
        else:
            log.info(event, extra={"call_id": call_id, "room": key.name, **fields})

    def _apply(self, change: LinkChange) -> None:
        if change:
            self._send(ApplyLinks(change.connect, change.disconnect, change.start, change.stop))


__all__ = ["Conferences", "RoomError", "TooManyAnnouncements"]
