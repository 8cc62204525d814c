"""`python -m bench --mode setup`: call set-up latency at a steady call rate (issue 16).

The application (answer_url and event_url) is `bench.answerapp` in a process of its own, so
what it costs is not charged to the gateway (with the embedded demo app both ends of the
answer_url round trip ran in the gateway's process). It checks every request's signature,
as the demo app does, and answers with one `conference` action (dialing N -> room
`support-room-N`).

One SIPp process places `rate x duration_s` calls at `rate` calls/s, round-robin over rooms
of `room_size`, each held `hold_s` while sending G.711 RTP (so up to rate x hold_s legs are
up at once, e.g. 100/s x 10 s = 1000), then hung up by SIPp. Measured:

- set-up latency: SIPp's INVITE -> 200 OK of every call (`-trace_rtt`, whole ms), so the
  answer_url round trip, the action's validation and the conference join are included;
  p50/p95/p99/max; failed calls and retransmissions (SIPp's counters);
- the set-up window: from the first INVITE to the last call's 200 OK. Over it: the
  gateway's cores, its Python threads' CPU per call set up (`python_ms_per_call`: the
  asyncio loop, the SIP thread and the outbox's database thread, all named `python`; pjmedia's
  `clock`/`media` threads are not in it), the application process's cores and ms per call,
  SIPp's cores. With hold_s < duration_s the window also holds hang-ups (BYE, call.completed).
- the whole run (until SIPp has hung up every call): the same CPU figures, and every
  webhook the application received (call.initiated, call.answered, call.completed per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench import procstat, sipp
from bench.audio import percentile
from bench.gateway import CONFIG, ROOT, Gateway, free_port
from bench.load import FIRST_ROOM
from bench.procstat import Sample, Window

log = logging.getLogger("bench.setup")

TARGET_P99_MS = 50.0


@dataclass
class SetupPlan:
    rate: float = 100.0
    duration_s: float = 10.0
    hold_s: float = 10.0
    room_size: int = 10
    verify: bool = True  # the application checks each request's signature

    @property
    def calls(self) -> int:
        return max(1, round(self.rate * self.duration_s))

    @property
    def rooms(self) -> int:
        return max(1, math.ceil(self.calls / max(1, self.room_size)))


def bench_secret() -> str:
    """The application secret of configs/bench.yaml (the gateway signs with it)."""
    cfg: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return str(cfg["applications"][0]["secret"])


@dataclass
class AppProcess:
    proc: subprocess.Popen[bytes]
    port: int
    command: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stats(self) -> dict[str, int]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as s, \
                s.get(self.base + "/stats") as r:
            body: dict[str, int] = await r.json()
            return body

    def stop(self) -> int:
        procstat.terminate(self.proc)
        return self.proc.returncode


async def start_app(workdir: Path, secret: str, verify: bool = True) -> AppProcess:
    """Start bench.answerapp and wait until it answers GET /stats."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "bench.answerapp", "--port", str(port),
               "--secret", secret, *([] if verify else ["--no-verify"])]
    with (workdir / "answerapp.log").open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    app = AppProcess(proc, port, command)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError("answer app exited: "
                               + (workdir / "answerapp.log").read_text(errors="replace")[-2000:])
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            await app.stats()
            return app
        if time.monotonic() > deadline:
            app.stop()
            raise RuntimeError("answer app did not start")
        await asyncio.sleep(0.1)


def _cpu(gw_w: Window, app_w: Window, sipp_w: Window | None, calls: int) -> dict[str, Any]:
    python_s = gw_w.by_thread().get("python", 0.0) * gw_w.seconds
    return {
        "seconds": round(gw_w.seconds, 2),
        "gateway_cores": round(gw_w.cpu_share, 3),
        "gateway_threads": gw_w.by_thread(),
        "python_ms_per_call": round(1000 * python_s / max(calls, 1), 3),
        "gateway_ms_per_call": round(1000 * gw_w.cpu_s / max(calls, 1), 3),
        "app_cores": round(app_w.cpu_share, 3),
        "app_ms_per_call": round(1000 * app_w.cpu_s / max(calls, 1), 3),
        "sipp_cores": round(sipp_w.cpu_share, 3) if sipp_w else None,
    }


