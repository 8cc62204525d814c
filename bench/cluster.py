"""`python -m bench --mode cluster`: what a room spread over two gateway nodes costs.

Everything runs on this machine, with real processes: a redis-server on a free loopback
port and two gateway nodes (`python -m gateway serve`, configs/bench.yaml plus a `cluster:`
section, node ids `a` and `b`, free ports, each its own half of the RTP port range). SIPp
callers send G.711 RTP as in the ramp and are sent straight to a node (no edge: the edge
would hash a room's number to one node, and the point here is rooms on both). Callers on
node a send a 1 kHz tone, callers on node b 500 Hz, so a listener can tell which side of a
cascade it hears. Each phase has a fresh cluster (redis and both nodes):

1. compare: blocks of rooms added in the order local, split, split, local (ABBA: a linear
   drift of the box over the phase cancels out). A local block puts every caller of a room on
   one node (half the rooms on a, half on b); a split block puts `remote` callers of every
   room on b and the rest on a, so every room has one cascade leg. Both kinds add the same
   SIPp legs (with `remote` half the room, the default, the same on each node). The CPU
   (utime+stime of both nodes' pids, from /proc) a block adds, over a steady window after
   it, is compared: (split - local) / remote participants is the extra CPU per remote
   participant (a caller not on the room's owner node).
2. ramp: split blocks added step by step up to `steps` (2 x 600 legs by default). A step is
   good when every call got its 200 OK, SIPp counts no failed call, every caller is listed
   in its room, with its node, by `GET /v1/conferences/{room}` (asked of a and b in turn),
   and a probe leg on the non-owner node of one of the step's rooms hears the owner node's
   callers' tone through the cascade. Set-up INVITE -> 200 OK (SIPp's rtd) p50/p99 per step,
   and Redis operations (`INFO commandstats`, every command and script call counted) per
   call set up, net of what the nodes' ticks do meanwhile.
3. delay: bench.audio.mixer_delay with both probe legs on node a, then with leg B on node b
   (the tone then crosses a cascade leg), `bursts` each, in `delay_rounds` rounds; a round's
   added delay is its cascade median - its one-node median; median and max over the rounds.

Every process started here (redis, nodes, SIPp) is stopped in a `finally`, including on
Ctrl-C, SIGTERM and SIGHUP (the run is cancelled; see run()), and by an atexit hook as a
last resort. After a SIGKILL of the bench, <run directory>/pids lists what to kill.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import random
import signal
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import gateway, procstat, sipp
from bench.audio import mixer_delay, percentile
from bench.gateway import Gateway, free_port
from bench.load import HOLD_MS
from bench.probe import Leg, ProbeUA, SipError, silence
from bench.procstat import Sample, Window
from bench.redisproc import RedisProc
from bench.roomfeatures import HEARD, tone_presence

log = logging.getLogger("bench.cluster")

NODES = ("a", "b")
TONES = {"a": 1000, "b": 500}  # Hz sent by each node's callers
SECRET = "bench-cluster-secret-not-for-production"
CUSTOMER = "cust_bench"  # configs/bench.yaml's application
FIRST_ROOM = 40_000
# The bench config's random RTP range (12000-19999) is split between the two nodes, so
# their random picks never collide.
RTP = {"a": (12000, 4000), "b": (16000, 4000)}

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Last resort for processes a crash left behind: killed when the interpreter exits. Their
# pids are also listed in <run directory>/pids, for the one case nothing here can handle:
# the bench itself killed with SIGKILL.
_LIVE: list[subprocess.Popen[bytes]] = []
_PIDS: list[Path] = []


def _track(proc: subprocess.Popen[bytes], what: str) -> None:
    _LIVE.append(proc)
    for path in _PIDS:
        with path.open("a") as f:
            f.write(f"{proc.pid} {what}\n")


def _kill_leftovers() -> None:
    for proc in _LIVE:
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


atexit.register(_kill_leftovers)


@dataclass
class ClusterPlan:
    room_size: int = 10
    remote: int = 5  # callers of a split room on node b (the rest on a)
    rooms_per_step: int = 20  # ramp: rooms added per step
    steps: int = 6  # ramp: 6 x 20 rooms of 10 = 1200 legs, 600 per node
    compare_rooms: int = 30  # compare: rooms per block (4 blocks: 1200 legs at the end)
    rate: float = 50.0  # calls per second cluster-wide (half into each node)
    window_s: float = 10.0
    settle_s: float = 3.0
    bursts: int = 10  # delay: bursts per measurement
    delay_rounds: int = 2  # delay: (one node, across nodes) pairs
    phases: tuple[str, ...] = ("compare", "ramp", "delay")
    cascade_jitter_ms: int | None = None  # the nodes' cluster.cascade_jitter_ms (None: theirs)

    def check(self) -> None:
        if not 1 <= self.remote < self.room_size:
            raise ValueError("--remote must be 1 .. room size - 1 (both nodes need callers)")
        if self.compare_rooms < 2 and "compare" in self.phases:
            raise ValueError("--compare-rooms must be at least 2 (local rooms on both nodes)")


class Redis:
    """The run's redis-server (bench.redisproc: a free loopback port, no persistence, in the
    run's directory) and a client of it, to count its operations."""

    def __init__(self, workdir: Path) -> None:
        self.server = RedisProc(workdir)
        self.proc = self.server.spawn()
        _track(self.proc, "redis-server")
        self.client: aioredis.Redis | None = None

    @property
    def url(self) -> str:
        return self.server.url

    async def ready(self) -> None:
        # In a thread, so a cancelled run is not held up here: close() stops the server,
        # and the wait ends when it sees the server gone.
        await asyncio.to_thread(self.server.wait_ready)
        self.client = aioredis.from_url(self.url, decode_responses=True)

    async def ops(self) -> int:
        """Commands Redis has run (scripts count once each), not counting our INFO calls."""
        assert self.client is not None
        stats = await self.client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    async def owner(self, room: str) -> str | None:
        assert self.client is not None
        owner = await self.client.hget(f"mv:room:{CUSTOMER}/{room}", "owner")
        return str(owner) if owner else None

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        procstat.terminate(self.proc)


