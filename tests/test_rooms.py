"""Room rules as pure data: who transmits to whom after each operation."""

from __future__ import annotations

from typing import TypedDict

import pytest

from media.rooms import MONITOR, Link, RoomBook, RoomError, RoomKey, SpeakerState, choose_speakers

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


# -- large rooms: only speakers are mixed --------------------------------------------------
def big_room(n: int, full_mesh_max: int = 3) -> RoomBook:
    book = RoomBook(full_mesh_max)
    for i in range(n):
        book.join(R1, f"m{i}", muted=False, end_on_exit=False, now=0)
    return book


def test_large_room_links_speakers_and_monitor_only() -> None:
    book = big_room(3)
    assert len(links(book)) == 6  # still a full mesh at the threshold
    change = book.join(R1, "m3", muted=False, end_on_exit=False, now=0)
    # over the threshold: nobody is a speaker yet, everyone feeds the monitor
    assert links(book) == {(f"m{i}", MONITOR) for i in range(4)}
    assert len(change.disconnect) == 6
    change = book.set_speakers(R1, {"m1"})
    assert set(change.connect) == {Link("m1", "m0"), Link("m1", "m2"), Link("m1", "m3")}
    assert not change.disconnect


def test_large_room_muted_speaker_is_not_mixed_and_leaving_clears_it() -> None:
    book = big_room(5)
    book.set_speakers(R1, {"m0", "m1"})
    book.set_muted("m0", True)
    assert not any(src == "m0" and dst != MONITOR for src, dst in links(book))
    book.leave("m1")
    assert book.rooms[R1].speakers == {"m0"}
    book.leave("m4")  # back to the threshold: full mesh again, minus the muted one
    assert links(book) == {(a, b) for a in ("m2", "m3") for b in ("m0", "m2", "m3") if a != b}


def test_link_count_grows_linearly_in_large_rooms() -> None:
    book = big_room(500, full_mesh_max=20)
    book.set_speakers(R1, {f"m{i}" for i in range(6)})
    assert len(links(book)) == 500 + 6 * 499  # vs 500 * 499 = 249500 in a full mesh


class _SpeakerSettings(TypedDict):
    max_speakers: int
    threshold: int
    hold_s: float


def test_choose_speakers_loudest_with_hangover() -> None:
    state = SpeakerState()
    kw: _SpeakerSettings = {"max_speakers": 2, "threshold": 10, "hold_s": 1.0}
    got = choose_speakers({"a": 50, "b": 5, "c": 30, "d": 40}, set(), state, now=0.0, **kw)
    assert got == {"a", "d"}
    # a pauses between words: kept by the hangover while still within hold_s ...
    got = choose_speakers({"a": 0, "b": 5, "c": 0, "d": 40}, got, state, now=0.5, **kw)
    assert got == {"a", "d"}
    # ... but someone loud now wins over a silent hangover
    got = choose_speakers({"a": 0, "b": 60, "c": 0, "d": 40}, got, state, now=0.6, **kw)
    assert got == {"b", "d"}
    got = choose_speakers({"a": 0, "b": 0, "c": 0, "d": 0}, got, state, now=5.0, **kw)
    assert got == set()
    choose_speakers({"x": 0}, got, state, now=6.0, **kw)
    assert set(state.last_loud) <= {"x"}  # members who left are forgotten
