"""Conference room bookkeeping as plain data.

A room is a set of members; what pjmedia's bridge must carry follows from it.
Each operation returns the *change* in links, which the SIP thread applies to the
bridge. Nothing here does I/O, so every rule (mute, leave, end on exit,
per-customer scoping, speakers) is testable without SIP.

Two topologies:
- small rooms (up to `full_mesh_max` members): every unmuted member transmits to
  every other member, never to itself: N*(N-1) links;
- large rooms: only the current *speakers* (at most a few, chosen by
  `choose_speakers` from the members' levels) transmit to the others; every member
  also transmits to MONITOR, a sink whose only job is to make the bridge read (and
  measure) each member's audio, so a silent member who starts talking is noticed.
  That is about K*N links instead of N*(N-1): a room of 500 costs what ~50 cost.

A room may also have *listeners*: receive-only endpoints that are not members (a
recorder). A listener hears whatever a member who says nothing would hear: every
source of the conversation (the speakers, in a large room, and the beeps and
announcements); it transmits to nobody and does not keep a room alive.

On top of either topology, per member (contract section 8):
- *held* members hear only their wait music (or nothing) and nobody hears them;
- *waiting* members (the room has no `start_on_enter` member yet) hear only their wait
  music and announcements, and nobody hears them;
- a member who is alone among the mixed members hears their wait music too;
- `speak_to` (coach/whisper) narrows who hears a member to the named members;
- *players* are link sources that are not calls: one looping wait-music player per (room,
  sound), started when someone first needs it and stopped when nobody does, and one-shot
  players (beeps, announcements) heard by the listeners fixed when they start. A room has at
  most `max_wait_sounds` distinct wait sounds (the first ones among its members, in the order
  they joined); a member whose own sound is beyond them hears the room's first sound.
A player's name starts with "@" (like MONITOR); the SIP thread creates the player when a
change's `start` names it and destroys it when `stop` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, order=True)
class RoomKey:
    """Rooms are scoped per customer: two customers' `support` rooms are different rooms."""

    customer_id: str
    name: str


MONITOR = "@monitor"  # link destination: the bridge's level monitor (a discarding sink)


@dataclass(frozen=True, order=True)
class Link:
    """`src`'s audio is mixed into what `dst` hears."""

    src: str
    dst: str


WAIT_PREFIX = "@wait:"  # looping wait-music players: "@wait:<room serial>:<sound>"
ONESHOT_PREFIX = "@once:"  # beeps and announcements: "@once:<room serial>:<n>"

Beep = Literal["none", "enter", "exit", "both"]


@dataclass(frozen=True, order=True)
class Player:
    """A file the bridge plays as a link source named `name` (looping, or once)."""

    name: str
    path: str
    loop: bool


@dataclass(frozen=True)
class LinkChange:
    connect: tuple[Link, ...] = ()
    disconnect: tuple[Link, ...] = ()
    start: tuple[Player, ...] = ()  # create these players before connecting
    stop: tuple[str, ...] = ()  # destroy these players after disconnecting

    def __bool__(self) -> bool:
        return bool(self.connect or self.disconnect or self.start or self.stop)


@dataclass(frozen=True)
class MemberOptions:
    """How a caller joins a room (the `conference` action's fields, resolved): `wait` is the
    wait music's playable file, None for silence; `max_participants` None = the config's."""

    muted: bool = False
    end_on_exit: bool = False
    start_on_enter: bool = True
    wait: str | None = None
    beep: Beep = "none"
    max_participants: int | None = None
    dtmf_controls: bool | None = None  # None = the config's default
    always_source: bool = False  # a cluster's cascade leg (see Member)


@dataclass
class Member:
    call_id: str
    muted: bool
    end_on_exit: bool
    joined_at: float
    start_on_enter: bool = True
    wait: str | None = None  # the wait music's file; None = silence
    held: bool = False
    speak_to: frozenset[str] | None = None  # None = everyone may hear this member
    # Always a source, even in a large room when not a speaker: a cluster's cascade leg
    # carries another node's speakers, whom this node's level polls cannot see.
    always_source: bool = False


@dataclass(frozen=True)
class OneShot:
    player: Player
    listeners: frozenset[str]