@dataclass
class Cluster:
    redis: Redis
    nodes: dict[str, Gateway]
    uas: dict[str, ProbeUA]
    sipps: list[sipp.Instance] = field(default_factory=list)
    media_slots: set[int] = field(default_factory=set)
    probes: list[tuple[ProbeUA, Leg]] = field(default_factory=list)
    stopped: dict[str, Any] = field(default_factory=dict)

    def sample(self) -> dict[str, Sample]:
        return {n: Sample.take(gw.pid) for n, gw in self.nodes.items()}


async def _stop_node(gw: Gateway) -> dict[str, Any]:
    t0 = time.monotonic()
    code = await asyncio.to_thread(gw.stop, 60)
    problems = [line for line in gw.tail(200_000).splitlines()
                if " ERROR " in line or "Traceback" in line][:20]
    return {"exit_code": code, "stop_s": round(time.monotonic() - t0, 1),
            "error_lines": problems}


@contextlib.asynccontextmanager
async def cluster_up(workdir: Path, log_level: str, patch: dict[str, Any] | None = None,
                     cascade_jitter_ms: int | None = None) -> AsyncIterator[Cluster]:
    """Redis and two nodes (`patch`: bench.patched's experiment, on both); on the way out
    (also when cancelled) the nodes are stopped while SIPp and the probes are still up
    (their BYEs are answered), then SIPp, then Redis."""
    redis = Redis(workdir)
    c = Cluster(redis, {}, {})
    try:
        await redis.ready()
        for name in NODES:
            start, span = RTP[name]
            gw = await gateway.start(
                workdir / f"node-{name}", log_level=log_level,
                sip_overrides={"rtp_port_start": start, "rtp_port_range": span},
                sections={"cluster": {"node_id": name, "redis_url": redis.url, "secret": SECRET}
                          | ({} if cascade_jitter_ms is None
                             else {"cascade_jitter_ms": cascade_jitter_ms})},
                patch=patch)
            _track(gw.proc, f"node {name}")
            c.nodes[name] = gw
            ua = ProbeUA(("127.0.0.1", gw.sip_port))
            await ua.start()
            c.uas[name] = ua
        yield c
    finally:
        stops = await asyncio.gather(*(_stop_node(gw) for gw in c.nodes.values()),
                                     return_exceptions=True)
        c.stopped.update({n: s if isinstance(s, dict) else {"error": repr(s)}
                          for n, s in zip(c.nodes, stops, strict=True)})
        for inst in c.sipps:
            inst.stop()
        for ua in c.uas.values():
            await ua.close()
        await redis.close()


