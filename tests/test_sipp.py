"""Callers the project did not write: SIPp, 20 at once in one room, with RTP flowing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import sipp
from tests.audio import levels
from tests.harness import AppServer, GatewayProc, Phonebank, rtp_block

pytestmark = pytest.mark.sip


async def test_twenty_sipp_callers_in_one_room(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    app.answer = lambda p: {"actions": [{"conference": {"room": "big-room"}}]}
    tone = sipp.alaw_tone(tmp_path / "tone.wav", 1000, volume=0.02)
    scenario = sipp.scenario(tmp_path, tone)
    # a pjsua2 listener in the same room records what the room sounds like
    rec = tmp_path / "listener.wav"
    phones.call("listener", gateway.uri("1001"), tone_hz=0, record=str(rec))
    await phones.wait("media", "listener")
    load = asyncio.create_task(sipp.run(
        tmp_path, f"127.0.0.1:{gateway.sip_port}", scenario, service="1001", calls=20,
        rate=20, hold_ms=6000, media_port=rtp_block()))

    async def members() -> int:
        _, body = await gateway.get("/v1/conferences")
        return sum(len(c["participants"]) for c in body["conferences"])

    peak = 0
    for _ in range(50):
        peak = max(peak, await members())
        if peak == 21:
            break
        await asyncio.sleep(0.1)
    assert peak == 21, f"only {peak} participants in the room"
    await asyncio.sleep(2.0)
    assert await members() == 21, "callers dropped while holding"
    result = await load
    assert result.successful == 20 and result.failed == 0, result.errors
    phones.hangup("listener")
    await phones.wait("ended", "listener")
    heard = levels(rec, 1000, start_s=2.0, end_s=5.0)
    assert heard[1000] > -35, heard
    done = await app.completed(count=21, timeout=15)
    assert sum(1 for w in done if w["data"]["hangup_by"] == "caller") == 21
    assert all(w["call"]["status"] == "completed" for w in done)
