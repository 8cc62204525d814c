"""`python -m bench [--quick]`: load the gateway, measure it, publish the numbers.

    .venv/bin/python -m bench --quick     # ~3 minutes: 200 legs, delay, a room of 50, ratio
    .venv/bin/python -m bench             # full: ramp to 2200 legs, rooms of 500 and 1000

Phases, each on a fresh gateway process (so one phase's leftovers never bias another):
1. ramp: rooms of SIPp callers sending G.711 RTP, step by step (bench/load.py):
   capacity, set-up latency at the stated call rate, CPU per leg-second, RSS per leg;
2. mixer delay: tone bursts in at one probe leg, timed out of another (bench/audio.py);
3. big rooms: one room of N probe legs, every one checked for audio (bench/audio.py);
4. setup: set-up latency at 100 calls/s with answer_url and event_url served by a separate
   process (the setup mode's measurement, bench/setuplatency.py);
5. ratio: the same SIPp load on the gateway and on pjproject's own pjsua app of the same
   build, one after the other: gateway CPU per leg-second over pjsua's (bench/ratio.py).
Writes bench/results/<stamp>.json and the generated block of BENCHMARKS.md.

Feature modes (`--mode`), each on its own gateway and with its own generated block:
- recording: rooms of SIPp callers, unrecorded, then recorded (bench/recording.py)
    .venv/bin/python -m bench --mode recording     # 100 rooms of 10: 50, then 100 recorded
    .venv/bin/python -m bench --mode recording --rooms 3 --room-size 4
- room-features: one room, plain vs hold + coach + announcement (bench/roomfeatures.py)
    .venv/bin/python -m bench --mode room-features # a room of 250
    p.add_argument("--mode", choices=["recording", "room-features", "cluster", "setup"],
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import (
    audio,
    cluster,
    gateway,
    load,
    ratio,
    recording,
    report,
    roomfeatures,
    setuplatency,
    sipp,
)
from bench.procstat import Sample, Window
from bench.receiver import Receiver
from gateway.logs import KeyValueFormatter

log = logging.getLogger("bench")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few minutes: small ramp, small room")
    p.add_argument("--mode", choices=["recording", "room-features", "cluster", "setup"],
                   help="a feature mode instead of the ramp/delay/room phases")
    p.add_argument("--rooms", type=int, help="recording mode: rooms of SIPp callers (100)")
    p.add_argument("--record", type=int, action="append",
                   help="recording mode: rooms recorded in a window (repeatable, cumulative; "
                        "default half the rooms, then all)")
    p.add_argument("--rounds", type=int, default=3,
                   help="feature modes: rounds of feature windows, each between plain ones (3)")
    p.add_argument("--settle", type=float, default=3.0,
                   help="feature modes: seconds between a change and its window (3)")
    p.add_argument("--room-size", type=int,
                   help="callers per room in the ramp and the recording mode (10); "
                        "the room-features mode's room (250)")
    p.add_argument("--rooms-per-step", type=int, help="rooms added per ramp step")
    p.add_argument("--remote", type=int,
                   help="cluster mode: callers of a room on node b, the rest on a (half)")
    p.add_argument("--compare-rooms", type=int,
                   help="cluster mode: rooms per block of the local/split CPU comparison (30)")
    p.add_argument("--steps", type=int, help="ramp steps at most")
    p.add_argument("--rate", type=float,
                   help="calls per second (50; the setup mode's 100)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="setup mode: seconds of calls placed at --rate (10)")
    p.add_argument("--hold", type=float, default=10.0,
                   help="setup mode: seconds each call is held, sending RTP (10)")
    p.add_argument("--no-verify", action="store_true",
                   help="setup mode: the application does not check request signatures")
    p.add_argument("--window", type=float, help="seconds of steady state measured per step")
    p.add_argument("--big-room", type=int, action="append",
                   help="room sizes to audit (repeatable); the next runs only if one passes")
    p.add_argument("--bursts", type=int, help="tone bursts timed for the mixer delay")
    p.add_argument("--ratio-legs", type=int,
                   help="ratio phase: SIPp callers on the gateway, then on pjsua (1000)")
    p.add_argument("--floor-build", type=Path, action="append", default=[],
                   help="ratio phase: another build's pjsua to compare with (repeatable), "
                        "e.g. one without sip/build/patches")
    p.add_argument("--setup-rate", type=float, default=100.0,
                   help="the full run's setup phase: calls per second (100)")
    p.add_argument("--only", choices=["ramp", "delay", "room", "setup", "ratio", "compare"],
                   action="append",
                   help="run only these phases (repeatable); cluster mode: compare, ramp, "
                        "delay")
    p.add_argument("--log-level", default="WARNING",
                   help="the gateway's --log-level (WARNING keeps logging off per-call paths)")
    p.add_argument("--conf-threads", type=int, help="sip.conf_threads for the gateway")
    p.add_argument("--cascade-jitter-ms", type=int, default=None,
                   help="cluster mode: the nodes' cluster.cascade_jitter_ms (0: adaptive; "
                        "default: the config's, 40)")
    p.add_argument("--patch", help="experiment: JSON for bench.patched (see its docstring)")
    p.add_argument("--pjsua2-dir", type=Path, help="experiment: another pjsua2 build to use")
    p.add_argument("--room-window", type=float, default=8.0,
                   help="seconds every big-room participant listens (8)")
    p.add_argument("--results-dir", type=Path, default=report.RESULTS,
                   help="where the JSON goes (bench/results, git-ignored)")
    p.add_argument("--label", default="", help="a name for this run in the JSON")
    p.add_argument("--from-json", type=Path,
                   help="only re-render BENCHMARKS.md from an earlier result file")
    p.add_argument("--no-markdown", action="store_true",
                   help="write only the JSON (experiments must not replace the published table)")
    return p


async def _start(args: argparse.Namespace, work: Path, name: str,
                 sections: dict[str, dict[str, Any]] | None = None,
                 event_url: str | None = None,
                 answer_url: str | None = None) -> gateway.Gateway:
    overrides: dict[str, Any] = {}
    if args.conf_threads:
        overrides["conf_threads"] = args.conf_threads
    return await gateway.start(work / name, log_level=args.log_level, sip_overrides=overrides,
                               patch=json.loads(args.patch) if args.patch else None,
                               pjsua2_dir=args.pjsua2_dir, sections=sections,
                               event_url=event_url, answer_url=answer_url)


async def _stop(gw: gateway.Gateway) -> dict[str, Any]:
    """Stop the gateway off the event loop, so probe legs can answer its BYEs meanwhile."""
    t0 = time.monotonic()
    code = await asyncio.to_thread(gw.stop, 60)
    stop_s = round(time.monotonic() - t0, 1)
    tail = gw.tail(200_000)
    problems = [line for line in tail.splitlines()
                if " ERROR " in line or "Traceback" in line][:20]
    return {"exit_code": code, "stop_s": stop_s, "error_lines": problems}


async def _cluster_mode(args: argparse.Namespace) -> dict[str, Any]:
    """Redis and two nodes per phase (bench/cluster.py)."""
    work = Path(tempfile.mkdtemp(prefix="minivoice-bench-"))
    size = args.room_size or 10
    phases = tuple(p for p in ("compare", "ramp", "delay") if p in (args.only or [
        "compare", "ramp", "delay"]))
    if not phases:
        raise SystemExit("--only: cluster mode has the phases compare, ramp, delay")
    plan = cluster.ClusterPlan(
        room_size=size, remote=args.remote or size // 2,
        rooms_per_step=args.rooms_per_step or 20, steps=args.steps or 6,
        compare_rooms=args.compare_rooms or 30, rate=args.rate,
        window_s=args.window or 10.0, settle_s=args.settle, bursts=args.bursts or 10,
        delay_rounds=args.rounds, phases=phases, cascade_jitter_ms=args.cascade_jitter_ms)
    result: dict[str, Any] = {"mode": "cluster", "label": args.label, "workdir": str(work),
                              "gateway_log_level": args.log_level, "patch": args.patch}
    result["cluster"] = await cluster.run(work, plan, args.log_level,
                                          json.loads(args.patch) if args.patch else None)
    result["summary"] = summarize(result)
    return result


async def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    """One feature mode on a fresh gateway (see bench/recording.py, bench/roomfeatures.py)."""
    if args.mode == "cluster":
        return await _cluster_mode(args)
    work = Path(tempfile.mkdtemp(prefix="minivoice-bench-"))
    result: dict[str, Any] = {"mode": args.mode, "label": args.label, "workdir": str(work),
                              "gateway_log_level": args.log_level, "patch": args.patch,
                              "pjsua2_dir": str(args.pjsua2_dir or "")}
    tone = sipp.alaw_tone(work / "tone.wav", 1000, 2.0, volume=0.25)
    stopped: dict[str, Any] = {}
    # The application's webhooks go to the bench's receiver, which accepts them as a working
    # application would; it also serves the announcement file.
    if args.mode == "setup":
        await _setup_mode(args, work, tone, result, stopped)
        result["summary"] = summarize(result)
        return result
    app = Receiver()
    await app.start()
    try:
        if args.mode == "recording":
            await _recording_mode(args, work, tone, app, result, stopped)
        else:
            await _features_mode(args, work, tone, app, result, stopped)
    finally:
        await app.close()
    result["webhooks_received"] = dict(app.events)
    result["summary"] = summarize(result)
    return result


async def _recording_mode(args: argparse.Namespace, work: Path, tone: Path, app: Receiver,
                          result: dict[str, Any], stopped: dict[str, Any]) -> None:
    rooms = args.rooms or 100
    plan = recording.RecordingPlan(
        rooms=rooms, room_size=args.room_size or 10,
        record=tuple(args.record or sorted({max(1, rooms // 2), rooms})),
        rate=args.rate, window_s=args.window or 10.0, settle_s=args.settle, rounds=args.rounds)
    files = work / "recording" / "recordings"
    # recordings.max_concurrent (100 by default) must not refuse the rooms asked for
    gw = await _start(args, work, "recording", {"recordings": {
        "dir": str(files), "max_concurrent": max(100, *plan.record)}}, app.event_url)
    result["gateway_command"] = gw.command

    async def stop_gateway() -> None:
        stopped.update(await _stop(gw))

    try:
        result["recording"] = await recording.run(gw, work / "recording", tone, plan, files,
                                                  app, stop_gateway)
    finally:
        result["recording_gateway"] = stopped or await _stop(gw)


async def _features_mode(args: argparse.Namespace, work: Path, tone: Path, app: Receiver,
                         result: dict[str, Any], stopped: dict[str, Any]) -> None:
    plan = roomfeatures.FeaturesPlan(room_size=args.room_size or 250, rate=args.rate,
                                     window_s=args.window or 10.0, settle_s=args.settle,
                                     rounds=args.rounds)
    # the announcement is fetched from the bench's receiver on loopback
    gw = await _start(args, work, "room-features",
                      {"hooks": {"allow_private": ["127.0.0.0/8"]}}, app.event_url)
    result["gateway_command"] = gw.command

    async def stop_gateway() -> None:
        stopped.update(await _stop(gw))

    try:
        result["room_features"] = await roomfeatures.run(gw, work / "room-features", tone,
                                                         plan, app, stop_gateway)
    finally:
        result["room_features_gateway"] = stopped or await _stop(gw)


async def _setup_mode(args: argparse.Namespace, work: Path, tone: Path,
                      result: dict[str, Any], stopped: dict[str, Any]) -> None:
    plan = setuplatency.SetupPlan(rate=args.rate, duration_s=args.duration, hold_s=args.hold,
                                  room_size=args.room_size or 10, verify=not args.no_verify)
    # answer_url and event_url: an application in a process of its own (its CPU is not the
    # gateway's), checking signatures as the demo app does
    app = await setuplatency.start_app(work / "setup", setuplatency.bench_secret(),
                                       plan.verify)
    result["app_command"] = app.command
    try:
        gw = await _start(args, work, "setup", event_url=f"{app.base}/events",
                          answer_url=f"{app.base}/answer")
        result["gateway_command"] = gw.command

        async def stop_gateway() -> None:
            stopped.update(await _stop(gw))

        try:
            result["setup"] = await setuplatency.run(gw, app, work / "setup", tone, plan,
                                                     stop_gateway)
        finally:
            result["setup_gateway"] = stopped or await _stop(gw)
    finally:
        result["app_exit_code"] = app.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.mode:
        return await run_mode(args)
    quick = args.quick
    plan = load.RampPlan(
        room_size=args.room_size or 10,
        rooms_per_step=args.rooms_per_step or (10 if quick else 20),
        max_steps=args.steps or (2 if quick else 11),
        rate=args.rate,
        window_s=args.window or (5.0 if quick else 10.0),
    )
    rooms_to_try = args.big_room or ([50] if quick else [500, 1000])
    bursts = args.bursts or (5 if quick else 10)
    phases = set(args.only or ["ramp", "delay", "room", "setup", "ratio"])
    work = Path(tempfile.mkdtemp(prefix="minivoice-bench-"))
    result: dict[str, Any] = {"mode": "quick" if quick else "full", "label": args.label,
                              "plan": asdict(plan), "workdir": str(work),
                              "gateway_log_level": args.log_level, "patch": args.patch,
                              "pjsua2_dir": str(args.pjsua2_dir or "")}
    tone = sipp.alaw_tone(work / "tone.wav", 1000, 2.0, volume=0.25)

    if "ramp" in phases:
        gw = await _start(args, work, "ramp")
        result["gateway_command"] = gw.command
        stopped: dict[str, Any] = {}

        async def stop_ramp_gateway(gw: gateway.Gateway = gw) -> None:
            stopped.update(await _stop(gw))

        try:
            await asyncio.sleep(1.0)
            idle = Sample.take(gw.pid)
            steps = await load.ramp(gw, work / "ramp", tone, plan, idle.rss_kb,
                                    stop_ramp_gateway)
            result["ramp"] = load.summary(steps)
            result["ramp"]["idle_rss_mb"] = round(idle.rss_kb / 1024, 1)
        finally:
            result["ramp_gateway"] = stopped or await _stop(gw)

    if "delay" in phases:
        gw = await _start(args, work, "delay")
        result["gateway_command"] = gw.command
        try:
            d = await audio.mixer_delay(("127.0.0.1", gw.sip_port), "7001", bursts)
            result["mixer_delay"] = asdict(d)
        finally:
            result["delay_gateway"] = await _stop(gw)

    if "room" in phases:
        result["big_rooms"] = []
        for n in rooms_to_try:
            gw = await _start(args, work, f"room-{n}")
            result["gateway_command"] = gw.command
            marks: list[Sample] = []

            async def on_window(start: bool, pid: int = gw.pid,
                                marks: list[Sample] = marks) -> None:
                marks.append(Sample.take(pid))

            try:
                audit = await audio.big_room(("127.0.0.1", gw.sip_port), f"8{n:03d}", n,
                                             rate=args.rate, window_s=args.room_window,
                                             on_window=on_window)
                if len(marks) == 2:
                    win = Window(marks[0], marks[1])
                    audit.gateway = {"cpu_cores": round(win.cpu_share, 3),
                                     "cpu_ms_per_leg_s": round(win.ms_per_leg_second(n), 3),
                                     "rss_mb": round(marks[1].rss_kb / 1024, 1),
                                     "threads": win.by_thread()}
                result["big_rooms"].append(audit.as_dict())
                log.info("big room", extra={"n": n, "ok": audit.ok, "heard_by": audit.heard_by})
            finally:
                result[f"room_{n}_gateway"] = await _stop(gw)
            if not audit.ok:
                break

    if "setup" in phases:
        # The set-up latency target's own conditions: 100 calls/s, answer_url and event_url
        # served by a separate process (its CPU is not the gateway's), calls held with RTP.
        setup_args = argparse.Namespace(**{**vars(args), "rate": args.setup_rate,
                                           "duration": 3.0 if quick else args.duration,
                                           "hold": 3.0 if quick else args.hold})
        setup_stopped: dict[str, Any] = {}
        await _setup_mode(setup_args, work, tone, result, setup_stopped)

    if "ratio" in phases:
        result["ratio"] = await ratio.run(
            work, tone, legs=args.ratio_legs or (100 if quick else 1000),
            room_size=args.room_size or 10, rate=args.rate,
            seconds=args.window or (5.0 if quick else 20.0), floor_builds=args.floor_build)
    result["summary"] = summarize(result)
    return result


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    if r["mode"] == "recording":
        return {"rows": recording.summary_rows(r)}
    if r["mode"] == "room-features":
        return {"rows": roomfeatures.summary_rows(r)}
    if r["mode"] == "setup":
        return {"rows": setuplatency.summary_rows(r)}
    if r["mode"] == "cluster":
        return {"rows": cluster.summary_rows(r)}
    t = report.TARGETS
    rows: list[dict[str, Any]] = []
    ramp = r.get("ramp")
    if ramp:
        last = ramp["last_good"] or {}
        legs = ramp["last_good_legs"]
        rows.append({"measure": "Concurrent legs, zero failed calls, RTP heard (last good step)",
                     "target": f">= {t['legs']}", "result": f"{legs}",
                     "met": legs >= t["legs"]})
        at_target = next((s for s in ramp["steps"] if s["legs"] >= t["legs"] and s["ok"]), None)
        ref = at_target or last
        if ref:
            rows.append({"measure": f"Gateway CPU per leg-second (at {ref['legs']} legs)",
                         "target": f"<= {t['cpu_ms_per_leg_s']} ms",
                         "result": f"{ref['cpu_ms_per_leg_s']:.3f} ms "
                                   f"({ref['cpu_cores']:.2f} cores)",
                         "met": ref["cpu_ms_per_leg_s"] <= t["cpu_ms_per_leg_s"]
                         if at_target else None})
            rows.append({"measure": f"RSS per leg (at {ref['legs']} legs)", "target": "-",
                         "result": f"{ref['rss_kb_per_leg']:g} KB ({ref['rss_mb']:g} MB total)",
                         "met": None})
        # Set-up latency at the first step (a lightly loaded box) and at the target load:
        # past ~600 legs the 2-core box is saturated and latency tracks that, not the code.
        good = [s for s in ramp["steps"] if s["ok"]]
        for label, st in (("first step", good[0] if good else None), ("target load", at_target)):
            if st is None:
                continue
            rows.append({
                "measure": f"Set-up INVITE->200 incl. answer_url at {r['plan']['rate']:g} "
                           f"calls/s, {label} ({st['legs']} legs up)",
                "target": f"p99 <= {t['setup_p99_ms']:g} ms",
                "result": f"p50 {st['setup_p50_ms']:g} ms, p99 {st['setup_p99_ms']:g} ms",
                "met": st["setup_p99_ms"] <= t["setup_p99_ms"]})
    d = r.get("mixer_delay")
    if d:
        rows.append({"measure": f"Delay added by the gateway, leg to leg ({d['bursts']} bursts)",
                     "target": f"<= {t['mixer_delay_ms']:g} ms",
                     "result": f"median {d['median_ms']:g} ms, max {d['max_ms']:g} ms",
                     "met": d["max_ms"] <= t["mixer_delay_ms"]})
    rooms = r.get("big_rooms")
    if rooms:
        best = max((x["participants"] for x in rooms if x["ok"]), default=0)
        tried = ", ".join(f"{x['participants']}: {'ok' if x['ok'] else 'failed'}" for x in rooms)
        rows.append({"measure": "Largest single room with audio to every participant",
                     "target": f">= {t['big_room']} (stretch {t['big_room_stretch']})",
                     "result": f"{best} (tried {tried})", "met": best >= t["big_room"]})
    if r.get("setup"):
        rows += setuplatency.summary_rows(r)
    if r.get("ratio"):
        rows += ratio.summary_rows(r["ratio"], t["floor_ratio"])
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rate is None:
        args.rate = 100.0 if args.mode == "setup" else 50.0
    if args.from_json:
        earlier: dict[str, Any] = json.loads(args.from_json.read_text())
        earlier["summary"] = summarize(earlier)
        report.update_markdown(earlier)
        return 0
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result: dict[str, Any] = {
        "stamp": stamp, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([".venv/bin/python -m bench",
                             shlex.join(sys.argv[1:] if argv is None else argv)]).strip(),
        "machine": report.machine()}
    if args.mode == "cluster":
        result["result_name"] = f"cluster-{stamp}"
    try:
        result.update(asyncio.run(run(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl-C, or SIGTERM in cluster mode: the finally blocks stopped what was started
        print("interrupted: no result written", file=sys.stderr)
        return 130
    path = report.write_json(result, result.get("result_name", stamp), args.results_dir)
    if not args.no_markdown:
        report.update_markdown(result)
    for row in result["summary"]["rows"]:
        print(f"{row['measure']}: {row['result']} (target {row['target']})")
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