def media_slot(taken: set[int]) -> int:
    """A SIPp media slot (bench.sipp.media_port) whose 4 ports are free now: another bench
    run on this machine may hold the first slots, and SIPp then exits at once."""
    start = random.randrange(500)
    for k in range(500):
        slot = (start + k) % 500
        if slot not in taken and sipp.media_slot_free(slot):
            taken.add(slot)
            return slot
    raise RuntimeError("no free SIPp media ports in 10000-11999")


# -- adding rooms ------------------------------------------------------------------------
@dataclass
class Block:
    """One set of rooms added at once: one SIPp process per node."""

    label: str
    kind: str  # "split": every room on both nodes; "local": every room on one node
    rooms: list[str]  # dialed numbers (the demo app's room is support-room-<number>)
    expected: dict[str, dict[str, int]]  # number -> node -> callers
    calls: dict[str, int] = field(default_factory=dict)  # node -> calls placed there
    answered: int = 0
    failed: int = 0
    retransmissions: int = 0
    setup_s: float = 0.0
    setup_p50_ms: float = 0.0
    setup_p99_ms: float = 0.0
    setup_max_ms: float = 0.0
    redis_ops: int = 0  # during set-up: from the first INVITE to the last 200 OK
    listing_problems: list[str] = field(default_factory=list)
    # SIPp's failed calls by the response they got: status line and the gateway's Warning
    refusals: dict[str, int] = field(default_factory=dict)


def plan_block(label: str, kind: str, first: int, rooms: int, room_size: int,
               remote: int) -> Block:
    numbers = [str(first + i) for i in range(rooms)]
    expected: dict[str, dict[str, int]] = {}
    for i, n in enumerate(numbers):
        if kind == "split":
            expected[n] = {"a": room_size - remote, "b": remote}
        else:  # the first half of the rooms on a, the rest on b
            expected[n] = {"a": room_size, "b": 0} if i < (rooms + 1) // 2 \
                else {"a": 0, "b": room_size}
    return Block(label, kind, numbers, expected)


def dial_order(block: Block, node: str) -> list[str]:
    """Round-robin over the block's rooms, so its rooms fill together."""
    most = max(block.expected[n][node] for n in block.rooms)
    return [n for k in range(most) for n in block.rooms if block.expected[n][node] > k]


async def add_block(c: Cluster, workdir: Path, tones: dict[str, Path], block: Block,
                    rate: float) -> Block:
    """Start SIPp towards each node and wait for every 200 OK, then check every room's
    listing from the nodes' API."""
    started: list[sipp.Instance] = []
    ops0 = await c.redis.ops()
    t0 = time.monotonic()
    for node in NODES:
        numbers = dial_order(block, node)
        block.calls[node] = len(numbers)
        if not numbers:
            continue
        d = workdir / f"{block.label.replace(' ', '-')}-{node}"
        d.mkdir(parents=True, exist_ok=True)
        gw = c.nodes[node]
        inst = sipp.start(d, f"127.0.0.1:{gw.sip_port}", sipp.rooms_scenario(d, tones[node]),
                          sipp.dial_plan(d / "dial.csv", numbers), calls=len(numbers),
                          rate=rate, hold_ms=HOLD_MS, sip_port=free_port(),
                          media_port=sipp.media_port(media_slot(c.media_slots)),
                          control_port=free_port())
        _track(inst.proc, "sipp")
        c.sipps.append(inst)
        started.append(inst)
    deadline = t0 + max(block.calls.values()) / rate + 30
    while time.monotonic() < deadline:
        block.answered = sum(len(i.setup_ms()) for i in started)
        if any(i.counter("FailedCall(C)") or i.proc.poll() is not None for i in started):
            break
        if all(len(i.setup_ms()) >= i.calls for i in started):
            break
        await asyncio.sleep(0.25)
    block.setup_s = round(time.monotonic() - t0, 2)
    block.redis_ops = await c.redis.ops() - ops0
    block.answered = sum(len(i.setup_ms()) for i in started)
    block.failed = sum(i.counter("FailedCall(C)") for i in started)
    block.retransmissions = sum(i.counter("Retransmissions(C)") for i in started)
    for inst in started:
        for why, k in inst.refusals().items():
            block.refusals[why] = block.refusals.get(why, 0) + k
    setups = [s for i in started for s in i.setup_ms()]
    block.setup_p50_ms = percentile(setups, 50)
    block.setup_p99_ms = percentile(setups, 99)
    block.setup_max_ms = max(setups, default=0.0)
    block.listing_problems = await check_listing(c, block)
    return block


