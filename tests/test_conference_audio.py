"""Conference rooms on real SIP and real RTP: who hears whom, measured with numpy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.audio import levels, read_final
from tests.harness import AppServer, GatewayProc, Phonebank, app_config

pytestmark = pytest.mark.sip

HEARD_DB = -25.0  # a -12 dBFS tone arrives at about -12 dBFS; anything above this is "heard"
SILENT_DB = -45.0


async def talk(phones: Phonebank, gw: GatewayProc, callers: dict[str, dict[str, Any]],
               tmp: Path, hold_s: float = 3.0) -> dict[str, Path]:
    """Place the calls, hold them for `hold_s` with everyone in, hang up; return recordings."""
    recs = {}
    for cid, opts in callers.items():
        recs[cid] = tmp / f"{cid}.wav"
        opts = {"from": f"+1555000{len(recs):04d}", **opts}
        phones.call(cid, gw.uri(opts.pop("dial", "1001")), record=str(recs[cid]), **opts)
    for cid in callers:
        await phones.wait("media", cid)
    await asyncio.sleep(hold_s)
    await phones.hangup_all(callers)
    return recs


def by_caller(actions: dict[str, list[dict[str, Any]]]) -> Any:
    """An answer_url handler returning actions chosen by the caller's number."""
    return lambda payload: {"actions": actions[payload["call"]["from"]]}