@dataclass
class Room:
    key: RoomKey
    created_at: float
    full_mesh_max: int = 20
    members: dict[str, Member] = field(default_factory=dict)
    speakers: set[str] = field(default_factory=set)  # used when the room is large
    serial: int = 0  # makes player names unique across rooms (and a room's later namesake)
    oneshots: dict[str, OneShot] = field(default_factory=dict)
    listeners: set[str] = field(default_factory=set)  # receive-only endpoints (recorders)
    # Distinct wait sounds (so looping players) the room plays at most; see wait_sound.
    max_wait_sounds: int = 4

    @property
    def started(self) -> bool:
        """The conversation runs while a `start_on_enter` member (held or not) is in the room."""
        return any(m.start_on_enter for m in self.members.values())

    def mixed(self) -> list[str]:
        """Members in the conversation: not held, and the room has started."""
        if not self.started:
            return []
        return [c for c, m in self.members.items() if not m.held]

    def waiting(self) -> list[str]:
        """Members waiting for a `start_on_enter` member (not held)."""
        if self.started:
            return []
        return [c for c, m in self.members.items() if not m.held]

    @property
    def large(self) -> bool:
        return len(self.mixed()) > self.full_mesh_max

    def wait_player(self, sound: str) -> str:
        return f"{WAIT_PREFIX}{self.serial}:{sound}"

    def wait_sounds(self) -> list[str]:
        """The sounds the room plays: the first `max_wait_sounds` distinct ones among its
        members, in the order they joined (a dict keeps it)."""
        sounds: list[str] = []
        for m in self.members.values():
            if m.wait is not None and m.wait not in sounds:
                sounds.append(m.wait)
                if len(sounds) >= self.max_wait_sounds:
                    break
        return sounds

    def wait_sound(self, call_id: str, sounds: list[str] | None = None) -> str | None:
        """What `call_id` hears while waiting: its own sound if the room plays it, else the
        room's first sound; None (silence) if it has none."""
        own = self.members[call_id].wait
        if own is None:
            return None
        sounds = self.wait_sounds() if sounds is None else sounds
        return own if own in sounds else sounds[0]

    def hears_wait_music(self) -> list[str]:
        """Held members, waiting members, and a mixed member who is alone."""
        mixed = self.mixed()
        alone = mixed if len(mixed) == 1 else []
        held = [c for c, m in self.members.items() if m.held]
        return held + self.waiting() + alone

    def mix_sources(self) -> list[str]:
        """Every source heard in the conversation (speakers and one-shot players): what a
        listener of the whole room (e.g. a recorder) would take links from."""
        sources = [c for c in self.mixed() if not self.members[c].muted]
        if self.large:
            sources = [c for c in sources
                       if c in self.speakers or self.members[c].always_source]
        return sources + list(self.oneshots)

    def links(self) -> set[Link]:
        mixed = self.mixed()
        sources = [m for m in mixed if not self.members[m].muted]
        out: set[Link] = set()
        if self.large:
            sources = [m for m in sources
                       if m in self.speakers or self.members[m].always_source]
            out = {Link(m, MONITOR) for m in mixed}
        for src in sources:
            targets = self.members[src].speak_to
            out.update(Link(src, dst) for dst in mixed
                       if dst != src and (targets is None or dst in targets))
        sounds = self.wait_sounds()
        for cid in self.hears_wait_music():
            sound = self.wait_sound(cid, sounds)
            if sound is not None:
                out.add(Link(self.wait_player(sound), cid))
        for name, shot in self.oneshots.items():
            out.update(Link(name, dst) for dst in shot.listeners
                       if dst in self.members and not self.members[dst].held)
        if self.listeners:
            out.update(Link(src, lst) for src in self.mix_sources() for lst in self.listeners)
        return out

    def players(self) -> set[Player]:
        """The players the room's links need (wait music in use, and every one-shot)."""
        out = {s.player for s in self.oneshots.values()}
        sounds = self.wait_sounds()
        for cid in self.hears_wait_music():
            sound = self.wait_sound(cid, sounds)
            if sound is not None:
                out.add(Player(self.wait_player(sound), sound, loop=True))
        return out


@dataclass(frozen=True)
class Departure:
    """What a leave or an end did: the link change, and who else was put out of the room."""

    change: LinkChange
    room_ended: bool
    evicted: tuple[str, ...] = ()


class RoomError(Exception):
    pass


