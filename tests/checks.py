"""End-to-end checks shared by robustness tests: after whatever a test did to the gateway,
a normal call still works, audio included."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.audio import levels
from tests.harness import AppServer, Phonebank


async def two_callers_hear_each_other(uri: str, app: AppServer, phones: Phonebank, tmp: Path,
                                      room: str = "after") -> None:
    app.answer = lambda p: {"actions": [{"conference": {"room": room}}]}
    recs = {cid: tmp / f"check-{room}-{cid}.wav" for cid in ("check-a", "check-b")}
    phones.call("check-a", uri, tone_hz=440, record=str(recs["check-a"]))
    phones.call("check-b", uri, tone_hz=700, record=str(recs["check-b"]))
    for cid in recs:
        await phones.wait("media", cid, timeout=15)
    await asyncio.sleep(2.5)
    await phones.hangup_all(recs)
    a = levels(recs["check-a"], 440, 700)
    b = levels(recs["check-b"], 440, 700)
    assert a[700] > -25 and b[440] > -25, (a, b)