async def test_two_callers_hear_each_other_not_themselves(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    recs = await talk(phones, gateway, {"a": {"tone_hz": 440}, "b": {"tone_hz": 700}}, tmp_path)
    a = levels(recs["a"], 440, 700)
    b = levels(recs["b"], 440, 700)
    assert a[700] > HEARD_DB and b[440] > HEARD_DB, (a, b)
    assert a[700] - a[440] >= 30, f"a hears itself: {a}"
    assert b[440] - b[700] >= 30, f"b hears itself: {b}"
    # both calls completed normally, by the caller
    done = await app.completed(count=2)
    assert {w["data"]["hangup_by"] for w in done} == {"caller"}


async def test_two_rooms_do_not_cross_talk(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    app.answer = lambda p: {"actions": [{"conference": {"room": "room-" + p["call"]["to"]}}]}
    callers = {
        "a": {"tone_hz": 440, "dial": "1001"},
        "b": {"tone_hz": 700, "dial": "1001", "transport": "tcp"},
        "c": {"tone_hz": 1100, "dial": "1002"},
        "d": {"tone_hz": 1500, "dial": "1002", "transport": "tcp"},
    }
    recs = await talk(phones, gateway, callers, tmp_path)
    freqs = (440, 700, 1100, 1500)
    heard = {cid: levels(path, *freqs) for cid, path in recs.items()}
    assert heard["a"][700] > HEARD_DB and heard["b"][440] > HEARD_DB, heard
    assert heard["c"][1500] > HEARD_DB and heard["d"][1100] > HEARD_DB, heard
    for cid in ("a", "b"):
        assert max(heard[cid][1100], heard[cid][1500]) < SILENT_DB, heard
    for cid in ("c", "d"):
        assert max(heard[cid][440], heard[cid][700]) < SILENT_DB, heard


async def test_muted_caller_is_not_heard_but_hears(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    app.answer = by_caller({
        "+15550000001": [{"conference": {"room": "r", "mute": True}}],
        "+15550000002": [{"type": "conference", "room": "r"}],
        "+15550000003": [{"conference": {"room": "r", "mute": False}}],
    })
    recs = await talk(phones, gateway, {
        "muted": {"tone_hz": 440}, "b": {"tone_hz": 700}, "c": {"tone_hz": 1100}}, tmp_path)
    muted, b, c = (levels(recs[k], 440, 700, 1100) for k in ("muted", "b", "c"))
    assert b[440] < SILENT_DB and c[440] < SILENT_DB, (b, c)
    assert b[1100] > HEARD_DB and c[700] > HEARD_DB, (b, c)
    assert muted[700] > HEARD_DB and muted[1100] > HEARD_DB, muted


async def test_end_on_exit_moves_others_to_their_next_action(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    app.answer = by_caller({
        "+15550000001": [{"conference": {"room": "main", "end_on_exit": True}}],
        # b continues in another room; c has nothing after the conference
        "+15550000002": [{"conference": {"room": "main"}}, {"conference": {"room": "side"}}],
        "+15550000003": [{"conference": {"room": "main"}}],
        "+15550000004": [{"conference": {"room": "side"}}],
    })
    recs = {k: tmp_path / f"{k}.wav" for k in "abcd"}
    for i, (cid, hz) in enumerate((("a", 440), ("b", 700), ("c", 1100), ("d", 1500)), 1):
        phones.call(cid, gateway.uri(), tone_hz=hz, record=str(recs[cid]),
                    **{"from": f"+1555000000{i}"})
        await phones.wait("media", cid)
    await asyncio.sleep(2.0)
    phones.hangup("a")  # the moderator leaves: the room ends
    await phones.wait("ended", "a")
    # c had no next action: the gateway hangs it up
    ended_c = await phones.wait("ended", "c")
    assert ended_c["code"] in (200, 603)
    await asyncio.sleep(2.5)  # b is now in "side" with d
    await phones.hangup_all("bd")
    b_main = levels(recs["b"], 440, 1100, 1500, start_s=0.8, end_s=1.8)
    b_side = levels(recs["b"], 440, 1100, 1500, skip_s=3.2)
    assert b_main[440] > HEARD_DB and b_main[1100] > HEARD_DB, b_main
    assert b_side[1500] > HEARD_DB, f"b does not hear d after moving rooms: {b_side}"
    assert max(b_side[440], b_side[1100]) < SILENT_DB, b_side
    done = {w["call"]["from"]: w for w in await app.completed(count=4)}
    c = done["+15550000003"]["data"]
    assert (c["hangup_by"], c["hangup_cause"]) == ("gateway", "actions_exhausted")
    assert done["+15550000001"]["data"]["hangup_by"] == "caller"
    assert done["+15550000002"]["data"]["hangup_by"] == "caller"


async def test_rooms_are_scoped_per_customer(
    app: AppServer, gateway_factory: Any, phones: Phonebank, tmp_path: Path
) -> None:
    gw = await gateway_factory([
        app_config(app, id="app_a", customer_id="cust_a", numbers=["2001"]),
        app_config(app, id="app_b", customer_id="cust_b", numbers=["2002"]),
    ])
    app.answer = lambda p: {"actions": [{"conference": {"room": "support"}}]}
    recs = await talk(phones, gw, {
        "a1": {"tone_hz": 440, "dial": "2001"}, "a2": {"tone_hz": 700, "dial": "2001"},
        "b1": {"tone_hz": 1100, "dial": "2002"}}, tmp_path)
    a1 = levels(recs["a1"], 700, 1100)
    b1 = levels(recs["b1"], 440, 700)
    assert a1[700] > HEARD_DB and a1[1100] < SILENT_DB, a1
    assert max(b1.values()) < SILENT_DB, b1
    customers = {w["call"]["from"]: w["call"]["customer_id"] for w in app.webhooks()}
    assert set(customers.values()) == {"cust_a", "cust_b"}


@pytest.mark.parametrize("codec_a,codec_b", [("PCMA", "G722"), ("opus", "PCMU")])
async def test_codecs_offered_carry_audio(
    gateway: GatewayProc, app: AppServer, tmp_path: Path, codec_a: str, codec_b: str
) -> None:
    bank_a = await Phonebank.start(tmp_path, "--codec", codec_a)
    bank_b = await Phonebank.start(tmp_path, "--codec", codec_b)
    try:
        ra, rb = tmp_path / "a.wav", tmp_path / "b.wav"
        bank_a.call("a", gateway.uri(), tone_hz=440, record=str(ra))
        bank_b.call("b", gateway.uri(), tone_hz=700, record=str(rb))
        ma = await bank_a.wait("media", "a")
        mb = await bank_b.wait("media", "b")
        assert ma["codec"].lower() == codec_a.lower() and mb["codec"].lower() == codec_b.lower()
        await asyncio.sleep(3.0)
        bank_a.hangup("a")
        bank_b.hangup("b")
        await bank_a.wait("ended", "a")
        await bank_b.wait("ended", "b")
        a, b = levels(ra, 440, 700), levels(rb, 440, 700)
        assert a[700] > HEARD_DB and a[700] - a[440] >= 30, a
        assert b[440] > HEARD_DB and b[440] - b[700] >= 30, b
    finally:
        await bank_a.close()
        await bank_b.close()


async def test_room_survives_hold_and_unhold(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    """A re-INVITE may give the call a new bridge port: its room links must follow."""
    recs = {c: tmp_path / f"{c}.wav" for c in "ab"}
    for cid, hz in (("a", 440), ("b", 700)):
        phones.call(cid, gateway.uri(), tone_hz=hz, record=str(recs[cid]))
        await phones.wait("media", cid)
    await asyncio.sleep(1.0)
    phones.send(op="hold", id="a")
    await asyncio.sleep(1.0)
    phones.send(op="unhold", id="a")
    await asyncio.sleep(2.5)
    await phones.hangup_all("ab")
    def last_seconds(path: Path) -> dict[float, float]:
        # each file's own end: a's recording pauses while a is on hold, so it is shorter
        x, rate = read_final(path)
        end = len(x) / rate
        return levels(path, 440, 700, start_s=end - 1.8, end_s=end - 0.3)

    b_after, a_after = last_seconds(recs["b"]), last_seconds(recs["a"])
    assert b_after[440] > HEARD_DB, f"b no longer hears a after unhold: {b_after}"
    assert a_after[700] > HEARD_DB, f"a no longer hears b after unhold: {a_after}"


async def test_large_room_mixes_the_speakers_for_everyone(
    app: AppServer, gateway_factory: Any, phones: Phonebank, tmp_path: Path
) -> None:
    """Past rooms.full_mesh_max, only detected speakers are mixed: the two talkers are still
    heard by every member, and the silent members cost no mixing."""
    gw = await gateway_factory([app_config(app)],
                               rooms={"full_mesh_max": 3, "max_speakers": 2})
    talkers = {"a": 440, "b": 700}
    silent = ["c", "d", "e", "f"]
    recs = await talk(phones, gw, {**{k: {"tone_hz": hz} for k, hz in talkers.items()},
                                   **{k: {"tone_hz": 0} for k in silent}}, tmp_path,
                      hold_s=3.5)
    for cid in silent:
        heard = levels(recs[cid], 440, 700, skip_s=2.0)
        assert heard[440] > HEARD_DB and heard[700] > HEARD_DB, (cid, heard)
    a = levels(recs["a"], 440, 700, skip_s=2.0)
    assert a[700] > HEARD_DB and a[700] - a[440] >= 30, a
    log = gw.log()
    assert "conference.join" in log and "members=6" in log


async def test_api_reports_who_is_talking_in_a_large_room(
    app: AppServer, gateway_factory: Any, phones: Phonebank
) -> None:
    gw = await gateway_factory([app_config(app)], rooms={"full_mesh_max": 2})
    for cid, hz in (("a", 440), ("b", 0), ("c", 0)):
        phones.call(cid, gw.uri(), tone_hz=hz, **{"from": f"+1{cid}"})
        await phones.wait("media", cid)
    await asyncio.sleep(1.5)
    _, room = await gw.get("/v1/conferences/r1")
    talking = {p["from"]: p["talking"] for p in room["participants"]}
    assert talking == {"+1a": True, "+1b": False, "+1c": False}, room
    for cid in "abc":
        phones.hangup(cid)