def _diff(before: set[Link], after: set[Link],
          players_before: Iterable[Player] = (), players_after: Iterable[Player] = ()
          ) -> LinkChange:
    pb, pa = set(players_before), set(players_after)
    return LinkChange(tuple(sorted(after - before)), tuple(sorted(before - after)),
                      tuple(sorted(pa - pb)), tuple(sorted(p.name for p in pb - pa)))


class _Snapshot:
    """A room's links and players before an operation, to diff against after it."""

    def __init__(self, room: Room) -> None:
        self.room, self.links, self.players = room, room.links(), room.players()

    def change(self) -> LinkChange:
        return _diff(self.links, self.room.links(), self.players, self.room.players())


class RoomBook:
    """Every live room and which room each call is in. One call is in at most one room."""

    def __init__(self, full_mesh_max: int = 20, max_wait_sounds: int = 4) -> None:
        self.full_mesh_max = full_mesh_max
        self.max_wait_sounds = max_wait_sounds
        self.rooms: dict[RoomKey, Room] = {}
        self.room_of: dict[str, RoomKey] = {}
        self._serials = itertools.count(1)
        self._shots = itertools.count(1)

    def join(
        self, key: RoomKey, call_id: str, *, muted: bool, end_on_exit: bool, now: float,
        start_on_enter: bool = True, wait: str | None = None, always_source: bool = False,
    ) -> LinkChange:
        if call_id in self.room_of:
            raise RoomError(f"{call_id} is already in room {self.room_of[call_id].name}")
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = Room(key, created_at=now, full_mesh_max=self.full_mesh_max,
                                          serial=next(self._serials),
                                          max_wait_sounds=self.max_wait_sounds)
        snap = _Snapshot(room)
        room.members[call_id] = Member(call_id, muted, end_on_exit, now,
                                       start_on_enter=start_on_enter, wait=wait,
                                       always_source=always_source)
        self.room_of[call_id] = key
        return snap.change()

    def set_muted(self, call_id: str, muted: bool) -> LinkChange:
        room = self._room_of(call_id)
        snap = _Snapshot(room)
        room.members[call_id].muted = muted
        return snap.change()

    def set_held(self, call_id: str, held: bool) -> LinkChange:
        """Held: hears only their wait music (or silence), is heard by nobody."""
        room = self._room_of(call_id)
        snap = _Snapshot(room)
        room.members[call_id].held = held
        if held:
            room.speakers.discard(call_id)
        return snap.change()

    def set_start_on_enter(self, call_id: str, start_on_enter: bool) -> LinkChange:
        """Whether this member starts the room (a cluster's cascade leg counts as a
        `start_on_enter` member only while the far side of it has one)."""
        room = self._room_of(call_id)
        snap = _Snapshot(room)
        room.members[call_id].start_on_enter = start_on_enter
        return snap.change()

    def set_speak_to(self, call_id: str, targets: Iterable[str] | None) -> LinkChange:
        """Only `targets` hear this member (None: everyone). Targets must be in the room."""
        room = self._room_of(call_id)
        wanted = None if targets is None else frozenset(targets)
        if wanted is not None and not wanted <= set(room.members):
            missing = sorted(wanted - set(room.members))
            raise RoomError(f"not in room {room.key.name}: {', '.join(missing[:5])}")
        snap = _Snapshot(room)
        room.members[call_id].speak_to = wanted
        return snap.change()

    def add_oneshot(self, key: RoomKey, path: str, listeners: Iterable[str]
                    ) -> tuple[str, LinkChange]:
        """Play `path` once to `listeners` (members not held; those who leave or are held
        meanwhile stop hearing it). Returns the player's name and the change."""
        room = self.rooms.get(key)
        if room is None:
            raise RoomError(f"no room {key.name}")
        snap = _Snapshot(room)
        name = f"{ONESHOT_PREFIX}{room.serial}:{next(self._shots)}"
        room.oneshots[name] = OneShot(Player(name, path, loop=False), frozenset(listeners))
        return name, snap.change()

    def end_oneshot(self, name: str) -> LinkChange:
        """A one-shot player finished (or failed): unlink and stop it. Unknown: no change."""
        for room in self.rooms.values():
            if name in room.oneshots:
                snap = _Snapshot(room)
                del room.oneshots[name]
                return snap.change()
        return LinkChange()

    def leave(self, call_id: str) -> Departure:
        """`call_id` leaves its room. If it joined with end_on_exit, the room ends."""
        room = self._room_of(call_id)
        if room.members[call_id].end_on_exit:
            return self.end(room.key, leaving=call_id)
        snap = _Snapshot(room)
        del room.members[call_id]
        room.speakers.discard(call_id)
        for m in room.members.values():  # nobody coaches a member who is gone
            if m.speak_to is not None and call_id in m.speak_to:
                m.speak_to = m.speak_to - {call_id}
        del self.room_of[call_id]
        ended = not room.members
        if ended:
            room.oneshots.clear()
            del self.rooms[room.key]
        return Departure(snap.change(), room_ended=ended)

    def end(self, key: RoomKey, leaving: str | None = None) -> Departure:
        """End the room: every member leaves. Those other than `leaving` are `evicted`."""
        room = self.rooms.pop(key, None)
        if room is None:
            raise RoomError(f"no room {key.name}")
        snap = _Snapshot(room)
        for cid in room.members:
            del self.room_of[cid]
        evicted = tuple(cid for cid in room.members if cid != leaving)
        room.members.clear()
        room.oneshots.clear()
        return Departure(snap.change(), room_ended=True, evicted=evicted)

    def set_speakers(self, key: RoomKey, speakers: set[str]) -> LinkChange:
        room = self.rooms.get(key)
        if room is None:
            return LinkChange()
        snap = _Snapshot(room)
        room.speakers = speakers & set(room.mixed())
        return snap.change()

    def add_listener(self, key: RoomKey, listener: str) -> LinkChange:
        """`listener` starts hearing the room. Its name must not be a member's."""
        room = self.rooms.get(key)
        if room is None:
            raise RoomError(f"no room {key.name}")
        if listener in room.members or listener.startswith("@"):
            raise RoomError(f"{listener} is a member or a player, not a listener")
        snap = _Snapshot(room)
        room.listeners.add(listener)
        return snap.change()

    def remove_listener(self, key: RoomKey, listener: str) -> LinkChange:
        """`listener` stops hearing the room (nothing to do if the room or it is gone)."""
        room = self.rooms.get(key)
        if room is None or listener not in room.listeners:
            return LinkChange()
        snap = _Snapshot(room)
        room.listeners.discard(listener)
        return snap.change()

    def large_rooms(self) -> list[Room]:
        return [r for r in self.rooms.values() if r.large]

    def room(self, key: RoomKey) -> Room | None:
        return self.rooms.get(key)

    def _room_of(self, call_id: str) -> Room:
        key = self.room_of.get(call_id)
        if key is None:
            raise RoomError(f"{call_id} is not in a room")
        return self.rooms[key]