async def room_view(gw: Gateway, number: str) -> dict[str, int]:
    """node -> participants, as `gw`'s API shows the room (cluster-wide)."""
    code, body = await gw.call_api("GET", f"/v1/conferences/support-room-{number}")
    if code != 200 or not isinstance(body, dict):
        return {}
    out: dict[str, int] = {}
    for p in body.get("participants", []):
        out[str(p.get("node"))] = out.get(str(p.get("node")), 0) + 1
    return out


async def check_listing(c: Cluster, block: Block, timeout_s: float = 15.0) -> list[str]:
    """Every room of the block, asked of node a and b in turn: all its callers, each on the
    node it called (SIPp legs only: a probe leg is added to `extra`)."""
    pending = list(block.rooms)
    problems: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        problems = {}
        for i, number in enumerate(pending):
            asked = NODES[i % 2]
            seen = await room_view(c.nodes[asked], number)
            want = {n: k for n, k in block.expected[number].items() if k}
            if seen != want:
                problems[number] = f"room {number} from {asked}: {seen}, expected {want}"
        pending = list(problems)
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    return list(problems.values())[:10] + (
        [f"... {len(problems) - 10} more rooms"] if len(problems) > 10 else [])


# -- measuring ---------------------------------------------------------------------------
async def window(c: Cluster, label: str, seconds: float) -> dict[str, Any]:
    """Both nodes' CPU and RSS, and Redis operations, over `seconds` with the calls up."""
    ops0 = await c.redis.ops()
    s0 = c.sample()
    await asyncio.sleep(seconds)
    s1 = c.sample()
    ops1 = await c.redis.ops()
    wins = {n: Window(s0[n], s1[n]) for n in NODES}
    secs = wins["a"].seconds
    return {"label": label, "seconds": round(secs, 2),
            "cores": {n: round(w.cpu_share, 4) for n, w in wins.items()},
            "cores_total": round(sum(w.cpu_share for w in wins.values()), 4),
            "rss_mb": {n: round(s1[n].rss_kb / 1024, 1) for n in NODES},
            "threads": {n: w.by_thread() for n, w in wins.items()},
            "redis_ops_per_s": round((ops1 - ops0) / secs, 1) if secs else 0.0,
            "sipp_alive": all(i.proc.poll() is None for i in c.sipps),
            "nodes_alive": all(gw.alive() for gw in c.nodes.values())}


async def probe_room(c: Cluster, number: str, name: str) -> tuple[Leg | None, str, str]:
    """A listening probe on the non-owner node of the room: (leg, owner, problem)."""
    owner = await c.redis.owner(f"support-room-{number}") or ""
    if owner not in NODES:
        return None, owner, f"room {number}: no owner in Redis ({owner!r})"
    other = "b" if owner == "a" else "a"
    leg = Leg(name, number, silence)
    leg.rx.keep_payloads = True
    try:
        await c.uas[other].call(leg, timeout_s=10)
    except SipError as exc:
        return None, owner, f"probe call on {other} failed: {exc}"
    c.probes.append((c.uas[other], leg))
    return leg, owner, ""


def heard(leg: Leg, owner: str) -> float:
    """Share of 200 ms chunks in which the probe heard the owner node's callers' tone."""
    amps = tone_presence(leg.rx.payloads, TONES[owner])
    return round(sum(a >= HEARD for a in amps) / len(amps), 3) if amps else 0.0


# -- the phases --------------------------------------------------------------------------
async def compare(c: Cluster, workdir: Path, tones: dict[str, Path],
                  plan: ClusterPlan) -> dict[str, Any]:
    out: dict[str, Any] = {"blocks": [], "windows": [], "problems": []}
    await asyncio.sleep(plan.settle_s)
    windows = [await window(c, "idle", plan.window_s)]
    room = FIRST_ROOM
    for i, kind in enumerate(("local", "split", "split", "local")):
        b = plan_block(f"compare {i + 1} {kind}", kind, room, plan.compare_rooms,
                       plan.room_size, plan.remote)
        room += plan.compare_rooms
        await add_block(c, workdir, tones, b, plan.rate / 2)
        out["blocks"].append(asdict(b))
        out["problems"] += _block_problems(b)
        if out["problems"]:
            break
        await asyncio.sleep(plan.settle_s)
        windows.append(await window(c, b.label, plan.window_s))
    out["windows"] = windows
    if not out["problems"]:
        out["derived"] = derive_compare(windows, plan)
    return out


