"""Room features as pure data: wait music, start_on_enter, hold, coaching, one-shot players,
DTMF keys; and random walks that check the rules after every operation."""

from __future__ import annotations

import random

import pytest

from media.rooms import (
    MONITOR,
    ONESHOT_PREFIX,
    WAIT_PREFIX,
    Link,
    LinkChange,
    Player,
    RoomBook,
    RoomError,
    RoomKey,
    RoomKeys,
)

R1 = RoomKey("cust", "r1")
MUSIC = "/cache/music.wav"


def links(book: RoomBook, key: RoomKey = R1) -> set[tuple[str, str]]:
    room = book.room(key)
    return {(lk.src, lk.dst) for lk in room.links()} if room else set()


def join(book: RoomBook, cid: str, **kw: object) -> LinkChange:
    opts: dict[str, object] = {"muted": False, "end_on_exit": False, "now": 0.0}
    opts.update(kw)
    return book.join(R1, cid, **opts)  # type: ignore[arg-type]


def test_alone_with_wait_music_until_a_second_member_is_mixed() -> None:
    book = RoomBook()
    change = join(book, "a", wait=MUSIC)
    wait = book.rooms[R1].wait_player(MUSIC)
    assert wait.startswith(WAIT_PREFIX)
    assert change.start == (Player(wait, MUSIC, loop=True),)
    assert change.connect == (Link(wait, "a"),)
    change = join(book, "b")
    # one change: the music goes and the conversation starts together
    assert change.disconnect == (Link(wait, "a"),) and change.stop == (wait,)
    assert set(change.connect) == {Link("a", "b"), Link("b", "a")}
    change = book.leave("b").change
    assert change.connect == (Link(wait, "a"),) and change.start


def test_alone_without_wait_url_hears_silence() -> None:
    book = RoomBook()
    assert not join(book, "a")
    assert links(book) == set()


def test_start_on_enter_false_members_wait_for_a_starter() -> None:
    book = RoomBook()
    join(book, "a", start_on_enter=False, wait=MUSIC)
    join(book, "b", start_on_enter=False, wait=MUSIC)
    wait = book.rooms[R1].wait_player(MUSIC)
    assert links(book) == {(wait, "a"), (wait, "b")}
    assert book.rooms[R1].waiting() == ["a", "b"]
    change = join(book, "mod", wait=MUSIC)
    assert links(book) == {(x, y) for x in ("a", "b", "mod") for y in ("a", "b", "mod")
                           if x != y}
    assert change.stop == (wait,)
    # the last starter leaves: the others wait again
    book.leave("mod")
    assert links(book) == {(wait, "a"), (wait, "b")}


def test_waiting_members_with_different_music_share_one_player_per_sound() -> None:
    book = RoomBook()
    join(book, "a", start_on_enter=False, wait="/x.wav")
    join(book, "b", start_on_enter=False, wait="/x.wav")
    join(book, "c", start_on_enter=False, wait="/y.wav")
    names = {p.name for p in book.rooms[R1].players()}
    assert len(names) == 2


def test_held_member_hears_only_music_and_is_heard_by_nobody() -> None:
    book = RoomBook()
    for c in "abc":
        join(book, c, wait=MUSIC)
    wait = book.rooms[R1].wait_player(MUSIC)
    change = book.set_held("a", True)
    assert set(change.disconnect) == {Link("a", "b"), Link("a", "c"), Link("b", "a"),
                                      Link("c", "a")}
    assert change.connect == (Link(wait, "a"),)
    assert links(book) == {(wait, "a"), ("b", "c"), ("c", "b")}
    book.set_held("a", False)
    assert links(book) == {(x, y) for x in "abc" for y in "abc" if x != y}


def test_holding_one_of_two_leaves_the_other_alone_with_music() -> None:
    book = RoomBook()
    join(book, "a", wait=MUSIC)
    join(book, "b", wait=MUSIC)
    book.set_held("a", True)
    wait = book.rooms[R1].wait_player(MUSIC)
    assert links(book) == {(wait, "a"), (wait, "b")}


def test_coach_is_heard_only_by_the_named_members() -> None:
    book = RoomBook()
    for c in "abc":
        join(book, c)
    change = book.set_speak_to("a", ["b"])
    assert change.disconnect == (Link("a", "c"),) and not change.connect
    assert ("b", "a") in links(book) and ("c", "a") in links(book)  # a hears both
    with pytest.raises(RoomError):
        book.set_speak_to("a", ["nobody"])
    book.set_speak_to("a", [])
    assert not any(src == "a" for src, _ in links(book))
    book.set_speak_to("a", None)
    assert {("a", "b"), ("a", "c")} <= links(book)
    book.set_speak_to("a", ["b"])
    book.leave("b")  # the coached member left: the coach is heard by nobody
    assert book.rooms[R1].members["a"].speak_to == frozenset()
    assert ("a", "c") not in links(book)