class RoomKeys:
    """DTMF controls in a room (opt-in): `*6` toggles the caller's own mute, `#` leaves.
    A `*` waits `window_s` for its `6`; any other digit is ignored."""

    def __init__(self, window_s: float = 3.0) -> None:
        self.window_s = window_s
        self._star_at: float | None = None

    def press(self, digit: str, now: float) -> Literal["toggle_mute", "leave"] | None:
        star, self._star_at = self._star_at, None
        if digit == "#":
            return "leave"
        if digit == "*":
            self._star_at = now
        elif digit == "6" and star is not None and now - star <= self.window_s:
            return "toggle_mute"
        return None


@dataclass
class SpeakerState:
    """What speaker choice remembers between polls: when each member was last loud."""

    last_loud: dict[str, float] = field(default_factory=dict)


def choose_speakers(
    levels: dict[str, int], current: set[str], state: SpeakerState, *, now: float,
    max_speakers: int, threshold: int, hold_s: float,
) -> set[str]:
    """The members who should be heard: loud now, or loud within `hold_s` (so a speaker is
    not cut between words), loudest first, current speakers winning ties; at most
    `max_speakers`."""
    for cid, level in levels.items():
        if level >= threshold:
            state.last_loud[cid] = now
    for cid in list(state.last_loud):
        if cid not in levels:
            del state.last_loud[cid]
    candidates = [c for c, t in state.last_loud.items() if now - t <= hold_s]
    candidates.sort(key=lambda c: (levels.get(c, 0) >= threshold, levels.get(c, 0),
                                   c in current), reverse=True)
    return set(candidates[:max_speakers])