def derive_compare(windows: list[dict[str, Any]], plan: ClusterPlan) -> dict[str, Any]:
    """CPU each block added (its window - the window before it); local and split means."""
    added: dict[str, list[float]] = {"local": [], "split": []}
    for before, after in itertools.pairwise(windows):
        added[after["label"].rsplit(" ", 1)[1]].append(after["cores_total"]
                                                       - before["cores_total"])
    local = statistics.mean(added["local"])
    split = statistics.mean(added["split"])
    remote = plan.compare_rooms * plan.remote
    legs = plan.compare_rooms * plan.room_size
    extra = split - local
    return {"added_cores": {k: [round(x, 4) for x in v] for k, v in added.items()},
            "local_cores": round(local, 4), "split_cores": round(split, 4),
            "extra_cores": round(extra, 4), "remote_participants": remote,
            "cascade_legs": plan.compare_rooms, "legs_per_block": legs,
            "extra_ms_per_s_per_remote": round(1000 * extra / remote, 4),
            "extra_ms_per_s_per_cascade": round(1000 * extra / plan.compare_rooms, 4),
            "local_ms_per_s_per_leg": round(1000 * local / legs, 4)}


def _block_problems(b: Block) -> list[str]:
    calls = sum(b.calls.values())
    out = []
    if b.failed:
        why = "; ".join(f"{k} x{n}" for k, n in b.refusals.items())
        out.append(f"{b.label}: {b.failed} failed calls" + (f" ({why})" if why else ""))
    if b.answered < calls:
        out.append(f"{b.label}: only {b.answered}/{calls} calls answered")
    out += [f"{b.label}: {p}" for p in b.listing_problems]
    return out


async def ramp(c: Cluster, workdir: Path, tones: dict[str, Path],
               plan: ClusterPlan) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    await asyncio.sleep(plan.settle_s)
    idle = await window(c, "idle", plan.window_s)
    legs = 0
    per_node = dict.fromkeys(NODES, 0)
    for n in range(plan.steps):
        b = plan_block(f"step {n + 1}", "split", FIRST_ROOM + n * plan.rooms_per_step,
                       plan.rooms_per_step, plan.room_size, plan.remote)
        await add_block(c, workdir, tones, b, plan.rate / 2)
        legs += sum(b.calls.values())
        for node, k in b.calls.items():
            per_node[node] += k
        problems = _block_problems(b)
        leg, owner, why = await probe_room(c, b.rooms[0], f"listen-{n + 1}")
        if why:
            problems.append(why)
        await asyncio.sleep(plan.settle_s)
        if leg is not None:
            leg.rx.payloads.clear()
        w = await window(c, b.label, plan.window_s)
        probe_heard = heard(leg, owner) if leg is not None else 0.0
        if leg is not None:
            leg.rx.payloads.clear()  # the probe stays in its room; its audio is not kept
            leg.rx.keep_payloads = False
        if leg is not None and probe_heard < 0.9:
            problems.append(f"the probe on the non-owner node heard the owner's callers in "
                            f"{probe_heard:.0%} of the window")
        if not w["sipp_alive"]:
            problems.append("a SIPp exited")
        if not w["nodes_alive"]:
            problems.append("a node exited")
        calls = sum(b.calls.values())
        # Redis: what the set-up did beyond the nodes' ticks (the rate of the last window)
        tick_ops = (steps[-1]["window"] if steps else idle)["redis_ops_per_s"] * b.setup_s
        step = {"step": n + 1, "legs": legs, "legs_per_node": dict(per_node),
                "rooms": (n + 1) * plan.rooms_per_step, "calls": calls,
                "answered": b.answered, "failed": b.failed,
                "retransmissions": b.retransmissions, "setup_s": b.setup_s,
                "setup_p50_ms": b.setup_p50_ms, "setup_p99_ms": b.setup_p99_ms,
                "setup_max_ms": b.setup_max_ms, "redis_ops_setup": b.redis_ops,
                "redis_ops_per_call": round(b.redis_ops / calls, 2) if calls else 0.0,
                "redis_ops_per_call_net": round((b.redis_ops - tick_ops) / calls, 2)
                if calls else 0.0,
                "probe_room": b.rooms[0], "owner": owner, "probe_heard_owner": probe_heard,
                "window": w, "ok": not problems, "why": "; ".join(problems)[:600]}
        steps.append(step)
        log.info("cluster step", extra={k: v for k, v in step.items() if k != "window"})
        if problems:
            break
    good = [s for s in steps if s["ok"]]
    return {"idle": idle, "steps": steps,
            "last_good_legs": good[-1]["legs"] if good else 0}


