"""End-to-end checks shared by tests: after whatever a test did to the gateway, a normal call
still works, audio included; callers on two cluster nodes hear each other through the
cascade leg."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from tests.audio import levels
from tests.cluster import room_nodes, tail_levels
from tests.harness import AppServer, GatewayProc, Phonebank
from tests.waiting import eventually

HEARD_DB = -25.0
# Caller x's and caller y's tones (Hz) in callers_on_two_nodes, unless a test picks others.
TWO_TONES: Mapping[str, float] = {"x": 440, "y": 700}


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


async def callers_on_two_nodes(
    phones: Phonebank, a: GatewayProc, b: GatewayProc, tmp: Path,
    tones: Mapping[str, float] = TWO_TONES, room: str = "r1",
    before_y: Callable[[], Awaitable[object]] | None = None,
) -> dict[str, Path]:
    """Caller x on node `a`, then caller y on node `b`, into the application's room `room`,
    each calling from +1555000<its tone of `tones`>, playing that tone and recording what it
    hears. y calls once x has media and `before_y` (if given, e.g. until a owns the room)
    has returned. Returns the recordings once both nodes' APIs list both callers, on two
    different nodes (y's node has bridged to x's through a cascade leg)."""
    recs = {cid: tmp / f"{cid}.wav" for cid in ("x", "y")}
    phones.call("x", a.uri(), record=str(recs["x"]), tone_hz=tones["x"],
                **{"from": f"+1555000{tones['x']:g}"})
    await phones.wait("media", "x")
    if before_y is not None:
        await before_y()
    phones.call("y", b.uri(), record=str(recs["y"]), tone_hz=tones["y"],
                **{"from": f"+1555000{tones['y']:g}"})
    await phones.wait("media", "y")
    for gw in (a, b):
        seen = await eventually(functools.partial(_listing_two, gw, room), timeout=10,
                                message=f"room {room} not complete on {gw.http}")
        assert len(set(seen.values())) == 2, seen
    return recs


async def _listing_two(gw: GatewayProc, room: str) -> dict[str, str] | None:
    seen = await room_nodes(gw, room)
    return seen if len(seen) == 2 else None


async def hang_up_and_hear_each_other(
    phones: Phonebank, recs: Mapping[str, Path], tones: Mapping[str, float],
    heard_db: float = HEARD_DB,
) -> dict[str, dict[float, float]]:
    """Hang up the callers of `recs` (who have been in one room for a while) and check that,
    over the last seconds of its recording, each heard every other one's tone above
    `heard_db`. `tones`: each caller's tone by its ID (it may name more, to measure them
    too). Returns the levels (dBFS) each heard, by caller and tone."""
    await phones.hangup_all(recs)
    heard = {cid: tail_levels(path, *tones.values()) for cid, path in recs.items()}
    print("levels heard (dBFS):", heard)
    for listener in recs:
        for talker in recs:
            if talker != listener:
                assert heard[listener][tones[talker]] > heard_db, (listener, talker, heard)
    return heard
