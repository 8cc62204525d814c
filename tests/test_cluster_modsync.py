"""start_on_enter / end_on_exit across nodes cost Redis work only for rooms that are shared:
a room whose callers are all on one node runs no moderation script, per tick or per call
(checked with Redis's MONITOR against two real nodes), and still behaves as one room when a
caller then lands on the other node (real SIP and RTP, audio measured with numpy)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from gateway.cluster import moderation_store
from gateway.cluster.moderation import part_shared
from gateway.cluster.moderation_store import Moderation
from gateway.cluster.redis_store import ClusterStore
from gateway.conferences import Conferences
from media.rooms import RoomKey
from media.tones import sine, write_wav
from tests.audio import duration_s, levels
from tests.cluster import (  # noqa: F401 (cluster: a fixture)
    TIMING,
    Cluster,
    cluster,
)
from tests.harness import GatewayProc, Phonebank
from tests.waiting import eventually

pytestmark = pytest.mark.sip

HEARD_DB = -25.0
SILENT_DB = -38.0  # a looping player's click reads up to about -40 dBFS
MUSIC_HZ = 523.0
TONES = {"x": 440.0, "y": 700.0}
NUMBERS = {"x": "+15550101", "y": "+15550102"}
SYNC_SHA = hashlib.sha1(moderation_store._SYNC.encode()).hexdigest()
ROOM_KEY = "cust_test/r1"  # tests.harness's application's customer, room r1


def test_a_part_is_shared_while_it_has_legs_or_is_not_the_owner() -> None:
    assert not part_shared(owned_here=True, cascade_legs=0)  # one node: nothing to share
    assert part_shared(owned_here=True, cascade_legs=1)  # another node's leg in our room
    assert part_shared(owned_here=False, cascade_legs=1)  # our leg to the owner
    assert part_shared(owned_here=False, cascade_legs=0)  # bridging, or failing to


class Monitor:
    """Every command Redis runs (MONITOR), from the moment `start` returns."""

    def __init__(self, url: str) -> None:
        self.client = aioredis.from_url(url)
        self.commands: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        async with self.client.monitor() as m:
            self._ready.set()
            while True:
                self.commands.append((await m.next_command())["command"])

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        # A command of ours shows up once MONITOR is really on (it was sent before).
        await self.client.set("modsync:marker", "1")
        await eventually(lambda: any("modsync:marker" in c for c in self.commands),
                         timeout=10, message="MONITOR shows nothing")

    def moderation(self, since: int = 0) -> list[str]:
        """The moderation commands (the sync script, or anything on its keys) since
        command number `since`."""
        return [c for c in self.commands[since:]
                if SYNC_SHA in c or "mv:starters:" in c or "mv:ended:" in c]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self.client.aclose()


@pytest.fixture
async def monitor(cluster: Cluster) -> AsyncIterator[Monitor]:  # noqa: F811
    m = Monitor(cluster.redis.url)
    await m.start()
    try:
        yield m
    finally:
        await m.close()


def _answers(music: str, moderator: dict[str, Any]) -> Any:
    """x: a moderator (start_on_enter, the default); y: waits for one, with music."""
    by_number = {
        NUMBERS["x"]: [{"conference": {"room": "r1", **moderator}}],
        NUMBERS["y"]: [{"conference": {"room": "r1", "start_on_enter": False,
                                       "wait_url": music}}]}
    return lambda p: {"actions": by_number[p["call"]["from"]]}


def _serve_music(c: Cluster, tmp: Path) -> str:
    path = tmp / "music.wav"
    write_wav(path, sine(MUSIC_HZ, 2.0))
    c.app.media["music"] = (path.read_bytes(), {"Content-Type": "audio/wav"})
    return c.app.url + "/media/music"


async def _room(gw: GatewayProc) -> dict[str, bool] | None:
    """`from` -> waiting, as this node's API lists r1 (None: not listed)."""
    status, body = await gw.get("/v1/conferences/r1")
    return {p["from"]: p["waiting"] for p in body["participants"]} if status == 200 else None


