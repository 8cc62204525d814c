"""`start_on_enter: false` and `end_on_exit` in a room whose callers are on two nodes (real
processes, real redis-server, real SIP and RTP, audio measured with numpy): waiting callers
on different nodes do not hear each other until a moderator joins on either node; a
moderator with end_on_exit leaving on one node ends the room on the other too."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import pytest

from media.tones import sine, write_wav
from tests.audio import duration_s, levels
from tests.cluster import (  # noqa: F401 (cluster: a fixture)
    Cluster,
    cluster,
)
from tests.harness import GatewayProc, Phonebank
from tests.httpkit import Server
from tests.test_conference_events import StatusReceiver
from tests.waiting import eventually

pytestmark = pytest.mark.sip

HEARD_DB = -25.0
SILENT_DB = -38.0  # a looping player's click reads up to about -40 dBFS (see room features)
MUSIC_HZ = 523.0
TONES = {"x": 440.0, "y": 700.0, "m": 1100.0}
NUMBERS = {"x": "+15550001", "y": "+15550002", "m": "+15550009"}


def _serve_music(c: Cluster, tmp: Path) -> str:
    path = tmp / "music.wav"
    write_wav(path, sine(MUSIC_HZ, 2.0))
    c.app.media["music"] = (path.read_bytes(), {"Content-Type": "audio/wav"})
    return c.app.url + "/media/music"


def _answers(music: str, moderator: dict[str, Any], **extra: Any) -> Any:
    waiting = {"conference": {"room": "r1", "start_on_enter": False, "wait_url": music,
                              **extra}}
    by_number = {NUMBERS["x"]: [waiting], NUMBERS["y"]: [waiting],
                 NUMBERS["m"]: [{"conference": {"room": "r1", **moderator, **extra}}]}
    return lambda p: {"actions": by_number[p["call"]["from"]]}


class Calls:
    """Calls from one phonebank, each recorded, with each recording's clock."""

    def __init__(self, phones: Phonebank, tmp: Path) -> None:
        self.phones, self.tmp = phones, tmp
        self.recs: dict[str, Path] = {}
        self.started: dict[str, float] = {}

    async def call(self, cid: str, gw: GatewayProc) -> None:
        self.recs[cid] = self.tmp / f"{cid}.wav"
        self.phones.call(cid, gw.uri(), tone_hz=TONES[cid], record=str(self.recs[cid]),
                         **{"from": NUMBERS[cid]})
        self.started[cid] = (await self.phones.wait("media", cid))["at"]

    def now(self, cid: str) -> float:
        """Seconds into `cid`'s recording, now."""
        return asyncio.get_running_loop().time() - self.started[cid]


async def _listed(gw: GatewayProc, count: int) -> dict[str, Any] | None:
    status, body = await gw.get("/v1/conferences/r1")
    return body if status == 200 and len(body["participants"]) == count else None


async def _waiting(gw: GatewayProc) -> dict[str, bool]:
    """`from` -> whether the participant waits, as this node's API lists the room."""
    status, body = await gw.get("/v1/conferences/r1")
    assert status == 200, body
    return {p["from"]: p["waiting"] for p in body["participants"]}


