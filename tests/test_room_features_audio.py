"""Room features on real SIP and RTP, measured with numpy: wait music, start_on_enter, beeps,
max_participants, hold, coaching, announcements, DTMF controls, and all of it in a large room.

Each test is one room scenario with several checks, so the suite stays short. Times inside a
recording come from the phonebank's `media` event (the recording starts then); windows keep
a few hundred ms of margin on each side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media.analysis import tone_level_dbfs
from media.tones import BEEP_ENTER_HZ, BEEP_EXIT_HZ, sine, write_wav
from tests.audio import duration_s, levels, read_final
from tests.harness import AppServer, GatewayProc, Phonebank, app_config
from tests.waiting import eventually

pytestmark = pytest.mark.sip

HEARD_DB = -25.0
# A looping WAV player (the test phones' tones, the wait music) clicks at its loop point, and a
# click reads up to about -40 dBFS at any frequency over a second or so: "not heard" is below
# -38 here, still 26 dB under a tone that is heard (about -12).
SILENT_DB = -38.0
MUSIC_HZ = 523.0  # the wait music in these tests: a plain tone, easy to measure
ANNOUNCE_HZ = 1900.0
DTMF_HZ = (697.0, 770.0, 941.0, 1209.0, 1477.0)  # rows and columns of *, 6 and #


def tone_file(tmp: Path, hz: float, seconds: float) -> bytes:
    path = tmp / f"tone-{hz:g}.wav"
    write_wav(path, sine(hz, seconds))
    return path.read_bytes()


def serve_media(app: AppServer, tmp: Path) -> tuple[str, str]:
    """The wait music (looped by the gateway) and an announcement tone, on the app server."""
    app.media["music"] = (tone_file(tmp, MUSIC_HZ, 2.0), {"Content-Type": "audio/wav"})
    app.media["announce"] = (tone_file(tmp, ANNOUNCE_HZ, 1.5), {"Content-Type": "audio/wav"})
    return app.url + "/media/music", app.url + "/media/announce"


def track(path: Path, freq: float, win_s: float = 0.1, step_s: float = 0.02
          ) -> tuple[np.ndarray, np.ndarray]:
    """(times, dBFS) of one tone over a recording, in sliding windows."""
    x, rate = read_final(path)
    n, h = int(win_s * rate), int(step_s * rate)
    starts = range(0, max(0, len(x) - n), h)
    times = np.array([(i + n / 2) / rate for i in starts])
    return times, np.array([tone_level_dbfs(x[i:i + n], rate, freq) for i in starts])


def peak(path: Path, freq: float, start_s: float, end_s: float) -> float:
    t, lv = track(path, freq)
    sel = lv[(t >= start_s) & (t <= end_s)]
    return float(sel.max()) if len(sel) else -150.0


def speech_db(path: Path, start_s: float, end_s: float, tones: tuple[float, ...]) -> float:
    """Power (dB) in the voice band (250-3400 Hz) away from the test tones: speech. The
    upper quartile over 100 ms frames: a click (one frame) does not count, pauses between
    words do not hide the speech."""
    x, rate = read_final(path)
    n = rate // 10
    freqs = np.fft.rfftfreq(n, 1 / rate)
    band = (freqs >= 250) & (freqs <= 3400)
    for f in tones:
        band &= np.abs(freqs - f) > 60
    window = np.hanning(n)
    frames = []
    for i in range(int(start_s * rate), int(end_s * rate) - n, n // 2):
        spectrum = np.abs(np.fft.rfft(x[i:i + n] * window)) ** 2
        frames.append(10 * np.log10(spectrum[band].sum() / n + 1e-12))
    return float(np.percentile(frames, 75))


class Scene:
    """Calls placed from one phonebank, with each recording's clock."""

    def __init__(self, phones: Phonebank, gw: GatewayProc, tmp: Path) -> None:
        self.phones, self.gw, self.tmp = phones, gw, tmp
        self.recs: dict[str, Path] = {}
        self.started: dict[str, float] = {}
        self.ids: dict[str, str] = {}

    async def call(self, cid: str, hz: float, number: str) -> None:
        self.recs[cid] = self.tmp / f"{cid}.wav"
        self.phones.call(cid, self.gw.uri(), tone_hz=hz, record=str(self.recs[cid]),
                         **{"from": number})
        self.started[cid] = (await self.phones.wait("media", cid))["at"]

    def now(self, cid: str) -> float:
        """Seconds into `cid`'s recording, now."""
        return asyncio.get_running_loop().time() - self.started[cid]

    async def find_ids(self, room: str, count: int) -> dict[str, str]:
        async def listed() -> Any:
            status, body = await self.gw.get(f"/v1/conferences/{room}")
            return body if status == 200 and len(body["participants"]) >= count else None
        body = await eventually(listed, message=f"{count} participants in {room}")
        for p in body["participants"]:
            self.ids[p["from"]] = p["call_id"]
        return self.ids

    async def hang_up_all(self) -> None:
        await self.phones.hangup_all(self.recs)

    async def patch(self, room: str, call_id: str, body: Any) -> tuple[int, Any]:
        return await self.gw.request("PATCH", f"/v1/conferences/{room}/participants/{call_id}",
                                     body)