async def _call(phones: Phonebank, cid: str, gw: GatewayProc, tmp: Path) -> Path:
    rec = tmp / f"{cid}.wav"
    phones.call(cid, gw.uri(), tone_hz=TONES[cid], record=str(rec), **{"from": NUMBERS[cid]})
    await phones.wait("media", cid)
    return rec


async def _nobody_waits(gw: GatewayProc, count: int) -> bool:
    got = await _room(gw)
    return got is not None and len(got) == count and not any(got.values())


async def test_a_room_on_one_node_runs_no_moderation_script_until_it_spans_two(
    cluster: Cluster, monitor: Monitor, phones: Phonebank, tmp_path: Path  # noqa: F811
) -> None:
    """x (a moderator) alone on node a for several ticks: no moderation script and no
    command on its keys, not even for x's join. y (waiting for a moderator) then lands on
    node b: b learns that a has a starter, so y's part starts and y hears x (measured). y
    leaves: a's part is alone again; after the linger its entry is withdrawn and the scripts
    stop."""
    tick = TIMING["tick_s"]
    music = _serve_music(cluster, tmp_path)
    cluster.app.answer = _answers(music, {})
    a = await cluster.start_node("a")
    b = await cluster.start_node("b")
    start = len(monitor.commands)
    await _call(phones, "x", a, tmp_path)
    await eventually(lambda: _nobody_waits(a, 1), timeout=10, message="x not in r1")
    await asyncio.sleep(6 * tick)
    alone = monitor.commands[start:]
    renewals = [c for c in alone if c.startswith("EVALSHA") and "mv:room:" in c]
    print(f"x alone on a for 6 ticks: {len(alone)} commands, {len(renewals)} renewals, "
          f"moderation: {monitor.moderation(start)}")
    assert len(renewals) >= 3, alone  # the ticks ran (and MONITOR saw them)
    assert monitor.moderation(start) == []

    shared_from = len(monitor.commands)
    y_rec = await _call(phones, "y", b, tmp_path)
    joined = asyncio.get_running_loop().time()
    for gw in (a, b):  # y's part starts: a's moderator counts on b through the leg
        await eventually(functools.partial(_nobody_waits, gw, 2), timeout=10,
                         message="y still waits though x (a moderator) is on node a")
    print(f"y not waiting {asyncio.get_running_loop().time() - joined:.2f} s after its media")
    await asyncio.sleep(3.0)
    synced = monitor.moderation(shared_from)
    by_node = {n: sum(1 for c in synced if c.startswith(f"EVALSHA {SYNC_SHA}")
                      and f" {n} " in f" {c} ") for n in ("a", "b")}
    print("moderation syncs while shared:", by_node)
    assert by_node["a"] >= 3 and by_node["b"] >= 3, synced  # every tick, on both nodes
    phones.hangup("y")
    await phones.wait("ended", "y")
    end = duration_s(y_rec)
    heard = levels(y_rec, TONES["x"], MUSIC_HZ, start_s=end - 2.6, end_s=end - 0.4)
    print("y heard (dBFS):", heard)
    assert heard[TONES["x"]] > HEARD_DB, heard
    assert heard[MUSIC_HZ] < SILENT_DB, heard

    # a alone again: after the linger (3 ticks) nothing more, and a's entry is gone.
    await eventually(lambda: _nobody_waits(a, 1), timeout=10, message="y still listed on a")
    await asyncio.sleep((moderation_linger_ticks() + 2) * tick)
    quiet_from = len(monitor.commands)
    await asyncio.sleep(6 * tick)
    assert monitor.moderation(quiet_from) == []
    async with aioredis.from_url(cluster.redis.url) as r:
        assert not await r.hexists(f"mv:starters:{ROOM_KEY}", "a")
    phones.hangup("x")
    await phones.wait("ended", "x")


def moderation_linger_ticks() -> int:
    from gateway.cluster.node import MODERATION_LINGER_TICKS
    return MODERATION_LINGER_TICKS