def free_media_port() -> int:
    """SIPp's -mp: the first slot whose ports are free now (another run's SIPp on this
    machine may hold slot 0's; SIPp then fails every call with "Unable to bind")."""
    for slot in range(500):
        if sipp.media_slot_free(slot):
            return sipp.media_port(slot)
    raise RuntimeError("no free SIPp media ports")


def _take(pid: int) -> Sample | None:
    try:
        return Sample.take(pid)
    except OSError:
        return None


async def run(gw: Gateway, app: AppProcess, workdir: Path, tone: Path, plan: SetupPlan,
              stop_gateway: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Run the mode; `stop_gateway` runs at the end while SIPp is still up (if it is)."""
    calls = plan.calls
    numbers = [str(FIRST_ROOM + i % plan.rooms) for i in range(calls)]
    out: dict[str, Any] = {"plan": {**asdict(plan), "calls": calls, "rooms": plan.rooms},
                           "problems": []}
    problems: list[str] = out["problems"]
    scenario = sipp.rooms_scenario(workdir, tone)
    await asyncio.sleep(1.0)  # the gateway idle before the first INVITE
    gw0, app0 = Sample.take(gw.pid), Sample.take(app.pid)
    inst = sipp.start(workdir, f"127.0.0.1:{gw.sip_port}", scenario,
                      sipp.dial_plan(workdir / "dial.csv", numbers), calls=calls,
                      rate=plan.rate, hold_ms=round(plan.hold_s * 1000),
                      sip_port=free_port(), media_port=free_media_port(),
                      control_port=free_port())
    sipp0 = _take(inst.proc.pid)
    try:
        # the set-up window: until every call has its 200 OK (or SIPp gave up)
        deadline = time.monotonic() + plan.duration_s + 30
        answered = 0
        while time.monotonic() < deadline:
            answered = len(inst.setup_ms())
            if answered >= calls or inst.proc.poll() is not None:
                break
            await asyncio.sleep(0.2)
        gw1, app1 = Sample.take(gw.pid), Sample.take(app.pid)
        sipp1 = _take(inst.proc.pid)
        up = sum((await gw.participants()).values())
        out["setup_window"] = _cpu(Window(gw0, gw1), Window(app0, app1),
                                   Window(sipp0, sipp1) if sipp0 and sipp1 else None,
                                   answered)
        out["in_rooms_at_last_answer"] = up
        # the whole run: until SIPp has hung up every call and exited
        deadline = time.monotonic() + plan.hold_s + 30
        while inst.proc.poll() is None and time.monotonic() < deadline:
            sipp1 = _take(inst.proc.pid) or sipp1
            await asyncio.sleep(0.2)
        if inst.proc.poll() is None:
            problems.append("SIPp still running after its calls' hold time")
        setups = inst.setup_ms()
        out.update(
            calls=calls, answered=len(setups),
            failed_calls=inst.counter("FailedCall(C)"),
            retransmissions=inst.counter("Retransmissions(C)"),
            setup_p50_ms=percentile(setups, 50), setup_p95_ms=percentile(setups, 95),
            setup_p99_ms=percentile(setups, 99), setup_max_ms=max(setups, default=0.0))
        # webhooks: every call's three, delivered through the outbox to the application
        want = {"call.initiated": calls, "call.answered": calls, "call.completed": calls}
        received: dict[str, int] = {}
        until = time.monotonic() + 30
        while time.monotonic() < until:
            received = await app.stats()
            if all(received.get(k, 0) >= n for k, n in want.items()):
                break
            await asyncio.sleep(0.5)
        gw2, app2 = Sample.take(gw.pid), Sample.take(app.pid)
        out["whole_run"] = _cpu(Window(gw0, gw2), Window(app0, app2),
                                Window(sipp0, sipp1) if sipp0 and sipp1 else None, calls)
        out["app_received"] = received
        if out["failed_calls"]:
            problems.append(f"{out['failed_calls']} failed calls")
        if out["answered"] < calls:
            problems.append(f"only {out['answered']}/{calls} calls answered")
        if received.get("answer", 0) < calls:
            problems.append(f"the application answered {received.get('answer', 0)}/{calls}")
        if received.get("bad_signature"):
            problems.append(f"{received['bad_signature']} requests with a bad signature")
        for k, n in want.items():
            if received.get(k, 0) < n:
                problems.append(f"{received.get(k, 0)}/{n} {k} webhooks received")
    finally:
        out.setdefault("failed_calls", inst.counter("FailedCall(C)"))
        await stop_gateway()
        inst.stop()
    return out


def summary_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    s = r.get("setup") or {}
    plan = s.get("plan", {})
    rate = plan.get("rate", 0)
    rows: list[dict[str, Any]] = []
    if "setup_p99_ms" in s:
        rows.append({
            "measure": f"Set-up INVITE->200 incl. answer_url (separate process) at {rate:g} "
                       f"calls/s, {s['calls']} calls held {plan.get('hold_s', 0):g} s "
                       f"(up to {s.get('in_rooms_at_last_answer', 0)} legs up)",
            "target": f"p99 <= {TARGET_P99_MS:g} ms",
            "result": f"p50 {s['setup_p50_ms']:g}, p95 {s['setup_p95_ms']:g}, "
                      f"p99 {s['setup_p99_ms']:g}, max {s['setup_max_ms']:g} ms",
            "met": s["setup_p99_ms"] <= TARGET_P99_MS and not s.get("problems")})
    rows.append({"measure": f"Failed calls / retransmissions ({s.get('calls', 0)} calls)",
                 "target": "0 / -",
                 "result": f"{s.get('failed_calls', '?')} / {s.get('retransmissions', '?')}",
                 "met": s.get("failed_calls") == 0})
    w = s.get("setup_window")
    if w:
        rows.append({
            "measure": "Gateway's Python threads, CPU per call set up (set-up window)",
            "target": "-", "result": f"{w['python_ms_per_call']:g} ms "
                                     f"(whole gateway {w['gateway_ms_per_call']:g} ms)",
            "met": None})
        rows.append({
            "measure": "Cores during the set-up window: gateway / application / SIPp",
            "target": "-",
            "result": f"{w['gateway_cores']:.2f} / {w['app_cores']:.2f} / "
                      f"{(w['sipp_cores'] or 0):.2f} (application "
                      f"{w['app_ms_per_call']:g} ms per call)",
            "met": None})
    if s.get("problems"):
        rows.append({"measure": "Problems", "target": "none",
                     "result": "; ".join(s["problems"])[:600], "met": False})
    return rows


def markdown_lines(r: dict[str, Any]) -> list[str]:
    s = r.get("setup") or {}
    lines: list[str] = []
    for name, label in (("setup_window", "set-up window (first INVITE to last 200 OK)"),
                        ("whole_run", "whole run (until every call was hung up and its "
                                      "webhooks delivered)")):
        w = s.get(name)
        if not w:
            continue
        threads = ", ".join(f"`{k}` {v:.3f}" for k, v in w["gateway_threads"].items())
        lines.append(f"- {label}, {w['seconds']:g} s: gateway {w['gateway_cores']:.3f} cores "
                     f"({threads}), {w['gateway_ms_per_call']:g} ms per call of which Python "
                     f"{w['python_ms_per_call']:g} ms; application {w['app_cores']:.3f} cores "
                     f"({w['app_ms_per_call']:g} ms per call)")
    if s.get("app_received"):
        got = ", ".join(f"{k} {v}" for k, v in sorted(s["app_received"].items()))
        lines.append(f"- The application received: {got}")
    return ["", *lines] if lines else []