async def delay(c: Cluster, plan: ClusterPlan) -> dict[str, Any]:
    """Per round: both legs on node a, then leg B on node b, in fresh rooms; the round's
    added delay is the difference of the two medians (paired in time: the shared box's
    load moves the one-node delay by tens of ms between minutes)."""
    runs: dict[str, list[float]] = {"one_node": [], "cascade": []}
    each = []
    added = []
    a = ("127.0.0.1", c.nodes["a"].sip_port)
    b = ("127.0.0.1", c.nodes["b"].sip_port)
    for r in range(plan.delay_rounds):
        medians = {}
        for kind in ("one_node", "cascade"):
            number = f"{7100 + 2 * r + (kind == 'cascade')}"
            d = await mixer_delay(a, number, plan.bursts, sip_b=b if kind == "cascade" else None)
            runs[kind] += d.delays_ms
            medians[kind] = d.median_ms
            each.append({"round": r + 1, "kind": kind, "room": number, **asdict(d)})
        added.append(round(medians["cascade"] - medians["one_node"], 2))
    return {"runs": each, "added_per_round_ms": added,
            "added_median_ms": round(statistics.median(added), 2),
            "added_max_ms": max(added),
            "one_node_median_ms": round(statistics.median(runs["one_node"]), 2),
            "one_node_max_ms": max(runs["one_node"]),
            "cascade_median_ms": round(statistics.median(runs["cascade"]), 2),
            "cascade_max_ms": max(runs["cascade"]),
            "bursts": {k: len(v) for k, v in runs.items()}}


async def run(workdir: Path, plan: ClusterPlan, log_level: str,
              patch: dict[str, Any] | None = None) -> dict[str, Any]:
    """All phases, each on a fresh cluster. SIGINT, SIGTERM and SIGHUP cancel the run, so
    the `finally`s stop every process."""
    plan.check()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    # Ctrl-C, kill and a closed terminal all cancel the run (SIGINT too, explicitly: a
    # shell starts a background job with SIGINT ignored, and asyncio keeps it so).
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
    _PIDS[:] = [workdir / "pids"]
    tones = {n: sipp.alaw_tone(workdir / f"tone-{n}.wav", hz, 2.0, volume=0.25)
             for n, hz in TONES.items()}
    out: dict[str, Any] = {"plan": asdict(plan)}
    try:
        for phase in plan.phases:
            log.info("cluster phase", extra={"phase": phase})
            d = workdir / phase
            async with cluster_up(d, log_level, patch, plan.cascade_jitter_ms) as c:
                out["node_command"] = c.nodes["a"].command
                if phase == "compare":
                    out["compare"] = await compare(c, d, tones, plan)
                elif phase == "ramp":
                    out["ramp"] = await ramp(c, d, tones, plan)
                else:
                    out["delay"] = await delay(c, plan)
            out[f"{phase}_nodes"] = c.stopped
    finally:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return out


