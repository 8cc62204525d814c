"""The IVR actions on real SIP and real audio: play, say, pause, gather (RFC 4733 and SIP
INFO), redirect, transfer, hangup, and callers who hang up in the middle of each."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media.tones import sine, to_pcm16
from tests.audio import levels, read_final
from tests.harness import AppServer, GatewayProc, Phonebank, verify_signature
from tests.waiting import eventually

pytestmark = pytest.mark.sip

HEARD_DB = -25.0
SILENT_DB = -45.0


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_pcm16(samples))
    return buf.getvalue()


async def action_started(gw: GatewayProc, app: AppServer, caller: str, action: str) -> str:
    """Wait until the call from `caller` has started `action`; return its call ID."""
    async def started() -> str | None:
        for r in app.answers():
            if r.json["call"]["from"] == caller:
                call_id: str = r.json["call"]["id"]
                _, rec = await gw.get(f"/v1/calls/{call_id}")
                if any(e.get("action") == action and e["event"] == "action.start"
                       for e in rec.get("timeline", [])):
                    return call_id
        return None

    return await eventually(started, 10.0, message=f"{caller} never started {action}")


async def place(phones: Phonebank, gw: GatewayProc, cid: str, **opts: Any) -> None:
    phones.call(cid, gw.uri(opts.pop("dial", "1001")), **opts)
    await phones.wait("media", cid)


# -- gather -> conference: the IVR of the issue ------------------------------------------
@pytest.mark.parametrize("method", ["rfc4733", "info"])
async def test_ivr_say_gather_then_room_chosen_by_digit(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path, method: str
) -> None:
    app.answer = lambda p: {"actions": [
        {"say": {"text": "Welcome. Press 1 for sales, 2 for support."}},
        {"gather": {"num_digits": 1, "timeout": 10, "action_url": app.url + "/hook/menu",
                    "say": {"text": "Please choose now."}}},
    ]}
    app.hooks["menu"] = lambda p: {"actions": [
        {"conference": {"room": {"1": "sales", "2": "support"}.get(p["data"]["digits"], "x")}}]}
    recs = {c: tmp_path / f"{c}.wav" for c in "abc"}
    for n, (cid, hz) in enumerate((("a", 440), ("b", 700), ("c", 1100))):
        await place(phones, gateway, cid, tone_hz=hz, record=str(recs[cid]),
                    **{"from": f"+1555000000{n}"})
    phones.send(op="dtmf", id="a", digits="2", method=method)  # during the welcome: ignored
    for n, (cid, digit) in enumerate((("a", "1"), ("b", "1"), ("c", "2"))):
        await action_started(gateway, app, f"+1555000000{n}", "gather")
        await asyncio.sleep(0.3)  # into the gather prompt: the digit interrupts it
        phones.send(op="dtmf", id=cid, digits=digit, method=method)
    await app.wait_for(lambda: len(app.posts("/hook/menu")) == 3, timeout=20)
    for r in app.posts("/hook/menu"):
        body = r.json
        assert body["event"] == "call.gather" and verify_signature(r)
        assert set(body) == {"event", "created_at", "call", "variables", "data"}
        assert body["data"]["reason"] == "num_digits"
    await asyncio.sleep(2.5)  # a and b talk in "sales", c alone in "support"
    await phones.hangup_all("abc")
    end = _duration(recs["a"])
    a = levels(recs["a"], 440, 700, 1100, start_s=end - 2.0, end_s=end - 0.3)
    b = levels(recs["b"], 440, 700, 1100, start_s=end - 2.0, end_s=end - 0.3)
    assert a[700] > HEARD_DB and b[440] > HEARD_DB, (a, b)
    assert a[1100] < SILENT_DB and b[1100] < SILENT_DB, (a, b)
    digits = sorted(r.json["data"]["digits"] for r in app.posts("/hook/menu"))
    # the gather prompt (espeak-ng speech) was heard before the digit: energy outside tones
    assert digits == ["1", "1", "2"]


def _duration(path: Path) -> float:
    x, rate = read_final(path)
    return len(x) / rate


async def test_gather_finish_key_and_timeout(
    gateway: GatewayProc, app: AppServer, phones: Phonebank
) -> None:
    app.answer = lambda p: {"actions": [
        {"type": "gather", "action_url": app.url + "/hook/g1", "timeout": 2},
        {"hangup": {"reason": "never reached"}},
    ]}
    app.hooks["g1"] = lambda p: {"actions": [
        {"gather": {"action_url": app.url + "/hook/g2", "timeout": 1, "finish_on_key": "*"}}]}
    app.hooks["g2"] = lambda p: {"actions": [{"hangup": {"reason": "done"}}]}
    await place(phones, gateway, "x")
    await asyncio.sleep(0.3)
    phones.send(op="dtmf", id="x", digits="42#", method="info")
    await app.wait_for(lambda: app.posts("/hook/g1"))
    await app.wait_for(lambda: app.posts("/hook/g2"), timeout=5)  # no input: times out
    await phones.wait("ended", "x")
    g1 = app.posts("/hook/g1")[0].json["data"]
    g2 = app.posts("/hook/g2")[0].json["data"]
    assert g1 == {"digits": "42", "reason": "finish_on_key"}
    assert g2 == {"digits": "", "reason": "timeout"}
    (done,) = await app.completed()
    assert done["data"]["hangup_cause"] == "hangup_action"
    assert done["data"]["hangup_reason"] == "done"


async def test_gather_action_url_failure_ends_call_with_error(
    gateway: GatewayProc, app: AppServer, phones: Phonebank
) -> None:
    app.answer = lambda p: {"actions": [
        {"gather": {"action_url": app.url + "/hook/bad", "timeout": 1}}]}
    app.hooks["bad"] = lambda p: (200, b'{"actions": [{"conference": {"room": "no spaces"}}]}')
    await place(phones, gateway, "x")
    await phones.wait("ended", "x", timeout=15)
    (done,) = await app.completed()
    assert done["call"]["status"] == "failed"
    err = done["data"]["error"]
    assert err["code"] == "action_url_error" and err["message"] == "invalid action payload"
    assert err["details"][0]["path"] == "actions[0].conference.room"


# -- play / say / pause / redirect / hangup ---------------------------------------------
async def test_play_served_wav_is_heard_and_cached(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    # 16 kHz source: the gateway converts it to the 8 kHz bridge rate once, on fetch
    app.media["tone.wav"] = (wav_bytes(sine(1000, 1.5, 16000, -10), 16000),
                             {"Content-Type": "audio/wav", "ETag": '"v1"',
                              "Cache-Control": "max-age=0"})
    app.answer = lambda p: {"actions": [
        {"play": {"url": app.url + "/media/tone.wav", "loop": 2}},
        {"hangup": {}}]}
    for n in (1, 2):
        rec = tmp_path / f"p{n}.wav"
        phones.call(f"p{n}", gateway.uri(), record=str(rec))
        await phones.wait("ended", f"p{n}", timeout=20)  # the gateway hangs up after play
        heard = levels(rec, 1000, 440, skip_s=0.3, tail_s=0.3)
        assert heard[1000] > -16, heard
        assert 2.6 < _duration(rec) < 5.0, _duration(rec)
    gets = app.posts("/media/tone.wav")
    assert len(gets) == 2, "the prompt was not cached"
    assert gets[1].headers.get("If-None-Match") == '"v1"', "no revalidation with the ETag"


async def test_play_mp3_and_bad_media(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    mp3 = tmp_path / "tone.mp3"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "2", str(mp3), "synth", "1.5",
                    "sine", "1000", "vol", "0.3"], check=True)
    app.media["tone.mp3"] = (mp3.read_bytes(), {"Content-Type": "application/octet-stream"})
    app.media["junk.wav"] = (b"this is not audio", {"Content-Type": "audio/wav"})
    app.answer = lambda p: {"actions": [
        {"play": {"url": app.url + "/media/tone.mp3"}},
        {"play": {"url": app.url + "/media/junk.wav"}}]}
    rec = tmp_path / "x.wav"
    phones.call("x", gateway.uri(), record=str(rec))
    await phones.wait("ended", "x", timeout=20)
    heard = levels(rec, 1000, skip_s=0.3, tail_s=0.3)
    assert heard[1000] > -20, heard
    (done,) = await app.completed()  # the second prompt is not audio: a clear error
    assert done["call"]["status"] == "failed"
    assert "neither WAV nor MP3" in done["data"]["error"]["message"]


async def test_say_pause_redirect_hangup(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    app.answer = lambda p: {"actions": [{"redirect": {"url": app.url + "/hook/next"}}]}
    app.hooks["next"] = lambda p: {"actions": [
        {"say": {"text": "Hello from MiniVoice", "voice": "en-us"}},
        {"pause": {"length": 1.5}},
        {"type": "hangup", "reason": "ivr finished"}]}
    rec = tmp_path / "x.wav"
    phones.call("x", gateway.uri(), record=str(rec))
    await phones.wait("ended", "x", timeout=20)
    (redirect,) = app.posts("/hook/next")
    assert redirect.json["event"] == "call.redirect" and verify_signature(redirect)
    x, rate = read_final(rec)
    speech = x[: int(1.0 * rate)]
    tail = x[-int(1.2 * rate):]
    assert np.sqrt(np.mean(speech**2)) > 0.01, "no speech heard"
    assert np.sqrt(np.mean(tail**2)) < 0.003, "the pause was not silent"
    (done,) = await app.completed()
    assert done["data"]["hangup_reason"] == "ivr finished"
    assert done["data"]["duration_s"] >= 1.5
    timeline = (await gateway.get(f"/v1/calls/{done['call']['id']}"))[1]["timeline"]
    started = [e["action"] for e in timeline if e["event"] == "action.start"]
    assert started == ["redirect", "say", "pause", "hangup"]


# -- transfer -----------------------------------------------------------------------------
@pytest.fixture
async def callee(tmp_path: Path) -> Any:
    bank = await Phonebank.start(tmp_path)
    port = bank.find("ready", None)["port"]  # type: ignore[index]
    yield bank, f"sip:bob@127.0.0.1:{port}"
    await bank.close()


async def test_transfer_answered_bridges_and_continues(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, callee: Any, tmp_path: Path
) -> None:
    bank, uri = callee
    bank.send(op="listen", mode="answer", tone_hz=700, record=str(tmp_path / "bob"))
    app.answer = lambda p: {"actions": [
        {"transfer": {"to": uri, "caller_id": "+15550009999"}},
        {"say": {"text": "The other party hung up."}},
        {"hangup": {"reason": "after transfer"}}]}
    rec = tmp_path / "a.wav"
    await place(phones, gateway, "a", tone_hz=440, record=str(rec))
    incoming = await bank.wait("incoming", "in1")
    assert "+15550009999" in incoming["from"]
    await bank.wait("media", "in1")
    await asyncio.sleep(2.5)
    bank.hangup("in1")  # the far end leaves first: the caller's next actions run
    await phones.wait("ended", "a", timeout=20)
    a = levels(rec, 440, 700, start_s=1.0, end_s=2.5)
    bob = levels(tmp_path / "bob-in1.wav", 440, 700, skip_s=0.8)
    assert a[700] > HEARD_DB and a[440] < SILENT_DB, a
    assert bob[440] > HEARD_DB and bob[700] < SILENT_DB, bob
    done = {w["call"]["direction"]: w for w in await app.completed(count=2)}
    child, parent = done["outbound"], done["inbound"]
    assert child["data"]["parent_call_id"] == parent["call"]["id"]
    assert child["data"]["outcome"] == "answered" and child["call"]["status"] == "completed"
    assert child["call"]["from"] == "+15550009999" and child["call"]["to"] == "bob"
    assert parent["data"]["hangup_reason"] == "after transfer"
    child_events = [w["event"] for w in app.webhooks(child["call"]["id"])]
    assert child_events == ["call.initiated", "call.answered", "call.completed"]


@pytest.mark.parametrize("mode,outcome", [("busy", "busy"), ("ring", "no-answer")])
async def test_transfer_not_answered_runs_next_action(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, callee: Any, tmp_path: Path,
    mode: str, outcome: str,
) -> None:
    bank, uri = callee
    bank.send(op="listen", mode=mode)
    app.answer = lambda p: {"actions": [
        {"transfer": {"to": uri, "timeout": 3}},
        {"hangup": {"reason": "transfer " + outcome}}]}
    rec = tmp_path / "a.wav"
    await place(phones, gateway, "a", record=str(rec))
    await phones.wait("ended", "a", timeout=20)
    done = {w["call"]["direction"]: w for w in await app.completed(count=2)}
    assert done["outbound"]["data"]["outcome"] == outcome
    assert done["outbound"]["call"]["status"] == outcome
    assert done["inbound"]["data"]["hangup_reason"] == "transfer " + outcome
    if mode == "ring":  # the caller heard ringback (440 + 480 Hz) while it rang
        heard = levels(rec, 440, 480, start_s=0.3, end_s=1.8)
        assert heard[440] > -30 and heard[480] > -30, heard


# -- hanging up in the middle of every action -------------------------------------------
MID_ACTION: dict[str, list[dict[str, Any]]] = {
    "play": [{"play": {"url": "{app}/media/long.wav", "loop": 0}}],
    "say": [{"say": {"text": "This is a long announcement. " * 20}}],
    "pause": [{"pause": {"length": 60}}],
    "gather": [{"gather": {"action_url": "{app}/hook/never", "timeout": 60,
                           "say": {"text": "Enter your account number", "loop": 0}}}],
    # (pause first: a redirect alone does not answer, and the test caller waits for media)
    "redirect": [{"pause": {"length": 0.2}}, {"redirect": {"url": "{app}/hook/slow"}}],
    "conference": [{"conference": {"room": "lonely", "end_on_exit": True}}],
    "transfer": [{"transfer": {"to": "{callee}", "timeout": 60}}],
}


@pytest.mark.parametrize("action", sorted(MID_ACTION))
async def test_caller_hangs_up_mid_action(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, callee: Any, action: str
) -> None:
    bank, uri = callee
    bank.send(op="listen", mode="ring")
    app.media["long.wav"] = (wav_bytes(sine(500, 3.0, 8000), 8000), {"ETag": '"l"'})

    async def slow(payload: dict[str, Any]) -> Any:
        await asyncio.sleep(4)  # longer than the caller stays; short enough for teardown
        return {"actions": [{"hangup": {}}]}

    app.hooks["slow"] = slow
    doc = json.dumps(MID_ACTION[action]).replace("{app}", app.url).replace("{callee}", uri)
    app.answer = lambda p: {"actions": json.loads(doc)}
    await place(phones, gateway, "x")
    await asyncio.sleep(1.5)
    phones.hangup("x")
    await phones.wait("ended", "x")
    expected = 2 if action == "transfer" else 1
    done = await app.completed(count=expected, timeout=10)
    await asyncio.sleep(0.5)
    assert len([w for w in app.webhooks() if w["event"] == "call.completed"]) == expected
    parent = next(w for w in done if w["call"]["direction"] == "inbound")
    assert parent["data"]["hangup_by"] == "caller"
    if action == "transfer":
        child = next(w for w in done if w["call"]["direction"] == "outbound")
        assert child["data"]["outcome"] == "canceled"
        await bank.wait("ended", "in1")
    _, calls = await gateway.get("/v1/calls")
    assert calls["calls"] == [], "a session leaked"
    _, rooms = await gateway.get("/v1/conferences")
    assert rooms["conferences"] == []


async def test_prompt_survives_hold_and_unhold(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    app.media["tone.wav"] = (wav_bytes(sine(1000, 1.0, 8000, -10), 8000), {"ETag": '"t"'})
    app.answer = lambda p: {"actions": [{"play": {"url": app.url + "/media/tone.wav",
                                                  "loop": 0}}]}
    rec = tmp_path / "x.wav"
    await place(phones, gateway, "x", record=str(rec))
    await asyncio.sleep(1.0)
    phones.send(op="hold", id="x")
    await asyncio.sleep(1.0)
    phones.send(op="unhold", id="x")
    await asyncio.sleep(2.0)
    phones.hangup("x")
    await phones.wait("ended", "x")
    end = _duration(rec)
    heard = levels(rec, 1000, start_s=end - 1.5, end_s=end - 0.2)
    assert heard[1000] > -20, f"the prompt stopped after unhold: {heard}"