def test_oneshot_heard_by_its_listeners_until_it_ends() -> None:
    book = RoomBook()
    for c in "abc":
        join(book, c)
    name, change = book.add_oneshot(R1, "/beep.wav", ["b", "c"])
    assert name.startswith(ONESHOT_PREFIX)
    assert change.start == (Player(name, "/beep.wav", loop=False),)
    assert set(change.connect) == {Link(name, "b"), Link(name, "c")}
    book.set_held("c", True)
    assert (name, "c") not in links(book)
    book.set_held("c", False)
    assert (name, "c") in links(book)  # still playing: heard again
    change = book.end_oneshot(name)
    assert set(change.disconnect) == {Link(name, "b"), Link(name, "c")}
    assert change.stop == (name,)
    assert not book.end_oneshot(name)  # twice: nothing


def test_room_end_stops_every_player() -> None:
    book = RoomBook()
    join(book, "a", wait=MUSIC, end_on_exit=True)
    name, _ = book.add_oneshot(R1, "/ann.wav", ["a"])
    dep = book.leave("a")
    assert dep.room_ended and set(dep.change.stop) == {
        name, f"{WAIT_PREFIX}1:{MUSIC}"}
    assert not book.end_oneshot(name)


def test_large_room_keeps_hold_coach_and_oneshots() -> None:
    book = RoomBook(full_mesh_max=3)
    for c in "abcde":
        join(book, c, wait=MUSIC)
    book.set_speakers(R1, {"a", "b"})
    book.set_held("b", True)
    book.set_speak_to("a", ["c"])
    name, _ = book.add_oneshot(R1, "/ann.wav", list("abcde"))
    got = links(book)
    wait = book.rooms[R1].wait_player(MUSIC)
    assert {src for src, _ in got if not src.startswith("@")} == {"a", "c", "d", "e"}
    assert ("a", "c") in got and ("a", "d") not in got
    assert ("b", MONITOR) not in got and (wait, "b") in got
    assert (name, "b") not in got and {(name, c) for c in "acde"} <= got
    assert book.rooms[R1].speakers == {"a"}  # a held member is no speaker


def test_a_listener_hears_the_conversation_and_the_announcements_only() -> None:
    book = RoomBook()
    join(book, "a", wait=MUSIC)
    book.add_listener(R1, "rec_1")
    # a alone: recorded, hearing wait music that is not recorded
    assert links(book) == {(book.rooms[R1].wait_player(MUSIC), "a"), ("a", "rec_1")}
    join(book, "b")
    join(book, "c")
    book.set_held("c", True)
    book.set_muted("b", True)
    name, _ = book.add_oneshot(R1, "/ann.wav", ["a", "b"])
    heard = {src for src, dst in links(book) if dst == "rec_1"}
    assert heard == {"a", name}  # not muted b, not held c, no wait music
    with pytest.raises(RoomError):
        book.add_listener(R1, MONITOR)
    book.remove_listener(R1, "rec_1")
    assert not any(dst == "rec_1" for _, dst in links(book))


def test_room_keys() -> None:
    keys = RoomKeys(window_s=3.0)
    assert keys.press("*", 0.0) is None
    assert keys.press("6", 1.0) == "toggle_mute"
    assert keys.press("6", 1.1) is None  # a 6 without its star
    assert keys.press("*", 2.0) is None and keys.press("6", 6.0) is None  # too late
    assert keys.press("*", 7.0) is None and keys.press("1", 7.1) is None
    assert keys.press("6", 7.2) is None
    assert keys.press("#", 8.0) == "leave"


