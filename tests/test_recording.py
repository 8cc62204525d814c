"""Room recordings on real SIP and RTP: what the served WAV holds (FFT), its length against
the wall clock, recording.completed at a real receiver, REST start/stop, Range requests,
customer scope, the disk floor, and a kill -9 in the middle of a recording."""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import struct
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from media.analysis import tone_level_dbfs
from media.tones import read_wav
from tests.harness import (
    AppServer,
    GatewayProc,
    Phonebank,
    app_config,
    start_gateway,
    verify_signature,
)
from tests.waiting import eventually

pytestmark = pytest.mark.sip

TOKEN = "token-cust-test-0123456789"
OTHER = "token-cust-other-0123456789"
TOKENS = {"tokens": [{"token": TOKEN, "customer_id": "cust_test"},
                     {"token": OTHER, "customer_id": "cust_other"}]}
HEARD_DB = -30.0
GatewayFactory = Callable[..., Awaitable[GatewayProc]]


async def fetch(gw: GatewayProc, path: str, token: str = TOKEN,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(
            gw.http + path, headers={"Authorization": f"Bearer {token}", **(headers or {})}
    ) as r:
        return r.status, await r.read(), dict(r.headers)


def analyse(wav: bytes) -> tuple[float, dict[int, float]]:
    """Duration and the levels of both callers' tones in a served WAV."""
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32768.0
    seg = x[rate // 2: len(x) - rate // 4]  # past the joins, before the hang-ups
    return len(x) / rate, {f: tone_level_dbfs(seg, rate, f) for f in (440, 700)}


def recording_events(app: AppServer) -> list[dict[str, Any]]:
    return [w for w in app.webhooks() if w["event"] == "recording.completed"]


async def callers_in_room(phones: Phonebank, gw: GatewayProc, room: str = "rec") -> float:
    """Two callers sending 440 Hz and 700 Hz join `room`; the loop time when both are in."""
    phones.call("a", gw.uri(), tone_hz=440)
    phones.call("b", gw.uri(), tone_hz=700)
    for cid in ("a", "b"):
        await phones.wait("media", cid, timeout=15)
    await eventually(lambda: gw.get(f"/v1/conferences/{room}"), timeout=10)

    async def both_in() -> bool:
        status, body = await gw.get(f"/v1/conferences/{room}")
        return status == 200 and len(body["participants"]) == 2
    await eventually(both_in, timeout=10)
    return asyncio.get_running_loop().time()


async def hang_up(phones: Phonebank, *cids: str) -> float:
    await phones.hangup_all(cids)
    return asyncio.get_running_loop().time()


async def test_record_on_join_serves_the_mix_and_sends_recording_completed(
    app: AppServer, gateway_factory: GatewayFactory, phones: Phonebank
) -> None:
    app.answer = lambda p: {"actions": [{"conference": {"room": "rec", "record": True}}]}
    gw = await gateway_factory([app_config(app)], api=TOKENS)
    gw.token = TOKEN
    phones.call("a", gw.uri(), tone_hz=440)
    media_a = await phones.wait("media", "a", timeout=15)
    phones.call("b", gw.uri(), tone_hz=700)
    await phones.wait("media", "b", timeout=15)
    await asyncio.sleep(4.0)
    ended = await hang_up(phones, "b", "a")
    wall = ended - media_a["at"]
    await app.wait_for(lambda: recording_events(app), timeout=15)
    [event] = recording_events(app)
    rec = next(r for r in app.posts("/events") if r.json["event"] == "recording.completed")
    assert verify_signature(rec)
    data = event["data"]
    assert event["call"] is None and event["conference"] == {
        "room": "rec", "customer_id": "cust_test", "participants": 0}
    assert data["room"] == "rec" and data["recording_id"].startswith("rec_")
    assert data["url"] == f"/v1/recordings/{data['recording_id']}/audio"
    assert data["reason"] == "room_ended" and data["status"] == "completed"
    print(f"record on join: duration_s={data['duration_s']} wall={wall:.3f}")
    assert abs(data["duration_s"] - wall) < 1.5, (data, wall)
    # the first caller's timeline says it started the recording; the second's does not
    _, ended_calls = await gw.get("/v1/calls?state=ended")
    started = [[e for e in c["timeline"] if e["event"] == "recording.started"]
               for c in ended_calls["calls"]]
    assert sorted(len(s) for s in started) == [0, 1], started
    assert next(s for s in started if s)[0]["recording_id"] == data["recording_id"]
    status, meta = await gw.get(f"/v1/recordings/{data['recording_id']}")
    assert status == 200
    assert meta["room"] == "rec" and meta["status"] == "completed"
    assert meta["duration_s"] == data["duration_s"] and meta["started_at"].endswith("Z")
    status, wav, headers = await fetch(gw, data["url"])
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    duration, heard = analyse(wav)
    print(f"record on join: served {duration:.3f} s, levels {heard}")
    assert abs(duration - data["duration_s"]) < 0.05
    assert heard[440] > HEARD_DB and heard[700] > HEARD_DB, heard
    # Range: the bytes asked for, 206
    status, part, headers = await fetch(gw, data["url"], headers={"Range": "bytes=100-1099"})
    assert status == 206 and part == wav[100:1100], (status, len(part))
    assert headers["Content-Range"] == f"bytes 100-1099/{len(wav)}"
    # another customer's token sees no such recording
    for path in (f"/v1/recordings/{data['recording_id']}", data["url"]):
        status, body, _ = await fetch(gw, path, token=OTHER)
        assert status == 404, body
    for bad in ("rec_nope", "rec_" + "x" * 5000, "..%2F..%2Fetc%2Fpasswd"):
        status, _, _ = await fetch(gw, f"/v1/recordings/{bad}/audio")
        assert status == 404, bad


async def test_start_and_stop_by_rest(
    app: AppServer, gateway_factory: GatewayFactory, phones: Phonebank
) -> None:
    app.answer = lambda p: {"actions": [{"conference": {"room": "rec"}}]}
    gw = await gateway_factory([app_config(app)], api=TOKENS)
    gw.token = TOKEN
    await callers_in_room(phones, gw)
    status, body = await gw.request("POST", "/v1/conferences/rec/recordings", {"x": 1})
    assert status == 400 and body["error"]["code"] == "invalid_body"
    status, body = await gw.request("POST", "/v1/conferences/rec/recordings", token=OTHER)
    assert status == 404
    status, started = await gw.request("POST", "/v1/conferences/rec/recordings")
    assert status == 201, started
    t0 = asyncio.get_running_loop().time()
    rec_id = started["id"]
    assert rec_id.startswith("rec_") and started["status"] == "recording"
    status, body = await gw.request("POST", "/v1/conferences/rec/recordings", {})
    assert status == 409 and rec_id in body["error"]["message"]
    status, body, _ = await fetch(gw, f"/v1/recordings/{rec_id}/audio")
    assert status == 409  # not finished yet
    await asyncio.sleep(1.0)
    # a second with everyone muted: nobody is heard, and the file's clock runs on (silence)
    _, room = await gw.get("/v1/conferences/rec")
    for muted in (True, False):
        for p in room["participants"]:
            status, _ = await gw.request(
                "PATCH", f"/v1/conferences/rec/participants/{p['call_id']}", {"muted": muted})
            assert status == 200
        await asyncio.sleep(1.0)
    await asyncio.sleep(1.0)
    status, body = await gw.request("DELETE", f"/v1/conferences/rec/recordings/{rec_id}",
                                    token=OTHER)
    assert status == 404
    status, done = await gw.request("DELETE", f"/v1/conferences/rec/recordings/{rec_id}")
    wall = asyncio.get_running_loop().time() - t0
    assert status == 200 and done["status"] == "completed" and done["reason"] == "api", done
    print(f"rest stop: duration_s={done['duration_s']} wall={wall:.3f}")
    assert abs(done["duration_s"] - wall) < 1.0, (done, wall)
    status, _ = await gw.request("DELETE", f"/v1/conferences/rec/recordings/{rec_id}")
    assert status == 404
    await app.wait_for(lambda: recording_events(app))
    [event] = recording_events(app)
    assert event["data"]["recording_id"] == rec_id and event["data"]["reason"] == "api"
    assert event["conference"]["participants"] == 2
    status, wav, _ = await fetch(gw, f"/v1/recordings/{rec_id}/audio")
    assert status == 200
    _, heard = analyse(wav)
    assert heard[440] > HEARD_DB and heard[700] > HEARD_DB, heard
    x = np.frombuffer(wav[44:], dtype="<i2") / 32768.0
    rms = [float(np.sqrt(np.mean(x[i:i + 4000] ** 2))) for i in range(0, len(x) - 4000, 4000)]
    quiet = [r for r in rms if r < 0.003]  # the muted second, as silence in the file
    assert 1 <= len(quiet) <= 3, rms
    # the callers are still in the room, and a new recording may start
    status, again = await gw.request("POST", "/v1/conferences/rec/recordings")
    assert status == 201 and again["id"] != rec_id
    await hang_up(phones, "a", "b")
    await app.wait_for(lambda: len(recording_events(app)) == 2)
    assert recording_events(app)[1]["data"]["reason"] == "room_ended"


async def test_disk_floor_refuses_and_says_why(
    app: AppServer, gateway_factory: GatewayFactory, phones: Phonebank
) -> None:
    app.answer = lambda p: {"actions": [{"conference": {"room": "rec", "record": True}}]}
    gw = await gateway_factory([app_config(app)], api=TOKENS,
                               recordings={"min_free_mb": 10 * 1024 * 1024})
    gw.token = TOKEN
    phones.call("a", gw.uri(), tone_hz=440)
    await phones.wait("media", "a", timeout=15)
    status, calls = await gw.get("/v1/calls")
    [call] = calls["calls"]

    async def refused() -> list[dict[str, Any]]:
        _, record = await gw.get(f"/v1/calls/{call['id']}")
        return [e for e in record["timeline"] if e["event"] == "recording.refused"]
    [entry] = await eventually(refused)
    assert entry["reason"] == "disk_full" and entry["room"] == "rec"
    status, body = await gw.request("POST", "/v1/conferences/rec/recordings")
    assert status == 507 and body["error"]["code"] == "disk_full"
    await hang_up(phones, "a")
    assert "recording.refused" in gw.log()
    assert recording_events(app) == []


async def test_kill_9_during_a_recording_leaves_a_playable_file(
    app: AppServer, gateway_factory: GatewayFactory, phones: Phonebank, tmp_path: Path
) -> None:
    app.answer = lambda p: {"actions": [{"conference": {"room": "rec"}}]}
    first = await start_gateway(tmp_path, [app_config(app)], api=TOKENS)
    try:
        first.token = TOKEN
        await callers_in_room(phones, first)
        status, started = await first.request("POST", "/v1/conferences/rec/recordings")
        assert status == 201, started
        t0 = asyncio.get_running_loop().time()
        await asyncio.sleep(4.0)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        elapsed = asyncio.get_running_loop().time() - t0
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
            first.proc.wait()
    assert "Traceback" not in first.log()
    [wav_path] = (tmp_path / "recordings").glob("*.wav")
    head = wav_path.read_bytes()[:44]
    assert struct.unpack("<I", head[40:44])[0] == 0  # the killed writer's header: no sizes
    for cid in ("a", "b"):
        with contextlib.suppress(Exception):
            phones.hangup(cid)
    gw = await gateway_factory([app_config(app)], api=TOKENS)
    gw.token = TOKEN
    status, meta = await gw.get(f"/v1/recordings/{started['id']}")
    assert status == 200 and meta["status"] == "completed", meta
    assert meta["reason"] == "gateway_restart"
    # at most about half a second of audio was still in the writer's buffers
    print(f"kill -9: duration_s={meta['duration_s']} started->kill={elapsed:.3f}")
    assert elapsed - 1.0 < meta["duration_s"] <= elapsed + 0.5, (meta, elapsed)
    status, wav, _ = await fetch(gw, f"/v1/recordings/{started['id']}/audio")
    assert status == 200
    duration, heard = analyse(wav)
    assert duration == pytest.approx(meta["duration_s"], abs=0.01)
    assert heard[440] > HEARD_DB and heard[700] > HEARD_DB, heard
    x, _ = read_wav(wav_path)
    assert np.max(np.abs(x)) > 0.05
    await app.wait_for(lambda: recording_events(app), timeout=15)
    [event] = recording_events(app)
    assert event["data"]["reason"] == "gateway_restart"
    assert event["data"]["recording_id"] == started["id"]


async def test_sigterm_completes_the_recording(
    app: AppServer, gateway_factory: GatewayFactory, phones: Phonebank, tmp_path: Path
) -> None:
    """A gateway stopped during a recording closes the file and sends the event itself: the
    next start finds nothing to repair."""
    app.answer = lambda p: {"actions": [{"conference": {"room": "rec", "record": True}}]}
    gw = await gateway_factory([app_config(app)], api=TOKENS)
    gw.token = TOKEN
    await callers_in_room(phones, gw)
    await asyncio.sleep(1.5)
    assert gw.stop() == 0
    await app.wait_for(lambda: recording_events(app), timeout=15)
    [event] = recording_events(app)
    assert event["data"]["reason"] in ("shutdown", "room_ended")
    assert event["data"]["status"] == "completed" and event["data"]["duration_s"] > 1
    for cid in ("a", "b"):
        await phones.wait("ended", cid)
    again = await gateway_factory([app_config(app)], api=TOKENS)
    again.token = TOKEN
    status, meta = await again.get(f"/v1/recordings/{event['data']['recording_id']}")
    assert status == 200 and meta["reason"] == event["data"]["reason"]
    assert "recording.recovered" not in again.log()
