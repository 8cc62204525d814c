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
source of the room (the speakers, in a large room); it transmits to nobody and does
not keep a room alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class LinkChange:
    connect: tuple[Link, ...] = ()
    disconnect: tuple[Link, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.connect or self.disconnect)


@dataclass
class Member:
    call_id: str
    muted: bool
    end_on_exit: bool
    joined_at: float
    # Always a source, even in a large room when not a speaker: a cluster's cascade leg
    # carries another node's speakers, whom this node's level polls cannot see.
    always_source: bool = False


@dataclass
class Room:
    key: RoomKey
    created_at: float
    full_mesh_max: int = 20
    members: dict[str, Member] = field(default_factory=dict)
    speakers: set[str] = field(default_factory=set)  # used when the room is large
    listeners: set[str] = field(default_factory=set)  # receive-only endpoints (recorders)

    @property
    def large(self) -> bool:
        return len(self.members) > self.full_mesh_max

    def links(self) -> set[Link]:
        ids = list(self.members)
        sources = [m for m in ids if not self.members[m].muted]
        out: set[Link] = set()
        if self.large:
            sources = [m for m in sources
                       if m in self.speakers or self.members[m].always_source]
            out = {Link(m, MONITOR) for m in ids}
        out.update(Link(src, dst) for src in sources for dst in ids if dst != src)
        out.update(Link(src, lst) for src in sources for lst in self.listeners)
        return out


@dataclass(frozen=True)
class Departure:
    """What a leave or an end did: the link change, and who else was put out of the room."""

    change: LinkChange
    room_ended: bool
    evicted: tuple[str, ...] = ()


class RoomError(Exception):
    pass


def _diff(before: set[Link], after: set[Link]) -> LinkChange:
    return LinkChange(tuple(sorted(after - before)), tuple(sorted(before - after)))


class RoomBook:
    """Every live room and which room each call is in. One call is in at most one room."""

    def __init__(self, full_mesh_max: int = 20) -> None:
        self.full_mesh_max = full_mesh_max
        self.rooms: dict[RoomKey, Room] = {}
        self.room_of: dict[str, RoomKey] = {}

    def join(
        self, key: RoomKey, call_id: str, *, muted: bool, end_on_exit: bool, now: float,
        always_source: bool = False,
    ) -> LinkChange:
        if call_id in self.room_of:
            raise RoomError(f"{call_id} is already in room {self.room_of[call_id].name}")
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = Room(key, created_at=now,
                                          full_mesh_max=self.full_mesh_max)
        before = room.links()
        room.members[call_id] = Member(call_id, muted, end_on_exit, now, always_source)
        self.room_of[call_id] = key
        return _diff(before, room.links())

    def set_muted(self, call_id: str, muted: bool) -> LinkChange:
        room = self._room_of(call_id)
        before = room.links()
        room.members[call_id].muted = muted
        return _diff(before, room.links())

    def leave(self, call_id: str) -> Departure:
        """`call_id` leaves its room. If it joined with end_on_exit, the room ends."""
        room = self._room_of(call_id)
        if room.members[call_id].end_on_exit:
            return self.end(room.key, leaving=call_id)
        before = room.links()
        del room.members[call_id]
        room.speakers.discard(call_id)
        del self.room_of[call_id]
        ended = not room.members
        if ended:
            del self.rooms[room.key]
        return Departure(_diff(before, room.links()), room_ended=ended)

    def end(self, key: RoomKey, leaving: str | None = None) -> Departure:
        """End the room: every member leaves. Those other than `leaving` are `evicted`."""
        room = self.rooms.pop(key, None)
        if room is None:
            raise RoomError(f"no room {key.name}")
        before = room.links()
        for cid in room.members:
            del self.room_of[cid]
        evicted = tuple(cid for cid in room.members if cid != leaving)
        room.members.clear()
        return Departure(_diff(before, set()), room_ended=True, evicted=evicted)

    def set_speakers(self, key: RoomKey, speakers: set[str]) -> LinkChange:
        room = self.rooms.get(key)
        if room is None:
            return LinkChange()
        before = room.links()
        room.speakers = speakers & set(room.members)
        return _diff(before, room.links())

    def add_listener(self, key: RoomKey, listener: str) -> LinkChange:
        """`listener` starts hearing the room. Its name must not be a member's."""
        room = self.rooms.get(key)
        if room is None:
            raise RoomError(f"no room {key.name}")
        if listener in room.members or listener == MONITOR:
            raise RoomError(f"{listener} is a member, not a listener")
        before = room.links()
        room.listeners.add(listener)
        return _diff(before, room.links())

    def remove_listener(self, key: RoomKey, listener: str) -> LinkChange:
        """`listener` stops hearing the room (nothing to do if the room or it is gone)."""
        room = self.rooms.get(key)
        if room is None or listener not in room.listeners:
            return LinkChange()
        before = room.links()
        room.listeners.discard(listener)
        return _diff(before, room.links())

    def large_rooms(self) -> list[Room]:
        return [r for r in self.rooms.values() if r.large]

    def room(self, key: RoomKey) -> Room | None:
        return self.rooms.get(key)

    def _room_of(self, call_id: str) -> Room:
        key = self.room_of.get(call_id)
        if key is None:
            raise RoomError(f"{call_id} is not in a room")
        return self.rooms[key]


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
