"""The capacity ramp: add rooms of SIPp callers step by step until something breaks.

Each step starts one more SIPp process that places `rooms x room_size` calls at
`rate` calls/s (round-robin over its rooms, so rooms fill together) and holds
them. A step is good when every call was answered, none failed, SIPp saw no
retransmission storm, the gateway lists every caller in a room, and a probe
leg in one of the step's rooms hears the SIPp callers' tone (RTP really flows
through the bridge). Then the gateway's CPU and RSS are read from /proc over
a steady window with every call up and no signalling in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import sipp
from bench.audio import percentile
from bench.gateway import Gateway, free_port
from bench.probe import LOUD, Leg, ProbeUA, SipError, silence
from bench.procstat import Sample, Window

log = logging.getLogger("bench.load")

HOLD_MS = 3_600_000  # callers hold until the ramp ends and stops SIPp
FIRST_ROOM = 10_000


@dataclass
class Step:
    legs: int  # SIPp legs held after this step (the probe leg not counted)
    rooms: int
    answered: int
    failed: int
    retransmissions: int
    in_rooms: int  # participants the gateway lists (SIPp legs + probe)
    setup_p50_ms: float
    setup_p99_ms: float
    setup_max_ms: float
    probe_rx_ratio: float
    probe_loud_ratio: float
    cpu_cores: float = 0.0
    cpu_ms_per_leg_s: float = 0.0
    rss_mb: float = 0.0
    rss_kb_per_leg: float = 0.0
    window_s: float = 0.0
    threads: dict[str, float] = field(default_factory=dict)
    # Python threads (asyncio loop + SIP thread) CPU per call while the step's calls were set
    # up: the signalling, answer_url and webhook cost of a call, which RTP never touches.
    python_ms_per_call: float = 0.0
    sipp_cores: float = 0.0  # the load generator's own cost, to show how loaded the box was
    ok: bool = False
    why: str = ""


@dataclass
class RampPlan:
    room_size: int = 10
    rooms_per_step: int = 20
    max_steps: int = 7
    rate: float = 50.0
    window_s: float = 10.0
    settle_s: float = 2.0


async def wait_answered(inst: sipp.Instance, gw: Gateway, expected_in_rooms: int,
                         deadline: float) -> tuple[int, int]:
    """Wait until SIPp has all its 200 OKs and the gateway lists everyone in rooms."""
    answered = in_rooms = 0
    while time.monotonic() < deadline:
        answered = len(inst.setup_ms())
        if inst.counter("FailedCall(C)") or inst.proc.poll() is not None:
            break
        if answered >= inst.calls:
            in_rooms = sum((await gw.participants()).values())
            if in_rooms >= expected_in_rooms:
                break
        await asyncio.sleep(0.5)
    return answered, in_rooms


async def ramp(gw: Gateway, workdir: Path, tone: Path, plan: RampPlan, baseline_rss_kb: int,
               stop_gateway: Callable[[], Awaitable[Any]]) -> list[Step]:
    """Run the ramp; return every step tried (the last may be the one that broke).

    At the end `stop_gateway` runs while SIPp and the probes are still up: the gateway's
    BYEs get their 200 OK (SIPp answers an unexpected BYE by default). Killing the callers
    first would leave the gateway retransmitting BYEs into closed ports for ~30 s.
    """
    scenario = sipp.rooms_scenario(workdir, tone)
    ua = ProbeUA(("127.0.0.1", gw.sip_port))
    await ua.start()
    instances: list[sipp.Instance] = []
    probes: list[Leg] = []
    steps: list[Step] = []
    legs = 0
    try:
        for n in range(plan.max_steps):
            calls = plan.rooms_per_step * plan.room_size
            first = FIRST_ROOM + n * plan.rooms_per_step
            numbers = [str(first + i % plan.rooms_per_step) for i in range(calls)]
            d = workdir / f"step-{n + 1}"
            d.mkdir(parents=True, exist_ok=True)
            inst = sipp.start(d, f"127.0.0.1:{gw.sip_port}", scenario,
                              sipp.dial_plan(d / "dial.csv", numbers), calls=calls,
                              rate=plan.rate, hold_ms=HOLD_MS, sip_port=free_port(),
                              media_port=sipp.media_port(n), control_port=free_port())
            instances.append(inst)
            legs += calls
            log.info("step started", extra={"step": n + 1, "legs": legs})
            setup_start = Sample.take(gw.pid)
            deadline = time.monotonic() + calls / plan.rate + 20
            answered, in_rooms = await wait_answered(inst, gw, legs + len(probes), deadline)
            setup = Window(setup_start, Sample.take(gw.pid))
            python_s = setup.by_thread().get("python", 0.0) * setup.seconds
            # a listener in one of this step's rooms: does the mixed audio reach a caller?
            probe = Leg(f"listen-{n + 1}", str(first), silence)
            probe_ok = True
            try:
                await ua.call(probe, timeout_s=8)
                probes.append(probe)
            except SipError as exc:
                log.warning("probe call failed", extra={"error": str(exc)})
                probe_ok = False
            await asyncio.sleep(plan.settle_s)
            probe.rx.arrivals.clear()
            probe.rx.peaks.clear()
            before = Sample.take(gw.pid)
            sipp_before = [(i.proc.pid, Sample.take(i.proc.pid)) for i in instances
                           if i.proc.poll() is None]
            await asyncio.sleep(plan.window_s)
            after = Sample.take(gw.pid)
            sipp_cores = sum(Window(s0, Sample.take(pid)).cpu_share for pid, s0 in sipp_before
                             if Path(f"/proc/{pid}").exists())
            win = Window(before, after)
            in_rooms = sum((await gw.participants()).values())  # the probe is in by now
            expected = win.seconds / 0.02
            peaks = list(probe.rx.peaks)
            setups = [s for i in instances[-1:] for s in i.setup_ms()]
            step = Step(
                legs=legs, rooms=(n + 1) * plan.rooms_per_step, answered=answered,
                failed=sum(i.counter("FailedCall(C)") for i in instances),
                retransmissions=sum(i.counter("Retransmissions(C)") for i in instances),
                in_rooms=in_rooms, setup_p50_ms=percentile(setups, 50),
                setup_p99_ms=percentile(setups, 99), setup_max_ms=max(setups, default=0.0),
                probe_rx_ratio=round(len(peaks) / expected, 3),
                probe_loud_ratio=round(sum(p >= LOUD for p in peaks) / max(len(peaks), 1), 3),
                cpu_cores=round(win.cpu_share, 3),
                cpu_ms_per_leg_s=round(win.ms_per_leg_second(legs + len(probes)), 3),
                rss_mb=round(after.rss_kb / 1024, 1),
                rss_kb_per_leg=round((after.rss_kb - baseline_rss_kb) / legs, 1),
                window_s=round(win.seconds, 2), threads=win.by_thread(),
                python_ms_per_call=round(1000 * python_s / max(answered, 1), 3),
                sipp_cores=round(sipp_cores, 3))
            step.ok, step.why = _judge(step, calls, legs, len(probes), probe_ok, inst)
            steps.append(step)
            log.info("step done", extra={k: v for k, v in asdict(step).items()
                                         if k != "threads"})
            if not step.ok or not gw.alive():
                break
    finally:
        await stop_gateway()
        for inst in instances:
            inst.stop()
        await ua.close()
    return steps


def _judge(s: Step, calls: int, legs: int, probes: int, probe_ok: bool,
           inst: sipp.Instance) -> tuple[bool, str]:
    # A storm is retransmissions beyond the odd lost datagram: more than 1% of INVITEs.
    storm = max(2, legs // 100)
    problems = []
    if s.failed:
        problems.append(f"{s.failed} failed calls")
    if s.answered < calls:
        problems.append(f"only {s.answered}/{calls} of the step's calls answered")
    if s.in_rooms < legs + probes:
        problems.append(f"gateway lists {s.in_rooms}/{legs + probes} in rooms")
    if s.retransmissions > storm:
        problems.append(f"{s.retransmissions} SIP retransmissions")
    if not probe_ok or s.probe_rx_ratio < 0.9 or s.probe_loud_ratio < 0.9:
        problems.append(f"probe heard rx={s.probe_rx_ratio} loud={s.probe_loud_ratio}")
    if inst.proc.poll() is not None:
        problems.append("SIPp exited: " + inst.errors()[-300:])
    return not problems, "; ".join(problems)


def summary(steps: list[Step]) -> dict[str, Any]:
    good = [s for s in steps if s.ok]
    last = good[-1] if good else None
    return {
        "last_good_legs": last.legs if last else 0,
        "last_good": asdict(last) if last else None,
        "broke_at": asdict(steps[-1]) if steps and not steps[-1].ok else None,
        "steps": [asdict(s) for s in steps],
    }