async def test_end_on_exit_reaches_a_node_that_joined_a_room_alone_until_then(
    cluster: Cluster, monitor: Monitor, phones: Phonebank, tmp_path: Path  # noqa: F811
) -> None:
    """x, a moderator with end_on_exit, alone on node a for several ticks (no moderation
    script); y lands on node b and its part starts; x hangs up: the room ends on b too (y's
    call ends: no next action), marked and read through Redis."""
    music = _serve_music(cluster, tmp_path)
    cluster.app.answer = _answers(music, {"end_on_exit": True})
    a = await cluster.start_node("a")
    b = await cluster.start_node("b")
    start = len(monitor.commands)
    await _call(phones, "x", a, tmp_path)
    await eventually(lambda: _nobody_waits(a, 1), timeout=10, message="x not in r1")
    await asyncio.sleep(4 * TIMING["tick_s"])
    assert monitor.moderation(start) == []
    await _call(phones, "y", b, tmp_path)
    for gw in (a, b):
        await eventually(functools.partial(_nobody_waits, gw, 2), timeout=10,
                         message="y still waits though x (a moderator) is on node a")
    phones.hangup("x")
    await phones.wait("ended", "x")
    await phones.wait("ended", "y", timeout=15)
    assert "conference.ended_elsewhere" in b.log()
    assert any("mv:ended:" in c for c in monitor.moderation(start))


# -- the sync script's writes (a real redis-server, crafted entries) ----------------------
KEY = RoomKey("cust_1", "room-1")
STARTERS = "mv:starters:cust_1/room-1"


def _part(name: str, store: ClusterStore, ttl_s: float, starter: bool) -> Moderation:
    conf = Conferences(lambda change: None)
    conf.book.join(KEY, f"caller-{name}", muted=False, end_on_exit=False, now=time.time(),
                   start_on_enter=starter)
    errors: list[Exception] = []
    return Moderation(name, store.redis, store.p, conf, ttl_s, 0.1, errors.append)


async def test_a_steady_sync_writes_nothing_until_half_the_entry_life_is_gone(
        store: ClusterStore) -> None:
    r = store.redis
    mod = _part("n", store, 1.0, starter=True)
    await mod.sync(KEY, {})
    # redis-py types a reply `bytes | str | None` for any client; this one (no
    # decode_responses) gives bytes, and the entry is there
    first = int(cast(bytes, await r.hget(STARTERS, "n")))
    ops = await _ops(r)
    await mod.sync(KEY, {})  # read-only: the script, TIME, GET, HGETALL
    assert await _ops(r) - ops == 4
    assert int(cast(bytes, await r.hget(STARTERS, "n"))) == first
    assert mod.starters(KEY) == {"n"}
    await asyncio.sleep(0.6)  # past half the entry's life (1 s): rewritten
    await mod.sync(KEY, {})
    assert int(cast(bytes, await r.hget(STARTERS, "n"))) >= first + 500
    assert 0 < await r.pttl(STARTERS) <= 3_600_000
    # our own entry garbled: rewritten; no starter any more: deleted
    await r.hset(STARTERS, "n", "junk")
    await mod.sync(KEY, {})
    assert cast(bytes, await r.hget(STARTERS, "n")).isdigit()
    mod.conferences.book.leave("caller-n")
    await mod.sync(KEY, {})
    assert not await r.hexists(STARTERS, "n")
    # a node without a starter and no entry writes nothing either
    ops = await _ops(r)
    await _part("m", store, 1.0, starter=False).sync(KEY, {})
    assert await _ops(r) - ops == 4
    # an entry life of 3 ticks or less (the config refuses it): rewritten at every sync
    every = Moderation("e", r, store.p, _part("e", store, 1.0, starter=True).conferences, 1.0,
                       1.0, lambda exc: None)
    await every.sync(KEY, {})
    ops = await _ops(r)
    await asyncio.sleep(0.01)
    await every.sync(KEY, {})
    assert await _ops(r) - ops == 6  # + HSET, PEXPIRE


async def test_withdraw_removes_only_our_entry(store: ClusterStore) -> None:
    a, b = _part("a", store, 5.0, starter=True), _part("b", store, 5.0, starter=True)
    await a.sync(KEY, {})
    await b.sync(KEY, {})
    assert await a.withdraw(KEY)
    assert set(await store.redis.hkeys(STARTERS)) == {b"b"}
    assert a.starters(KEY) == frozenset()  # nothing known of the room any more


async def _ops(r: Any) -> int:
    stats = await r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
