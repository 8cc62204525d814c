"""Recording, the pure parts: a room's listener links, WAV header repair, rows, refusals."""

from __future__ import annotations

import asyncio
import itertools
import struct
import wave
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Application, ConfigError, from_dict
from gateway.recordings import (
    RecordingRefused,
    Recordings,
    completed_data,
    public_view,
    repair_file,
)
from gateway.store import SCHEMA_VERSION, Recording, Store
from media.rooms import MONITOR, Link, RoomBook, RoomError, RoomKey
from media.tones import sine, to_pcm16
from media.wavfix import HEADER_PEEK, WavHeaderError, plan_repair
from tests.waiting import eventually

R1 = RoomKey("cust", "r1")


# -- listeners in the room bookkeeping ------------------------------------------------------
def test_listener_hears_every_unmuted_member_and_sends_nothing() -> None:
    book = RoomBook()
    book.join(R1, "a", muted=False, end_on_exit=False, now=0)
    book.join(R1, "m", muted=True, end_on_exit=False, now=0)
    change = book.add_listener(R1, "rec_1")
    assert change.connect == (Link("a", "rec_1"),) and not change.disconnect
    # members joining, unmuting and leaving move the listener's links too
    change = book.join(R1, "b", muted=False, end_on_exit=False, now=1)
    assert Link("b", "rec_1") in change.connect
    assert Link("m", "rec_1") in book.set_muted("m", False).connect
    assert Link("b", "rec_1") in book.leave("b").change.disconnect
    room = book.room(R1)
    assert room is not None
    assert not any(lk.src == "rec_1" for lk in room.links())
    change = book.remove_listener(R1, "rec_1")
    assert set(change.disconnect) == {Link("a", "rec_1"), Link("m", "rec_1")}
    assert not book.remove_listener(R1, "rec_1")  # twice: nothing to do


def test_listener_does_not_keep_a_room_alive_and_goes_with_it() -> None:
    book = RoomBook()
    book.join(R1, "a", muted=False, end_on_exit=False, now=0)
    book.add_listener(R1, "rec_1")
    dep = book.leave("a")
    assert dep.room_ended and Link("a", "rec_1") in dep.change.disconnect
    assert book.room(R1) is None
    assert not book.remove_listener(R1, "rec_1")  # the room is gone: nothing left to undo
    book.join(R1, "a", muted=False, end_on_exit=False, now=0)
    book.join(R1, "b", muted=False, end_on_exit=False, now=0)
    book.add_listener(R1, "rec_2")
    ended = book.end(R1)
    assert {Link("a", "rec_2"), Link("b", "rec_2")} <= set(ended.change.disconnect)


def test_listener_of_a_large_room_hears_its_speakers() -> None:
    book = RoomBook(full_mesh_max=2)
    for c in "abc":
        book.join(R1, c, muted=False, end_on_exit=False, now=0)
    book.add_listener(R1, "rec_1")
    assert Link("a", "rec_1") in book.set_speakers(R1, {"a"}).connect
    room = book.room(R1)
    assert room is not None
    assert {lk for lk in room.links() if lk.dst == "rec_1"} == {Link("a", "rec_1")}
    assert Link("rec_1", MONITOR) not in room.links()


def test_listener_refusals() -> None:
    book = RoomBook()
    with pytest.raises(RoomError):
        book.add_listener(R1, "rec_1")  # no room
    book.join(R1, "a", muted=False, end_on_exit=False, now=0)
    for bad in ("a", MONITOR):
        with pytest.raises(RoomError):
            book.add_listener(R1, bad)


