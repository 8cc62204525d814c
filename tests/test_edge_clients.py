"""The client matrix (docs/edge.md): softphones the project did not write register at the edge with
its default configuration, dial 1001 (a room) over UDP, TCP and, where the client can, TLS,
and talk with another member of the room: `bob`, a pjsua2 phonebank phone registered at the
same edge, who plays a 700 Hz tone and records what he hears.

What is measured, per client (FFT on recordings, tests/audio.py):
- baresip, pjsua, linphonec: each plays its own tone, bob must hear it; each records what it
  hears, and must hear bob's tone.
- SIPp: streams its tone (A-law file); bob must hear it. SIPp cannot record.
The edge's log must show each registration and INVITE with the algorithm the client used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import sipp
from gateway.edge.users import UserStore
from media.analysis import tone_level_dbfs
from media.tones import sine, write_wav
from tests.audio import read_final
from tests.clients import Baresip, Linphonec, Pjsua, sipp_digest_scenario
from tests.edge_stack import Stack, start_stack
from tests.harness import AppServer, Phonebank, app_config, rtp_block

pytestmark = pytest.mark.sip

ALICE_PW = "alice-matrix-pass-31"
BOB_PW = "bob-matrix-pass-47"
BOB_HZ = 700
ROOM = "matrix-room"
TOGETHER_S = 4.0  # both in the room this long before hanging up


@pytest.fixture
async def stack(tmp_path: Path, app: AppServer) -> AsyncIterator[Stack]:
    """The edge as configured by default (no `digest_algorithms`): that is what must work."""
    app.answer = lambda p: {"actions": [{"conference": {"room": ROOM}}]}
    s = await start_stack(tmp_path, [app_config(app)], ban_after_failures=5, ban_s=60)
    users = UserStore(s.users_db, "minivoice")
    users.add("alice", ALICE_PW)
    users.add("bob", BOB_PW)
    yield s
    code = s.gw.stop()
    log = s.gw.log()
    assert "Traceback" not in log, log[-4000:]
    assert code == 0, f"exit code {code}\n{log[-3000:]}"


def tone(tmp: Path, hz: int, seconds: float = 60.0) -> Path:
    path = tmp / f"tone-{hz}.wav"
    write_wav(path, sine(hz, seconds))
    return path


def heard(path: Path, hz: float, other_hz: float, window_s: float = 1.0) -> tuple[float, float]:
    """(level of `hz`, level of `other_hz`) in the 1 s window where `hz` is loudest: the
    parties join at different times, so where in each recording they overlap varies."""
    x, rate = read_final(path)
    n = int(window_s * rate)
    assert len(x) >= n, f"{path}: only {len(x) / rate:.2f} s recorded"
    best = (-200.0, -200.0)
    for start in range(0, len(x) - n + 1, n // 4):
        seg = x[start:start + n]
        level = tone_level_dbfs(seg, rate, hz)
        if level > best[0]:
            best = (level, tone_level_dbfs(seg, rate, other_hz))
    return best


async def room_size(stack: Stack) -> int:
    _, body = await stack.gw.get("/v1/conferences")
    return sum(len(c["participants"]) for c in body["conferences"] if c["room"] == ROOM)


async def wait_room(stack: Stack, members: int, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if await room_size(stack) == members:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"room has {await room_size(stack)} members, not {members}:\n"
                         + "\n".join(stack.edge_log()[-20:]))


async def bob_joins(stack: Stack, tmp: Path) -> tuple[Phonebank, Path]:
    """The other member: registered at the edge as bob, in the room, playing BOB_HZ."""
    bob = await Phonebank.start(tmp)
    domain = f"127.0.0.1:{stack.edge_port}"
    bob.send(op="register", user="bob", password=BOB_PW, domain=domain,
             registrar=f"sip:{domain}")
    assert (await bob.wait("registered", None, user="bob"))["code"] == 200
    rec = tmp / "bob-heard.wav"
    bob.call("b", stack.uri("1001"), account="bob", tone_hz=BOB_HZ, record=str(rec))
    await bob.wait("media", "b", timeout=15)
    return bob, rec


async def bob_leaves(bob: Phonebank) -> None:
    bob.hangup("b")
    await bob.wait("ended", "b")
    await bob.close()


def assert_edge_saw(stack: Stack, proto: str, alg: str = "MD5") -> None:
    log = stack.edge_log()
    assert any("edge.registered" in x and "user=alice" in x and f"proto={proto}" in x
               and f"alg={alg}" in x for x in log), log
    assert any("edge.invite" in x and "user=alice" in x and "to=1001" in x
               and f"alg={alg}" in x for x in log), log
    assert not any("edge.ban" in x for x in log), log


def assert_hears(path: Path, hz: int, not_hz: int, who: str) -> None:
    level, other = heard(path, hz, not_hz)
    print(f"{who}: {hz} Hz at {level:.1f} dBFS, {not_hz} Hz at {other:.1f} dBFS")
    assert level > -30, f"{who} did not hear {hz} Hz: {level:.1f} dBFS ({path})"
    # the room does not send anyone their own voice back
    assert other < level - 20, f"{who}: {not_hz} Hz at {other:.1f} dBFS next to {level:.1f}"


def edge_uri(stack: Stack, transport: str) -> tuple[str, str]:
    """(host:port, URI parameters) of the edge for a transport."""
    port = stack.tls_port if transport == "tls" else stack.edge_port
    return f"127.0.0.1:{port}", "" if transport == "udp" else f";transport={transport}"


# --------------------------------------------------------------------------- baresip ---
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_baresip(stack: Stack, app: AppServer, tmp_path: Path, transport: str) -> None:
    hz = 600
    host, params = edge_uri(stack, transport)
    phone = await Baresip.start(
        tmp_path / "baresip", f"<sip:alice@{host}{params}>;auth_pass={ALICE_PW};regint=600"
        ";answermode=manual;audio_codecs=PCMU,PCMA", tone(tmp_path, hz))
    try:
        assert await phone.registered(), phone.log()[-3000:]
        bob, bob_rec = await bob_joins(stack, tmp_path)
        phone.command("dial", f"sip:1001@{host}{params}")
        await phone.wait_event("CALL_ESTABLISHED", "CALL_CLOSED")
        await wait_room(stack, 2)
        await asyncio.sleep(TOGETHER_S)
        phone.command("hangup")
        await phone.wait_event("CALL_CLOSED")
        await bob_leaves(bob)
    finally:
        await phone.close()
    assert_hears(bob_rec, hz, BOB_HZ, "bob (from baresip)")
    assert_hears(phone.recording(), BOB_HZ, hz, "baresip")
    assert_edge_saw(stack, transport)


# ----------------------------------------------------------------------------- pjsua ---
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_pjsua(stack: Stack, app: AppServer, tmp_path: Path, transport: str) -> None:
    hz = 500
    host, params = edge_uri(stack, transport)
    rec = tmp_path / "pjsua-heard.wav"
    phone = await Pjsua.start(tmp_path / "pjsua", user="alice", password=ALICE_PW, domain=host,
                              transport=transport, tone=tone(tmp_path, hz), record=rec)
    try:
        await phone.wait_line(lambda x: "registration success" in x)
        bob, bob_rec = await bob_joins(stack, tmp_path)
        seen = len(phone.out)
        phone.dial(f"sip:1001@{host}{params}")
        await phone.wait_line(lambda x: "state changed to CONFIRMED" in x, start=seen)
        await wait_room(stack, 2)
        await asyncio.sleep(TOGETHER_S)
        phone.send("h")
        await phone.wait_line(lambda x: "DISCONNECTED" in x, start=seen)
        await bob_leaves(bob)
    finally:
        await phone.close()
    assert_hears(bob_rec, hz, BOB_HZ, "bob (from pjsua)")
    assert_hears(rec, BOB_HZ, hz, "pjsua")
    assert_edge_saw(stack, transport)


# ------------------------------------------------------------------------- linphonec ---
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_linphonec(stack: Stack, app: AppServer, tmp_path: Path, transport: str) -> None:
    hz = 900
    host, params = edge_uri(stack, transport)
    rec = tmp_path / "linphone-heard.wav"
    phone = await Linphonec.start(tmp_path / "linphone", transport)
    source = tone(tmp_path, hz)
    try:
        phone.send("soundcard use files")
        phone.send(f"play {source}")
        phone.send(f"record {rec}")
        phone.send(f"register sip:alice@{host} sip:{host}{params} {ALICE_PW}")
        await phone.ask("status register", "registered, identity=sip:alice@")
        bob, bob_rec = await bob_joins(stack, tmp_path)
        phone.send(f"call sip:1001@{host}{params}")
        await wait_room(stack, 2)
        # Again, now that the call's stream runs (linphonec then plays it into the call at
        # once): a CI run once had linphonec send 4 s of silence, its RTP arriving in time
        # with nothing in it, so bob heard nothing although linphonec heard bob.
        phone.send(f"play {source}")
        await asyncio.sleep(TOGETHER_S)
        phone.send("terminate")
        await app.wait_for(lambda: [w for w in app.webhooks() if w["event"] == "call.completed"
                                    and w["call"]["from"] == "alice"], timeout=15)
        await bob_leaves(bob)
    finally:
        await phone.close()
    assert_hears(bob_rec, hz, BOB_HZ, "bob (from linphonec)")
    assert_hears(rec, BOB_HZ, hz, "linphonec")
    assert_edge_saw(stack, transport)


# ------------------------------------------------------------------------------ sipp ---
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_sipp(stack: Stack, app: AppServer, tmp_path: Path, transport: str) -> None:
    """SIPp as a digest user (not a trusted trunk): REGISTER and INVITE both answered with
    MD5 digest. It streams a 1 kHz A-law tone; it cannot record, so only bob listens."""
    hz = 1000
    audio = sipp.alaw_tone(tmp_path / "sipp-tone.wav", hz, seconds=2.0, volume=0.3)
    scenario = sipp_digest_scenario(tmp_path, audio, "alice")
    bob, bob_rec = await bob_joins(stack, tmp_path)
    try:
        result = await sipp.run(
            tmp_path, f"127.0.0.1:{stack.edge_port}", scenario, service="1001", calls=1,
            rate=1, hold_ms=int(TOGETHER_S * 1000), media_port=rtp_block(), timeout_s=60,
            transport={"udp": "u1", "tcp": "t1"}[transport],
            extra=("-au", "alice", "-ap", ALICE_PW))
        assert result.successful == 1 and result.failed == 0, result.errors
    finally:
        await bob_leaves(bob)
    assert_hears(bob_rec, hz, BOB_HZ, "bob (from SIPp)")
    assert_edge_saw(stack, transport)


# ------------------------------------------------------- when SHA-256 is offered too ---
async def test_sha256_and_md5_offered(tmp_path: Path, app: AppServer) -> None:
    """`digest_algorithms: [SHA-256, MD5]`: pjsua and linphonec answer the SHA-256 challenge;
    baresip 1.0.0 gives up on the whole 401 and SIPp 3.6 on the first challenge (what the
    default avoids), and neither gets its address banned."""
    s = await start_stack(tmp_path, [app_config(app)], ban_after_failures=2, ban_s=60,
                          digest_algorithms=["SHA-256", "MD5"])
    UserStore(s.users_db, "minivoice").add("alice", ALICE_PW)
    host = f"127.0.0.1:{s.edge_port}"
    clients: list[Any] = []
    try:
        pj = await Pjsua.start(tmp_path / "pjsua", user="alice", password=ALICE_PW, domain=host,
                               transport="udp", tone=tone(tmp_path, 500),
                               record=tmp_path / "pj.wav")
        clients.append(pj)
        await pj.wait_line(lambda x: "registration success" in x)
        lp = await Linphonec.start(tmp_path / "linphone")
        clients.append(lp)
        lp.send(f"register sip:alice@{host} sip:{host} {ALICE_PW}")
        await lp.ask("status register", "registered, identity=sip:alice@")
        bs = await Baresip.start(tmp_path / "baresip", f"<sip:alice@{host}>;auth_pass={ALICE_PW}"
                                 ";regint=600", None)
        clients.append(bs)
        assert not await bs.registered()
        assert "Function not implemented" in bs.log(), bs.log()[-2000:]
        audio = sipp.alaw_tone(tmp_path / "sipp-tone.wav", 1000, seconds=1.0)
        result = await sipp.run(
            tmp_path, host, sipp_digest_scenario(tmp_path, audio, "alice"), service="1001",
            calls=1, rate=1, hold_ms=100, media_port=rtp_block(), timeout_s=30,
            extra=("-au", "alice", "-ap", ALICE_PW))
        assert result.successful == 0
        assert "authentication must use MD5" in result.errors, result.errors
        registered = [x for x in s.edge_log() if "edge.registered" in x and "user=alice" in x]
        assert len(registered) == 2 and all("alg=SHA-256" in x for x in registered), registered
        assert not any("edge.ban" in x for x in s.edge_log())
    finally:
        for c in clients:
            await c.close()
        assert s.gw.stop() == 0


def test_heard_finds_the_overlap(tmp_path: Path) -> None:
    """The measuring helper itself: a tone present for 1.5 s of 6 s is found; silence is not."""
    rate = 8000
    x = np.concatenate([np.zeros(3 * rate), sine(700, 1.5), np.zeros(int(1.5 * rate))])
    write_wav(tmp_path / "a.wav", x)
    level, other = heard(tmp_path / "a.wav", 700, 500)
    assert level > -14 and other < -60
    write_wav(tmp_path / "b.wav", np.zeros(6 * rate))
    assert heard(tmp_path / "b.wav", 700, 500)[0] < -100