# -- random walks: the rules hold after every operation -------------------------------------
def check_rules(book: RoomBook, applied: set[Link], running: set[str]) -> None:
    for room in book.rooms.values():
        members = room.members
        want = room.links()
        mine = {lk for lk in applied if lk.dst in members or lk.src in members
                or lk.dst in room.listeners
                or lk.src.startswith((f"{WAIT_PREFIX}{room.serial}:",
                                      f"{ONESHOT_PREFIX}{room.serial}:"))}
        assert mine == want, "applying the changes must give the room's links"
        mixed = set(room.mixed())
        for lk in want:
            if lk.dst in room.listeners:
                assert lk.src in room.mix_sources(), f"a listener hears {lk}"
                continue
            if lk.src in members:
                assert not members[lk.src].held, f"a held member is heard: {lk}"
                assert lk.src in mixed and (lk.dst in mixed or lk.dst == MONITOR), lk
                assert not members[lk.src].muted or lk.dst == MONITOR, lk
                targets = members[lk.src].speak_to
                assert targets is None or lk.dst in targets or lk.dst == MONITOR, lk
            if lk.dst in members and members[lk.dst].held:
                assert lk.src.startswith(WAIT_PREFIX), f"a held member hears {lk}"
            if lk.dst in members and lk.dst not in mixed:
                assert lk.src.startswith("@"), f"a waiting member hears a member: {lk}"
            if lk.src.startswith("@"):
                assert lk.src in running, f"link from a player not running: {lk}"
        needed = {p.name for p in room.players()}
        assert needed <= running
        hears = set(room.hears_wait_music())
        for cid, m in members.items():
            music = {lk.src for lk in want if lk.dst == cid and lk.src.startswith(WAIT_PREFIX)}
            assert music == ({room.wait_player(m.wait)} if cid in hears and m.wait else set())
    assert applied == set().union(*(r.links() for r in book.rooms.values())), "stale links"
    every = {p.name for r in book.rooms.values() for p in r.players()}
    assert running == every, "a player runs that no room needs, or the reverse"


@pytest.mark.parametrize("seed", range(40))
def test_random_walk_keeps_the_rules(seed: int) -> None:
    rnd = random.Random(seed)
    book = RoomBook(full_mesh_max=rnd.choice([2, 3, 20]))
    keys = [RoomKey("c", "r1"), RoomKey("c", "r2")]
    applied: set[Link] = set()
    running: set[str] = set()
    calls = [f"call{i}" for i in range(8)]
    for _ in range(300):
        op = rnd.randrange(10)
        inside = list(book.room_of)
        outside = [c for c in calls if c not in book.room_of]
        change = LinkChange()
        try:
            if op == 0 and outside:
                change = book.join(rnd.choice(keys), rnd.choice(outside),
                                   muted=rnd.random() < 0.2, end_on_exit=rnd.random() < 0.1,
                                   now=0, start_on_enter=rnd.random() < 0.6,
                                   wait=rnd.choice([None, "/m1.wav", "/m2.wav"]))
            elif op == 1 and inside:
                change = book.leave(rnd.choice(inside)).change
            elif op == 2 and inside:
                change = book.set_muted(rnd.choice(inside), rnd.random() < 0.5)
            elif op == 3 and inside:
                change = book.set_held(rnd.choice(inside), rnd.random() < 0.5)
            elif op == 4 and inside:
                cid = rnd.choice(inside)
                mates = list(book.rooms[book.room_of[cid]].members)
                change = book.set_speak_to(cid, None if rnd.random() < 0.4 else
                                           rnd.sample(mates, rnd.randrange(len(mates) + 1)))
            elif op == 5 and book.rooms:
                key = rnd.choice(list(book.rooms))
                mates = list(book.rooms[key].members)
                _, change = book.add_oneshot(key, "/beep.wav",
                                             rnd.sample(mates, rnd.randrange(len(mates) + 1)))
            elif op == 6 and running:
                change = book.end_oneshot(rnd.choice(sorted(running)))
            elif op == 7 and book.rooms:
                key = rnd.choice(list(book.rooms))
                mates = list(book.rooms[key].members)
                change = book.set_speakers(key, set(rnd.sample(mates, min(2, len(mates)))))
            elif op == 9 and book.rooms:
                key = rnd.choice(list(book.rooms))
                name = f"rec_{key.name}"  # a recorder belongs to one room
                change = (book.add_listener(key, name) if rnd.random() < 0.5
                          else book.remove_listener(key, name))
            elif op == 8 and book.rooms and rnd.random() < 0.2:
                change = book.end(rnd.choice(list(book.rooms))).change
        except RoomError:
            continue
        assert not set(change.connect) & set(change.disconnect)
        for p in change.start:
            assert p.name not in running, f"{p.name} started twice"
            running.add(p.name)
        applied -= set(change.disconnect)
        applied |= set(change.connect)
        for name in change.stop:
            assert name in running, f"{name} stopped but not running"
            running.discard(name)
            assert not any(lk.src == name for lk in applied), f"{name} stopped while linked"
        check_rules(book, applied, running)