@pytest.mark.parametrize("moderator_on", ["b", "a"])
async def test_waiting_callers_on_two_nodes_start_when_a_moderator_joins(
    cluster: Cluster, phones: Phonebank, tmp_path: Path, moderator_on: str  # noqa: F811
) -> None:
    """x on node a (the owner: its caller came first) and y on node b join with
    start_on_enter false: each hears the wait music and neither hears the other, though a
    cascade leg joins their parts. A moderator (start_on_enter true) joins on node b (not the
    owner) or node a (the owner): within a tick or so everyone hears everyone."""
    music = _serve_music(cluster, tmp_path)
    cluster.app.answer = _answers(music, {})
    nodes = {"a": await cluster.start_node("a"), "b": await cluster.start_node("b")}
    calls = Calls(phones, tmp_path)
    await calls.call("x", nodes["a"])
    await eventually(lambda: _listed(nodes["a"], 1), timeout=10, message="x not in r1")
    await calls.call("y", nodes["b"])
    for gw in nodes.values():  # the cascade leg is up: both nodes list both callers
        await eventually(functools.partial(_listed, gw, 2), timeout=10, message="room incomplete")
    await asyncio.sleep(3.0)
    for gw in nodes.values():
        assert set((await _waiting(gw)).values()) == {True}, await _waiting(gw)
    before = {c: (max(0.5, calls.now(c) - 2.7), calls.now(c) - 0.2) for c in ("x", "y")}

    await calls.call("m", nodes[moderator_on])
    joined = asyncio.get_running_loop().time()
    for gw in nodes.values():
        await eventually(functools.partial(_listed, gw, 3), timeout=10, message="m not listed")
    # The parts start within a tick (0.5 s here) of the moderator's node publishing it.
    for gw in nodes.values():
        await eventually(functools.partial(_none_waiting, gw), timeout=10,
                         message="still waiting after the moderator joined")
    print(f"nobody waits on either node {asyncio.get_running_loop().time() - joined:.2f} s "
          "after the moderator's call was answered (API polled)")
    await asyncio.sleep(3.0)
    await phones.hangup_all(calls.recs)

    after = {c: (duration_s(calls.recs[c]) - 2.3, duration_s(calls.recs[c]) - 0.3)
             for c in calls.recs}
    measured: dict[str, Any] = {}
    for cid, other in (("x", "y"), ("y", "x")):
        pre = levels(calls.recs[cid], MUSIC_HZ, TONES[other], start_s=before[cid][0],
                     end_s=before[cid][1])
        post = levels(calls.recs[cid], MUSIC_HZ, TONES[other], TONES["m"],
                      start_s=after[cid][0], end_s=after[cid][1])
        measured[cid] = {"before": pre, "after": post}
    measured["m"] = levels(calls.recs["m"], TONES["x"], TONES["y"], MUSIC_HZ,
                           start_s=after["m"][0], end_s=after["m"][1])
    print(f"moderator on {moderator_on}; levels (dBFS):", measured)
    for cid, other in (("x", "y"), ("y", "x")):
        pre, post = measured[cid]["before"], measured[cid]["after"]
        assert pre[MUSIC_HZ] > HEARD_DB, (cid, "no wait music while waiting", pre)
        assert pre[TONES[other]] < SILENT_DB, (cid, "hears the other node's caller", pre)
        assert post[TONES[other]] > HEARD_DB, (cid, "does not hear the other caller", post)
        assert post[TONES["m"]] > HEARD_DB, (cid, "does not hear the moderator", post)
        assert post[MUSIC_HZ] < SILENT_DB, (cid, "wait music after the start", post)
    m = measured["m"]
    assert m[TONES["x"]] > HEARD_DB and m[TONES["y"]] > HEARD_DB, m
    assert m[MUSIC_HZ] < SILENT_DB, m
    for gw in nodes.values():
        assert "conference.starters" in gw.log()


async def _none_waiting(gw: GatewayProc) -> bool:
    got = await _waiting(gw)
    return len(got) == 3 and not any(got.values())


async def _started(c: Cluster, phones: Phonebank, tmp: Path, moderator_on: str
                   ) -> tuple[GatewayProc, GatewayProc, Calls]:
    """Nodes a and b; x calls a (the owner: its caller came first), then y calls b and the
    moderator m calls node `moderator_on`. Returns once neither node lists anyone waiting."""
    nodes = {"a": await c.start_node("a"), "b": await c.start_node("b")}
    calls = Calls(phones, tmp)
    await calls.call("x", nodes["a"])
    await eventually(lambda: _listed(nodes["a"], 1), timeout=10, message="x not in r1")
    await calls.call("y", nodes["b"])
    await calls.call("m", nodes[moderator_on])
    for gw in nodes.values():
        await eventually(functools.partial(_none_waiting, gw), timeout=10,
                         message="the room did not start")
    return nodes["a"], nodes["b"], calls


