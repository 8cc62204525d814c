"""Room rules as pure data: who transmits to whom after each operation."""

from __future__ import annotations

import pytest

from media.rooms import Link, RoomBook, RoomError, RoomKey

R1 = RoomKey("cust", "r1")


def links(book: RoomBook, key: RoomKey = R1) -> set[tuple[str, str]]:
    room = book.room(key)
    return {(lk.src, lk.dst) for lk in room.links()} if room else set()


def test_join_connects_full_mesh_without_self() -> None:
    book = RoomBook()
    assert not book.join(R1, "a", muted=False, end_on_exit=False, now=0)
    change = book.join(R1, "b", muted=False, end_on_exit=False, now=1)
    assert set(change.connect) == {Link("a", "b"), Link("b", "a")} and not change.disconnect
    book.join(R1, "c", muted=False, end_on_exit=False, now=2)
    assert links(book) == {(x, y) for x in "abc" for y in "abc" if x != y}


def test_muted_member_hears_but_is_not_heard() -> None:
    book = RoomBook()
    book.join(R1, "a", muted=False, end_on_exit=False, now=0)
    change = book.join(R1, "m", muted=True, end_on_exit=False, now=0)
    assert change.connect == (Link("a", "m"),)
    assert links(book) == {("a", "m")}
    unmute = book.set_muted("m", False)
    assert unmute.connect == (Link("m", "a"),)
    mute = book.set_muted("m", True)
    assert mute.disconnect == (Link("m", "a"),)


def test_leave_disconnects_and_last_leaver_removes_room() -> None:
    book = RoomBook()
    for c in "ab":
        book.join(R1, c, muted=False, end_on_exit=False, now=0)
    dep = book.leave("a")
    assert set(dep.change.disconnect) == {Link("a", "b"), Link("b", "a")}
    assert not dep.room_ended and dep.evicted == ()
    dep = book.leave("b")
    assert dep.room_ended and book.room(R1) is None and book.room_of == {}


def test_end_on_exit_evicts_everyone_else() -> None:
    book = RoomBook()
    book.join(R1, "mod", muted=False, end_on_exit=True, now=0)
    for c in "xy":
        book.join(R1, c, muted=False, end_on_exit=False, now=0)
    dep = book.leave("mod")
    assert dep.room_ended and set(dep.evicted) == {"x", "y"}
    assert len(dep.change.disconnect) == 6 and book.rooms == {}


def test_rooms_are_per_customer() -> None:
    book = RoomBook()
    book.join(RoomKey("c1", "support"), "a", muted=False, end_on_exit=False, now=0)
    change = book.join(RoomKey("c2", "support"), "b", muted=False, end_on_exit=False, now=0)
    assert not change and len(book.rooms) == 2


def test_room_names_are_case_sensitive() -> None:
    book = RoomBook()
    book.join(RoomKey("c", "Room"), "a", muted=False, end_on_exit=False, now=0)
    assert not book.join(RoomKey("c", "room"), "b", muted=False, end_on_exit=False, now=0)


def test_errors() -> None:
    book = RoomBook()
    book.join(R1, "a", muted=False, end_on_exit=False, now=0)
    with pytest.raises(RoomError):
        book.join(R1, "a", muted=False, end_on_exit=False, now=0)
    with pytest.raises(RoomError):
        book.leave("nobody")
    with pytest.raises(RoomError):
        book.end(RoomKey("c", "none"))