def by_caller(actions: dict[str, list[dict[str, Any]]]) -> Any:
    return lambda payload: {"actions": actions[payload["call"]["from"]]}


async def test_wait_music_until_someone_joins_and_beeps_for_the_others(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    music, _ = serve_media(app, tmp_path)
    room = {"room": "lobby", "wait_url": music, "beep": "both"}
    app.answer = lambda p: {"actions": [{"conference": room}]}
    s = Scene(phones, gateway, tmp_path)
    await s.call("a", 440, "+15550000001")
    await asyncio.sleep(2.5)
    await s.call("b", 700, "+15550000002")
    await asyncio.sleep(2.5)
    phones.hangup("b")
    await phones.wait("ended", "b")
    await asyncio.sleep(2.5)
    phones.hangup("a")
    await phones.wait("ended", "a")

    t, music_lv = track(s.recs["a"], MUSIC_HZ)
    _, b_lv = track(s.recs["a"], 700)
    b_on = t[np.argmax(b_lv > HEARD_DB)]
    b_off = t[len(b_lv) - 1 - np.argmax(b_lv[::-1] > HEARD_DB)]
    assert 2.0 < b_on < b_off, (b_on, b_off)
    alone = (t > 0.8) & (t < b_on - 0.3)
    assert np.median(music_lv[alone]) > HEARD_DB, "a alone does not hear the wait music"
    # the music stops when b is mixed in: both changes are one bridge update
    last_music = t[(t < b_on + 1.0) & (music_lv > HEARD_DB)].max()
    assert abs(last_music - b_on) <= 0.3, f"music went on {last_music - b_on:.3f} s after b"
    # (over the whole stretch: a 100 ms window around a test phone's tone loop point, a
    # click, reads some energy at every frequency)
    together = levels(s.recs["a"], MUSIC_HZ, 700, start_s=b_on + 0.4, end_s=b_off - 0.3)
    assert together[MUSIC_HZ] < SILENT_DB < HEARD_DB < together[700], together
    back = (t > b_off + 0.8) & (t < t[-1] - 0.3)
    assert np.median(music_lv[back]) > HEARD_DB, "no music once alone again"
    # beeps: a hears b's enter and exit beeps; b hears none (not even its own)
    assert peak(s.recs["a"], BEEP_ENTER_HZ[0], b_on - 0.6, b_on + 0.6) > -32
    assert peak(s.recs["a"], BEEP_EXIT_HZ[0], b_off - 0.3, b_off + 1.0) > -32
    for hz in (*BEEP_ENTER_HZ, *BEEP_EXIT_HZ):
        assert peak(s.recs["b"], hz, 0.0, 10.0) < SILENT_DB, f"b hears a beep at {hz} Hz"
    b = levels(s.recs["b"], 440, MUSIC_HZ, skip_s=0.5)
    assert b[440] > HEARD_DB and b[MUSIC_HZ] < SILENT_DB, b


@pytest.mark.parametrize("full_mesh_max", [20, 2])
async def test_start_on_enter_false_waits_with_music_for_the_moderator(
    app: AppServer, gateway_factory: Any, phones: Phonebank, tmp_path: Path,
    full_mesh_max: int,
) -> None:
    gw = await gateway_factory([app_config(app)], rooms={"full_mesh_max": full_mesh_max})
    music, _ = serve_media(app, tmp_path)
    waiting = {"conference": {"room": "class", "start_on_enter": False, "wait_url": music}}
    app.answer = by_caller({"+1a": [waiting], "+1b": [waiting],
                            "+1m": [{"conference": {"room": "class", "wait_url": music}}]})
    s = Scene(phones, gw, tmp_path)
    await s.call("a", 440, "+1a")
    await s.call("b", 700, "+1b")
    await asyncio.sleep(2.0)
    _, body = await gw.get("/v1/conferences/class")
    assert all(p["waiting"] for p in body["participants"]), body
    before = {c: (0.5, s.now(c) - 0.2) for c in "ab"}
    await s.call("m", 1100, "+1m")
    await asyncio.sleep(3.5)  # a large room picks its speakers within a second or so
    await s.hang_up_all()
    # "after": each recording's own last seconds (its clock may lag the test's when loaded)
    after = {c: (duration_s(s.recs[c]) - 1.7, duration_s(s.recs[c]) - 0.3) for c in "abm"}
    for cid, other in (("a", 700), ("b", 440)):
        pre = levels(s.recs[cid], MUSIC_HZ, other, 1100, start_s=before[cid][0],
                     end_s=before[cid][1])
        assert pre[MUSIC_HZ] > HEARD_DB, (cid, "no wait music", pre)
        assert pre[other] < SILENT_DB and pre[1100] < SILENT_DB, (cid, "hears before", pre)
        post = levels(s.recs[cid], MUSIC_HZ, other, 1100, start_s=after[cid][0],
                      end_s=after[cid][1])
        assert post[other] > HEARD_DB and post[1100] > HEARD_DB, (cid, post)
        assert post[MUSIC_HZ] < SILENT_DB, (cid, "music after the start", post)
    m = levels(s.recs["m"], 440, 700, MUSIC_HZ, start_s=after["m"][0], end_s=after["m"][1])
    assert m[440] > HEARD_DB and m[700] > HEARD_DB and m[MUSIC_HZ] < SILENT_DB, m


async def test_hold_coach_announce_full_room_and_bad_patches(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    music, announce = serve_media(app, tmp_path)
    room = {"room": "ops", "wait_url": music, "max_participants": 3}
    app.answer = by_caller({
        "+1a": [{"conference": room}], "+1b": [{"conference": room}],
        "+1c": [{"conference": room}],
        # the room is full for d: its next action runs
        "+1d": [{"conference": room}, {"conference": {"room": "overflow"}}],
    })
    s = Scene(phones, gateway, tmp_path)
    for cid, hz in (("a", 440), ("b", 700), ("c", 1100)):
        await s.call(cid, hz, f"+1{cid}")
    ids = await s.find_ids("ops", 3)
    a_id = ids["+1a"]
    await s.call("d", 1500, "+1d")
    await s.find_ids("overflow", 1)
    _, ops = await gateway.get("/v1/conferences/ops")
    assert len(ops["participants"]) == 3
    _, d_call = await gateway.get(f"/v1/calls/{ids['+1d']}")
    full = [e for e in d_call["timeline"] if e["event"] == "conference.full"]
    assert full and full[0]["reason"] == "room_full", d_call["timeline"]

    # bad bodies: 400 with details, nothing changed
    bad: Mapping[str, object]  # PATCH bodies, then announcement bodies
    for bad, path in (({"muted": "yes"}, "muted"), ({"hold": 1}, "hold"),
                      ({"mute": True}, "mute"), ({"speak_to": "call_x"}, "speak_to"),
                      ({"speak_to": [1]}, "speak_to[0]"), ({}, ""),
                      ({"speak_to": ["call_notinroom"]}, "speak_to[0]")):
        status, body = await s.patch("ops", a_id, bad)
        assert status == 400 and body["error"]["code"] == "invalid_body", (bad, body)
        assert path in [d["path"] for d in body["error"]["details"]], (bad, body)
    status, body = await gateway.request("PATCH", f"/v1/conferences/ops/participants/{a_id}",
                                         None)
    assert status == 400
    for bad in ({"say": {"text": ""}}, {"play": {"url": "ftp://x"}}, {"sing": {}},
                {"say": {"text": "x"}, "play": {"url": music}},
                {"say": {"text": "x", "loop": 0}}):
        status, body = await gateway.request("POST", "/v1/conferences/ops/announcements", bad)
        assert status == 400 and body["error"]["details"], (bad, body)
    status, _ = await gateway.request("POST", "/v1/conferences/nope/announcements",
                                      {"say": {"text": "hi"}})
    assert status == 404

    await asyncio.sleep(1.0)
    marks: dict[str, dict[str, float]] = {}

    def mark(name: str) -> None:
        marks[name] = {c: s.now(c) for c in "abc"}

    status, part = await s.patch("ops", a_id, {"hold": True})
    assert status == 200 and part["hold"] is True, part
    mark("held")
    await asyncio.sleep(2.0)
    mark("held_end")
    status, part = await s.patch("ops", a_id, {"hold": False, "speak_to": [ids["+1b"]]})
    assert status == 200 and part["hold"] is False and part["speak_to"] == [ids["+1b"]]
    mark("coach")
    await asyncio.sleep(2.0)
    mark("coach_end")
    status, _ = await s.patch("ops", a_id, {"speak_to": None})
    assert status == 200
    status, body = await gateway.request("POST", "/v1/conferences/ops/announcements",
                                         {"play": {"url": announce}})
    assert status == 202 and body["status"] == "queued", body
    mark("announce")
    await asyncio.sleep(2.5)
    status, _ = await gateway.request("POST", "/v1/conferences/ops/announcements",
                                      {"say": {"text": "The meeting ends in five minutes."}})
    assert status == 202
    await eventually(lambda: gateway.log().count("conference.announcement ") >= 2)
    await asyncio.sleep(2.0)  # the speech lasts about 2 s
    await s.hang_up_all()

    def heard(cid: str, start: str, end: str, *freqs: float) -> dict[float, float]:
        return levels(s.recs[cid], *freqs, start_s=marks[start][cid] + 0.3,
                      end_s=marks[end][cid] - 0.2)

    a = heard("a", "held", "held_end", MUSIC_HZ, 700, 1100)
    assert a[MUSIC_HZ] > HEARD_DB and max(a[700], a[1100]) < SILENT_DB, f"held a: {a}"
    for cid in "bc":
        x = heard(cid, "held", "held_end", 440, MUSIC_HZ)
        assert x[440] < SILENT_DB and x[MUSIC_HZ] < SILENT_DB, (cid, "while a held", x)
    b = heard("b", "coach", "coach_end", 440, 1100)
    c = heard("c", "coach", "coach_end", 440, 700)
    a = heard("a", "coach", "coach_end", 700, 1100, MUSIC_HZ)
    assert b[440] > HEARD_DB and b[1100] > HEARD_DB, f"b does not hear the coach: {b}"
    assert c[440] < SILENT_DB and c[700] > HEARD_DB, f"c hears the coach: {c}"
    assert a[700] > HEARD_DB and a[1100] > HEARD_DB and a[MUSIC_HZ] < SILENT_DB, a
    for cid, others in (("a", (700, 1100)), ("b", (440, 1100)), ("c", (440, 700))):
        start = marks["announce"][cid] + 0.2
        x = levels(s.recs[cid], ANNOUNCE_HZ, *others, start_s=start, end_s=start + 1.2)
        assert x[ANNOUNCE_HZ] > HEARD_DB, (cid, "no announcement", x)
        assert all(x[f] > HEARD_DB for f in others), (cid, "conversation stopped", x)
        later = levels(s.recs[cid], ANNOUNCE_HZ, start_s=start + 1.8, end_s=start + 2.5)
        assert later[ANNOUNCE_HZ] < SILENT_DB, (cid, "the announcement played more than once")
        # the spoken one: energy between the tones rises, and the tones go on underneath
        tones = (440, 700, 1100)
        quiet = speech_db(s.recs[cid], start + 1.8, start + 2.5, tones)
        end = duration_s(s.recs[cid])
        spoken = speech_db(s.recs[cid], end - 2.0, end - 0.3, tones)
        assert spoken - quiet > 10, (cid, "no speech heard", quiet, spoken)
        x = levels(s.recs[cid], *others, start_s=end - 2.0, end_s=end - 0.3)
        assert all(x[f] > HEARD_DB for f in others), (cid, "conversation stopped", x)


async def test_dtmf_controls_mute_and_leave_without_leaking_digits(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    app.answer = by_caller({
        "+1a": [{"conference": {"room": "keys", "dtmf_controls": True}},
                {"conference": {"room": "after-keys"}}],
        # b's wait music is not audio: b joins all the same, the timeline says why
        "+1b": [{"conference": {"room": "keys", "dtmf_controls": True,
                                "wait_url": app.url + "/media/junk"}},
                {"conference": {"room": "after-b"}}],
    })
    app.media["junk"] = (b"<html>not audio</html>", {"Content-Type": "text/html"})
    s = Scene(phones, gateway, tmp_path)
    await s.call("a", 440, "+1a")
    await s.call("b", 700, "+1b")
    ids = await s.find_ids("keys", 2)
    await asyncio.sleep(1.5)
    t_mute = s.now("b")
    phones.send(op="dtmf", id="a", digits="*6", method="rfc4733")

    async def muted(want: bool) -> bool:
        _, room = await gateway.get("/v1/conferences/keys")
        return any(p["call_id"] == ids["+1a"] and p["muted"] is want
                   for p in room["participants"])
    await eventually(lambda: muted(True), message="*6 did not mute a")
    await asyncio.sleep(2.0)
    t_unmute = s.now("b")
    phones.send(op="dtmf", id="a", digits="*6", method="info")
    await eventually(lambda: muted(False), message="*6 over SIP INFO did not unmute a")
    await asyncio.sleep(2.0)
    t_leave = s.now("b")
    phones.send(op="dtmf", id="a", digits="#", method="rfc4733")
    await s.find_ids("after-keys", 1)  # a's next action runs
    _, room = await gateway.get("/v1/conferences/keys")
    assert [p["call_id"] for p in room["participants"]] == [ids["+1b"]]
    await asyncio.sleep(1.5)
    t_end = s.now("b")
    phones.send(op="dtmf", id="b", digits="#", method="info")  # `#` over SIP INFO
    await s.find_ids("after-b", 1)  # b's next action runs
    assert "digit=# method=info" in gateway.log()
    status, _ = await gateway.get("/v1/conferences/keys")
    assert status == 404, "the room outlived its last participant"
    await s.hang_up_all()

    b = s.recs["b"]
    on = levels(b, 440, start_s=0.5, end_s=t_mute - 0.1)
    off = levels(b, 440, start_s=t_mute + 1.0, end_s=t_unmute - 0.1)
    back = levels(b, 440, start_s=t_unmute + 1.0, end_s=t_leave - 0.1)
    assert on[440] > HEARD_DB and off[440] < SILENT_DB and back[440] > HEARD_DB, (on, off, back)
    for start in (t_mute, t_unmute, t_leave):
        for hz in DTMF_HZ:
            got = peak(b, hz, start - 0.2, start + 1.0)
            assert got < SILENT_DB, f"b hears a DTMF tone at {hz} Hz: {got:.1f} dBFS"
    gone = levels(b, 440, start_s=t_leave + 0.6, end_s=t_end - 0.1)
    assert gone[440] < SILENT_DB, gone
    _, a_call = await gateway.get(f"/v1/calls/{ids['+1a']}")
    left = [e for e in a_call["timeline"] if e["event"] == "conference.left"]
    assert left and left[0]["why"] == "dtmf", a_call["timeline"]
    events = [e["event"] for e in a_call["timeline"]]
    assert "participant.muted" in events and "participant.unmuted" in events, events
    _, b_call = await gateway.get(f"/v1/calls/{ids['+1b']}")
    left = [e for e in b_call["timeline"] if e["event"] == "conference.left"]
    assert left and left[0]["why"] == "dtmf", b_call["timeline"]
    failed = [e for e in b_call["timeline"] if e["event"] == "conference.wait_url_failed"]
    assert failed and "neither WAV nor MP3" in failed[0]["message"], b_call["timeline"]


async def test_large_room_keeps_hold_mute_announcements_and_beeps(
    app: AppServer, gateway_factory: Any, phones: Phonebank, tmp_path: Path
) -> None:
    gw = await gateway_factory([app_config(app)], rooms={"full_mesh_max": 2,
                                                          "max_speakers": 3})
    music, announce = serve_media(app, tmp_path)
    room = {"room": "big", "wait_url": music, "beep": "enter"}
    app.answer = lambda p: {"actions": [{"conference": room}]}
    s = Scene(phones, gw, tmp_path)
    for cid, hz in (("a", 440), ("b", 700), ("c", 1100), ("d", 0)):
        await s.call(cid, hz, f"+1{cid}")
    ids = await s.find_ids("big", 4)
    await asyncio.sleep(2.0)
    marks: dict[str, dict[str, float]] = {}

    def mark(name: str) -> None:
        marks[name] = {c: s.now(c) for c in s.recs}

    mark("talk")
    await asyncio.sleep(1.5)
    status, _ = await s.patch("big", ids["+1a"], {"hold": True})
    assert status == 200
    status, _ = await s.patch("big", ids["+1b"], {"muted": True})
    assert status == 200
    mark("held")
    await asyncio.sleep(2.0)
    mark("held_end")
    status, _ = await gw.request("POST", "/v1/conferences/big/announcements",
                                 {"play": {"url": announce}})
    assert status == 202
    mark("announce")
    await asyncio.sleep(2.0)
    mark("beep")
    await s.call("e", 0, "+1e")  # enter beep: heard by c and d (a is held)
    await asyncio.sleep(1.5)
    await s.hang_up_all()

    def heard(cid: str, start: str, end: str, *freqs: float) -> dict[float, float]:
        return levels(s.recs[cid], *freqs, start_s=marks[start][cid] + 0.3,
                      end_s=marks[end][cid] - 0.2)

    d = heard("d", "talk", "held", 440, 700, 1100)
    assert all(v > HEARD_DB for v in d.values()), f"d before: {d}"
    a = heard("a", "held", "held_end", MUSIC_HZ, 700, 1100)
    assert a[MUSIC_HZ] > HEARD_DB and max(a[700], a[1100]) < SILENT_DB, f"held a: {a}"
    d = heard("d", "held", "held_end", 440, 700, 1100, MUSIC_HZ)
    assert d[440] < SILENT_DB and d[700] < SILENT_DB, f"d hears held a or muted b: {d}"
    assert d[1100] > HEARD_DB and d[MUSIC_HZ] < SILENT_DB, d
    for cid in "bcd":
        start = marks["announce"][cid] + 0.2
        x = levels(s.recs[cid], ANNOUNCE_HZ, start_s=start, end_s=start + 1.2)
        assert x[ANNOUNCE_HZ] > HEARD_DB, (cid, "no announcement", x)
    a = levels(s.recs["a"], ANNOUNCE_HZ, start_s=marks["announce"]["a"],
               end_s=marks["beep"]["a"])
    assert a[ANNOUNCE_HZ] < SILENT_DB, f"held a hears the announcement: {a}"
    for cid in "cd":
        got = peak(s.recs[cid], BEEP_ENTER_HZ[0], marks["beep"][cid], marks["beep"][cid] + 1.5)
        assert got > -32, (cid, "no enter beep", got)
    got = peak(s.recs["a"], BEEP_ENTER_HZ[0], marks["beep"]["a"], marks["beep"]["a"] + 1.5)
    assert got < SILENT_DB, f"held a hears the beep: {got}"