# -- reporting ---------------------------------------------------------------------------
def summary_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    c = r.get("cluster") or {}
    plan = c.get("plan", {})
    rows: list[dict[str, Any]] = []
    ramp_ = c.get("ramp")
    if ramp_:
        steps = ramp_["steps"]
        target = plan["steps"] * plan["rooms_per_step"] * plan["room_size"]
        legs = ramp_["last_good_legs"]
        failed = sum(s["failed"] for s in steps)
        rows.append({"measure": "Legs on 2 nodes, rooms split "
                                f"{plan['room_size'] - plan['remote']} + {plan['remote']}, "
                                "zero failed calls, all listed, cascade heard (last good step)",
                     "target": f">= 1200 (2 x 600); this run aimed at {target}",
                     "result": f"{legs} ({failed} failed calls)",
                     "met": legs >= 1200 and failed == 0})
        good = [s for s in steps if s["ok"]]
        if good:
            last = good[-1]
            rows.append({"measure": f"Set-up INVITE->200 at {plan['rate'] / 2:g} calls/s per node "
                                    f"(step to {last['legs']} legs)", "target": "-",
                         "result": f"p50 {last['setup_p50_ms']:g} ms, "
                                   f"p99 {last['setup_p99_ms']:g} ms", "met": None})
            net = statistics.median(s["redis_ops_per_call_net"] for s in good)
            raw = statistics.median(s["redis_ops_per_call"] for s in good)
            rows.append({"measure": "Redis operations per call set up (median over steps)",
                         "target": "-", "result": f"{net:g} net of the ticks ({raw:g} raw); "
                         f"at rest {good[-1]['window']['redis_ops_per_s']:g}/s with "
                         f"{good[-1]['rooms']} rooms", "met": None})
    d = (c.get("compare") or {}).get("derived")
    if d:
        rows.append({"measure": "Extra gateway CPU per remote participant (split rooms - "
                                f"local rooms, {d['legs_per_block']} legs per block, ABBA)",
                     "target": "-",
                     "result": f"{d['extra_ms_per_s_per_remote']:.3f} ms/s "
                               f"({d['extra_ms_per_s_per_cascade']:.3f} ms/s per cascade leg; "
                               f"a local leg {d['local_ms_per_s_per_leg']:.3f} ms/s)",
                     "met": None})
    dl = c.get("delay")
    if dl:
        per_round = ", ".join(f"{x:+g}" for x in dl["added_per_round_ms"])
        rows.append({"measure": "Mouth-to-ear delay a cascade adds (median across nodes - "
                                "median on one node, per round; "
                                f"{dl['bursts']['cascade']} bursts across, "
                                f"{dl['bursts']['one_node']} on one node)",
                     "target": "<= +20 ms",
                     "result": f"median {dl['added_median_ms']:+g} ms, max "
                               f"{dl['added_max_ms']:+g} ms (rounds {per_round}; all bursts: "
                               f"one node median {dl['one_node_median_ms']:g} / max "
                               f"{dl['one_node_max_ms']:g} ms, across median "
                               f"{dl['cascade_median_ms']:g} / max {dl['cascade_max_ms']:g} ms)",
                     "met": dl["added_median_ms"] <= 20})
    problems = (c.get("compare") or {}).get("problems") or []
    if problems:
        rows.append({"measure": "Problems (compare phase)", "target": "none",
                     "result": "; ".join(problems)[:600], "met": False})
    return rows


def markdown_lines(r: dict[str, Any]) -> list[str]:
    c = r.get("cluster") or {}
    lines: list[str] = []
    steps = (c.get("ramp") or {}).get("steps") or []
    if steps:
        lines += ["", "Ramp (split rooms, CPU over a steady window after each step):", "",
                  "| legs (a + b) | rooms | failed | retrans | setup p50/p99 ms | "
                  "cores a / b | Redis ops/call (net) | Redis ops/s at rest | probe hears "
                  "owner | ok |", "|---|---|---|---|---|---|---|---|---|---|"]
        for s in steps:
            w = s["window"]
            lines.append(
                f"| {s['legs']} ({s['legs_per_node']['a']} + {s['legs_per_node']['b']}) | "
                f"{s['rooms']} | {s['failed']} | "
                f"{s['retransmissions']} | {s['setup_p50_ms']:g} / {s['setup_p99_ms']:g} | "
                f"{w['cores']['a']:.3f} / {w['cores']['b']:.3f} | "
                f"{s['redis_ops_per_call_net']:g} | {w['redis_ops_per_s']:g} | "
                f"{s['probe_heard_owner']:.0%} | {'yes' if s['ok'] else 'no: ' + s['why']} |")
    cmp_ = c.get("compare") or {}
    if cmp_.get("windows"):
        lines += ["", "CPU comparison (blocks added in this order; cores of both nodes):", "",
                  "| window | cores a | cores b | total | added by the block |",
                  "|---|---|---|---|---|"]
        prev = None
        for w in cmp_["windows"]:
            added = "" if prev is None else f"{w['cores_total'] - prev:+.4f}"
            lines.append(f"| {w['label']} | {w['cores']['a']:.4f} | {w['cores']['b']:.4f} | "
                         f"{w['cores_total']:.4f} | {added} |")
            prev = w["cores_total"]
    dl = c.get("delay")
    if dl:
        lines += ["", "Delay runs (ms): " + "; ".join(
            f"{x['kind']} round {x['round']}: median {x['median_ms']:g}, max {x['max_ms']:g}"
            for x in dl["runs"])]
    return lines