@pytest.mark.parametrize("moderator_on", ["b", "a"])
async def test_end_on_exit_ends_the_room_on_every_node(
    cluster: Cluster, phones: Phonebank, tmp_path: Path, server: Server,  # noqa: F811
    moderator_on: str,
) -> None:
    """x on node a (the owner), y on node b, and a moderator with end_on_exit on node b (or
    a): the moderator hangs up, and the room ends on both nodes (x and y have no next
    action: their calls end). The room's status_url hears conference.started and
    conference.ended once."""
    status = StatusReceiver(server)
    music = _serve_music(cluster, tmp_path)
    cluster.app.answer = _answers(music, {"end_on_exit": True},
                                  status_url=server.url + "/status")
    a, b, _ = await _started(cluster, phones, tmp_path, moderator_on)
    phones.hangup("m")
    await phones.wait("ended", "m")
    # Each caller's room ended; with no next action the gateway hangs up.
    for cid in ("x", "y"):
        await phones.wait("ended", cid, timeout=15)
    await status.until("conference.ended")
    await asyncio.sleep(2.0)  # time for a duplicate to show up
    names = status.names()
    assert names.count("conference.started") == 1 and names.count("conference.ended") == 1, \
        names
    other = b if moderator_on == "a" else a
    assert "conference.ended_elsewhere" in other.log()
    for gw in (a, b):
        await eventually(functools.partial(_gone, gw), timeout=10, message="room still listed")
    done = await cluster.app.completed(count=3)
    assert len({w["call"]["id"] for w in done}) == 3


async def _gone(gw: GatewayProc) -> bool:
    status, _ = await gw.get("/v1/conferences/r1")
    return status == 404


async def test_redis_unreachable_keeps_a_started_room_running(
    cluster: Cluster, phones: Phonebank, tmp_path: Path  # noqa: F811
) -> None:
    """Waiting x on node a (the owner) and y on node b, the moderator on b: the room runs.
    Redis stops (unreachable): every node keeps the last state it read, so nobody is dropped
    and x, y and the moderator keep hearing each other; Redis comes back empty (no
    persistence) and the room still runs."""
    music = _serve_music(cluster, tmp_path)
    cluster.app.answer = _answers(music, {})
    a, b, calls = await _started(cluster, phones, tmp_path, "b")
    cluster.redis.stop()
    await eventually(lambda: "cluster.redis_down" in a.log() and "cluster.redis_down" in b.log(),
                     timeout=10, message="the nodes did not notice")
    await asyncio.sleep(2.5)
    down = {c: (calls.now(c) - 2.2, calls.now(c) - 0.2) for c in calls.recs}
    cluster.redis.start()
    await eventually(lambda: "cluster.redis_back" in a.log() and "cluster.redis_back" in b.log(),
                     timeout=10, message="the nodes did not notice Redis back")
    await asyncio.sleep(3.0)  # past the hold-off: the state is Redis's again
    await phones.hangup_all(calls.recs)
    back = {c: (duration_s(calls.recs[c]) - 2.3, duration_s(calls.recs[c]) - 0.3)
            for c in calls.recs}
    for window in (down, back):
        got = {cid: levels(calls.recs[cid], MUSIC_HZ, *TONES.values(), start_s=window[cid][0],
                           end_s=window[cid][1]) for cid in calls.recs}
        print("levels (dBFS):", got)
        for cid, heard in got.items():
            for other, hz in TONES.items():
                if other != cid:
                    assert heard[hz] > HEARD_DB, (cid, other, "not heard", got)
            if cid != "m":
                assert heard[MUSIC_HZ] < SILENT_DB, (cid, "waits again", got)