# -- WAV header repair -------------------------------------------------------------------------
def header(rate: int = 8000, riff: int = 0, data: int = 0, *, tag: int = 1, channels: int = 1,
           bits: int = 16, extra: bytes = b"") -> bytes:
    """A canonical header as pjmedia writes it on open: sizes zero until the file is closed."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + extra + b"data" + struct.pack("<I", data))


def test_repair_of_a_killed_writers_header() -> None:
    head = header()
    fix = plan_repair(head, 44 + 16000)
    assert fix.changed and fix.riff_size == 36 + 16000 and fix.data_size == 16000
    assert fix.data_size_offset == 40 and fix.length == 44 + 16000
    assert fix.duration_s == pytest.approx(1.0)


def test_repair_drops_a_partial_sample_and_keeps_a_right_header() -> None:
    fix = plan_repair(header(), 44 + 1001)
    assert fix.data_size == 1000 and fix.length == 44 + 1000
    good = plan_repair(header(riff=36 + 1000, data=1000), 44 + 1000)
    assert not good.changed and good.data_size == 1000
    # a closed file with a chunk after its audio is left as it is
    closed = plan_repair(header(riff=36 + 1000 + 20, data=1000), 44 + 1000 + 20)
    assert not closed.changed and closed.data_size == 1000


def test_repair_skips_chunks_before_data() -> None:
    extra = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\0"  # odd size: padded
    head = header(extra=extra)
    fix = plan_repair(head, len(head) + 800)
    assert fix.data_size == 800 and fix.data_size_offset == len(head) - 4


def test_repair_of_a_file_with_no_audio_yet() -> None:
    fix = plan_repair(header(), 44)
    assert fix.data_size == 0 and fix.riff_size == 36


@pytest.mark.parametrize("head,size,why", [
    (b"", 0, "not a RIFF"),
    (b"RIFF\0\0\0\0WAVX", 12, "not a RIFF"),
    (b"\0" * 44, 1000, "not a RIFF"),
    (header()[:30], 30, "fmt chunk too short"),  # truncated inside fmt
    (header()[:40], 40, "no data chunk"),  # truncated inside the data chunk's header
    (header(tag=3), 100, "not PCM"),
    (header(channels=0), 100, "implausible"),
    (header(bits=12), 100, "implausible"),
    (header(rate=10), 100, "implausible"),
    (b"RIFF\0\0\0\0WAVEdata\0\0\0\0", 100, "before the fmt"),
    (b"RIFF\0\0\0\0WAVE\xff\xfe\0\x01\4\0\0\0abcd", 100, "garbage"),
    (b"RIFF\0\0\0\0WAVE" + b"JUNK\0\0\0\0" * 20, 200, "within"),
    (header(), 10, "smaller"),
])
def test_repair_refuses_what_is_not_our_wav(head: bytes, size: int, why: str) -> None:
    with pytest.raises(WavHeaderError, match=why):
        plan_repair(head, size)


def test_repair_caps_sizes_at_4_gib() -> None:
    fix = plan_repair(header(), 44 + 2**33)
    assert fix.riff_size <= 0xFFFFFFFF and fix.data_size % 2 == 0
    assert fix.length == 44 + fix.data_size


def test_repair_file_makes_a_playable_wav(tmp_path: Path) -> None:
    path = tmp_path / "killed.wav"
    audio = to_pcm16(sine(440, 1.5))
    path.write_bytes(header() + audio + b"\x01")  # what a kill -9 leaves, plus half a sample
    fix = repair_file(path)
    assert fix.changed and fix.duration_s == pytest.approx(1.5)
    with wave.open(str(path)) as w:
        assert w.getnframes() == 12000 and w.getframerate() == 8000
        assert w.readframes(12000) == audio
    assert not repair_file(path).changed  # idempotent


def test_header_peek_is_enough_for_our_headers() -> None:
    assert len(header()) < HEADER_PEEK


# -- rows, config, refusals --------------------------------------------------------------------
def row(rec_id: str = "rec_x", ended: float | None = None, path: str = "/nonexistent",
        status: str = "recording") -> Recording:
    return Recording(rec_id, "cust", "r1", "app", None, 1000.0, ended, None, status, path, None)


def test_store_keeps_recordings(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    assert SCHEMA_VERSION == 4
    store.recording_add(row())
    assert store.recordings_in_progress() == [row()]
    store.recording_end("rec_x", status="completed", ended_at=1010.0, duration_s=9.5,
                        reason="api")
    got = store.recording_get("rec_x")
    assert got is not None and got.status == "completed" and got.duration_s == 9.5
    view = public_view(got)
    assert view["started_at"] == "1970-01-01T00:16:40Z" and view["duration_s"] == 9.5
    assert view["url"] == "/v1/recordings/rec_x/audio"
    assert completed_data(got) == {"recording_id": "rec_x", "room": "r1", "duration_s": 9.5,
                                   "url": "/v1/recordings/rec_x/audio", "status": "completed",
                                   "reason": "api"}
    assert store.recordings_in_progress() == []
    store.close()


def test_config_section() -> None:
    app = {"id": "a", "customer_id": "c", "answer_url": "http://x/a", "secret": "12345678"}
    cfg = from_dict({"applications": [app], "recordings": {"min_free_mb": 0,
                                                           "max_concurrent": 3}})
    assert cfg.recordings.max_concurrent == 3 and cfg.recordings.max_duration_s == 14400
    with pytest.raises(ConfigError, match=r"recordings\.max_concurrent"):
        from_dict({"applications": [app], "recordings": {"max_concurrent": 0}})
    with pytest.raises(ConfigError, match=r"recordings\.min_free_mb"):
        from_dict({"applications": [app], "recordings": {"min_free_mb": -1}})


def _recordings(tmp_path: Path, **section: Any) -> tuple[Recordings, list[Any], list[Any]]:
    app = {"id": "app", "customer_id": "cust", "answer_url": "http://x/a", "secret": "12345678"}
    cfg = from_dict({"applications": [app], "database": str(tmp_path / "db.sqlite"),
                     "recordings": section})
    book = RoomBook()
    book.join(R1, "a", muted=False, end_on_exit=False, now=0)
    sent: list[Any] = []
    events: list[Any] = []

    def send(command: Any) -> asyncio.Future[Any]:
        sent.append(command)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    recs = Recordings(cfg, Store(cfg.database), book, send,
                      lambda r, d: events.append((r, d)))
    return recs, sent, events


APP = Application(id="app", customer_id="cust", answer_url="http://x/a", secret="12345678")


async def test_refused_below_the_free_space_floor(tmp_path: Path) -> None:
    recs, sent, _ = _recordings(tmp_path, min_free_mb=10 * 1024 * 1024)
    with pytest.raises(RecordingRefused) as info:
        await recs.start(R1, APP, by="api")
    assert info.value.reason == "disk_full" and not sent and not recs.active


async def test_refused_over_the_concurrency_limit_and_for_a_missing_room(
        tmp_path: Path) -> None:
    recs, sent, _ = _recordings(tmp_path, min_free_mb=0, max_concurrent=1)
    first = await recs.start(R1, APP, by="api")
    assert first.status == "recording" and type(sent[0]).__name__ == "StartRecording"
    recs.book.join(RoomKey("cust", "r2"), "b", muted=False, end_on_exit=False, now=0)
    with pytest.raises(RecordingRefused) as info:
        await recs.start(RoomKey("cust", "r2"), APP, by="api")
    assert info.value.reason == "limit"
    with pytest.raises(RecordingRefused) as info:
        await recs.start(RoomKey("cust", "nope"), APP, by="api")
    assert info.value.reason == "no_room"
    # stopping a recording whose recorder wrote nothing: failed, with its event
    done = await recs.stop(first.rec_id, "api")
    assert done.status == "failed" and recs.active == {}


def test_prune_deletes_old_files_and_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    old, new = tmp_path / "old.wav", tmp_path / "new.wav"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    store.recording_add(row("rec_old", ended=100.0, path=str(old), status="completed"))
    store.recording_add(row("rec_new", ended=5000.0, path=str(new), status="completed"))
    store.recording_add(row("rec_gone", ended=100.0, path=str(tmp_path / "gone.wav"),
                            status="completed"))
    store.recording_add(row("rec_live"))
    recs = Recordings(from_dict({"applications": [{
        "id": "a", "customer_id": "c", "answer_url": "http://x/a", "secret": "12345678"}]}),
        store, RoomBook(), lambda c: asyncio.Future(), lambda r, d: None)
    assert recs.prune(1000.0) == 2
    assert not old.exists() and new.exists()
    assert store.recording_get("rec_new") and store.recording_get("rec_live")
    assert store.recording_get("rec_old") is None


async def test_max_duration_stops_the_recording(tmp_path: Path) -> None:
    recs, sent, events = _recordings(tmp_path, min_free_mb=0, max_duration_s=0.2)
    started = await recs.start(R1, APP, by="api")
    await eventually(lambda: events, timeout=5)
    [(done, data)] = events
    assert done.rec_id == started.rec_id and data["reason"] == "max_duration"
    assert [type(c).__name__ for c in sent] == ["StartRecording", "ApplyLinks", "ApplyLinks",
                                                "StopRecording"]
    assert recs.active == {} and recs.by_room == {}


async def test_falling_below_the_floor_stops_recordings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recs, _, events = _recordings(tmp_path, min_free_mb=1)
    await recs.start(R1, APP, by="api")
    await recs.check_disk()  # plenty of room: nothing happens
    assert recs.active and not events
    monkeypatch.setattr(recs, "free_mb", lambda: 0.5)
    await recs.check_disk()
    assert not recs.active and events[0][1]["reason"] == "disk_full"


# -- speaking detection (conference events) ---------------------------------------------------
def test_speaking_starts_at_the_threshold_and_stops_after_the_hold() -> None:
    from media.speaking import SpeakingTracker
    t = SpeakingTracker(threshold=10, hold_s=1.0, min_gap_s=1.0)
    assert t.update({"a": 0, "b": 0}, 0.0) == []
    assert t.update({"a": 50, "b": 5}, 0.1) == [("a", True)]
    assert t.update({"a": 0, "b": 0}, 0.5) == []  # a pause between words
    assert t.update({"a": 0, "b": 0}, 1.0) == []
    assert t.update({"a": 0, "b": 0}, 1.2) == [("a", False)]
    assert t.speaking() == set()


def test_speaking_is_rate_limited_per_participant() -> None:
    from media.speaking import SpeakingTracker
    t = SpeakingTracker(threshold=10, hold_s=0.0, min_gap_s=1.0)
    events = []
    now = 0.0
    for i in range(100):  # a level flapping every 50 ms for 5 s
        now = i * 0.05
        events += [(now, *e) for e in t.update({"a": 50 if i % 2 else 0, "b": 50}, now)]
    a = [e for e in events if e[1] == "a"]
    assert all(y[0] - x[0] >= 1.0 for x, y in itertools.pairwise(a)), a
    assert len(a) <= 6 and [e[2] for e in a[:2]] == [True, False]
    assert [e[1:] for e in events if e[1] == "b"] == [("b", True)]
    # a change undone within the gap is never reported
    t2 = SpeakingTracker(threshold=10, hold_s=0.0, min_gap_s=1.0)
    assert t2.update({"a": 50}, 0.0) == [("a", True)]
    assert t2.update({"a": 0}, 0.3) == [] and t2.update({"a": 50}, 0.6) == []
    assert t2.update({"a": 50}, 1.5) == []


def test_speaking_forgets_who_left() -> None:
    from media.speaking import SpeakingTracker
    t = SpeakingTracker(threshold=10)
    t.update({"a": 50}, 0.0)
    assert t.update({}, 0.1) == [] and t.speaking() == set()
    assert t.update({"a": 50}, 0.2) == [("a", True)]  # back: a new participant


def test_conference_record_and_status_url_fields() -> None:
    from gateway.actions.conference import Conference
    from gateway.actions.schema import parse_document
    from gateway.strict import ValidationError

    [c] = parse_document({"actions": [{"conference": {
        "room": "r", "record": True, "status_url": "https://app.example/status"}}]})
    assert isinstance(c, Conference) and c.record and c.status_url == "https://app.example/status"
    for bad, reason in (({"status_url": "ftp://x"}, "must be an http:// or https:// URL"),
                        ({"status_url": "https://x/" + "a" * 2048}, "length must be 1 to 2048"),
                        ({"status_url": 5}, "must be a string"),
                        ({"record": 1}, "must be a boolean")):
        with pytest.raises(ValidationError) as err:
            parse_document({"actions": [{"conference": {"room": "r", **bad}}]})
        assert [(d.path, d.reason) for d in err.value.details] == [
            (f"actions[0].conference.{next(iter(bad))}", reason)], err.value.details


# -- POST /v1/calls: the request, caller IDs, the application ----------------------------------
def test_call_request_parsing() -> None:
    from gateway.call.request import parse_call_request
    from gateway.strict import ValidationError

    req = parse_call_request({"to": "bob", "from": "+1555", "actions": [{"hangup": {}}]})
    assert req.registered_user and req.timeout == 30 and req.actions and not req.answer_url
    req = parse_call_request({"to": "sip:bob@example.com:5070;transport=tcp", "from": "x",
                              "answer_url": "https://a.example/x", "timeout": 5.5,
                              "application_id": "app"})
    assert not req.registered_user and req.actions is None and req.timeout == 5.5

    def reasons(body: Any) -> dict[str, str]:
        with pytest.raises(ValidationError) as err:
            parse_call_request(body)
        return {d.path: d.reason for d in err.value.details}

    assert reasons("x") == {"": "must be a JSON object"}
    assert set(reasons({})) == {"to", "from", ""}
    got = reasons({"to": "sip:" + "a" * 300 + "@h", "from": "a b", "timeout": True,
                   "answer_url": "ftp://x", "application_id": "", "actions": [{"x": {}}]})
    assert set(got) == {"to", "from", "timeout", "answer_url", "application_id", "actions[0].x",
                        ""}
    assert reasons({"to": "b", "from": "a", "actions": [], "timeout": 601}) == {
        "actions": "must hold 1 to 50 actions", "timeout": "must be 1 to 600"}


def test_caller_ids_and_application_choice() -> None:
    from gateway.call.request import caller_id_allowed, choose_application

    def app(id_: str, cust: str, ids: tuple[str, ...] = ()) -> Application:
        return Application(id=id_, customer_id=cust, answer_url="http://x/a", secret="12345678",
                           caller_ids=ids)
    a = app("a", "c1", ("+1555*", "support"))
    assert caller_id_allowed(a, "+15551234") and caller_id_allowed(a, "support")
    assert not caller_id_allowed(a, "+1666") and not caller_id_allowed(a, "supporter")
    assert not caller_id_allowed(app("b", "c1"), "+1555")  # none configured: none allowed
    assert caller_id_allowed(app("b", "c1", ("*",)), "anything")
    apps = [a, app("b", "c2"), app("c", "c2")]
    assert choose_application(apps, None, "c2") is apps[1]
    assert choose_application(apps, "c", "c2") is apps[2]
    assert choose_application(apps, "a", "c2") is None  # another customer's
    assert choose_application(apps, None, None) is None  # an admin must name one
    assert choose_application(apps, "b", None) is apps[1]
    with pytest.raises(ConfigError, match="caller_ids"):
        from_dict({"applications": [{"id": "a", "customer_id": "c", "answer_url": "http://x/a",
                                     "secret": "12345678", "caller_ids": ["+1 555"]}]})


async def test_an_unusable_directory_refuses_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    recs, sent, _ = _recordings(tmp_path, min_free_mb=0, dir=str(blocker / "recordings"))
    with pytest.raises(RecordingRefused) as info:
        await recs.start(R1, APP, by="api")
    assert info.value.reason == "error" and not sent and not recs.active
