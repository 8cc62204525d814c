"""Conference room bookkeeping as plain data.

A room is a set of members; what pjmedia's bridge must carry follows from it:
every unmuted member transmits to every other member (never to itself). Each
operation returns the *change* in those links, which the SIP thread applies to
the bridge. Nothing here does I/O, so every rule (mute, leave, end on exit,
per-customer scoping) is testable without SIP.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class RoomKey:
    """Rooms are scoped per customer: two customers' `support` rooms are different rooms."""

    customer_id: str
    name: str


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


@dataclass
class Room:
    key: RoomKey
    created_at: float
    members: dict[str, Member] = field(default_factory=dict)

    def links(self) -> set[Link]:
        ids = list(self.members)
        return {
            Link(src, dst)
            for src in ids
            if not self.members[src].muted
            for dst in ids
            if dst != src
        }


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

    def __init__(self) -> None:
        self.rooms: dict[RoomKey, Room] = {}
        self.room_of: dict[str, RoomKey] = {}

    def join(
        self, key: RoomKey, call_id: str, *, muted: bool, end_on_exit: bool, now: float
    ) -> LinkChange:
        if call_id in self.room_of:
            raise RoomError(f"{call_id} is already in room {self.room_of[call_id].name}")
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = Room(key, created_at=now)
        before = room.links()
        room.members[call_id] = Member(call_id, muted, end_on_exit, now)
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

    def room(self, key: RoomKey) -> Room | None:
        return self.rooms.get(key)

    def _room_of(self, call_id: str) -> Room:
        key = self.room_of.get(call_id)
        if key is None:
            raise RoomError(f"{call_id} is not in a room")
        return self.rooms[key]
