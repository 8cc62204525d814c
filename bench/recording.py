"""`python -m bench --mode recording`: what recording rooms costs the gateway.

Rooms of SIPp callers sending G.711 RTP (as in the ramp) are held up; the gateway's CPU is
measured in windows with the same calls up, one gateway process:

1. plain: no room recorded;
2. `rounds` times: one window per entry of `record` (cumulative: `--record 50 --record 100`
   records 50 rooms, measures, then 50 more, measures), each room started by
   `POST /v1/conferences/{room}/recordings`; then every recording stopped
   (`DELETE .../recordings/{id}`) and a plain window.

Added CPU per recorded room = (cores recorded - mean of the plain windows just before and
after the round) / rooms recorded, in ms of CPU per second per room; the median over the
rounds is the figure (a shared 2-core box drifts by several % between windows, as much as
what is measured, so one pair of windows is not enough). The disk write rate is the growth
of the recordings directory's files over the window and /proc/<pid>/io `write_bytes`. Every
recording is read back through `GET /v1/recordings/{id}` and `/audio`: completed, and the
callers' tone in it. Failed calls (SIPp) must be zero.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench import sipp, stages
from bench.gateway import Gateway
from bench.load import FIRST_ROOM
from bench.receiver import Receiver

log = logging.getLogger("bench.recording")

FRAME = 160  # 20 ms at 8 kHz
LOUD = 2048  # a 20 ms frame of the room's mix whose peak is at least this carries the tone


@dataclass
class RecordingPlan:
    rooms: int = 100
    room_size: int = 10
    record: tuple[int, ...] = (50, 100)  # rooms recorded in each recorded window (cumulative)
    rounds: int = 3  # plain, then per round: the recorded windows, all stopped, plain
    rate: float = 50.0
    window_s: float = 10.0
    settle_s: float = 3.0
    concurrency: int = 10  # REST requests in flight at once


def _dir_bytes(path: Path) -> int:
    total = 0
    if path.is_dir():
        for f in path.iterdir():
            try:
                total += f.stat().st_size
            except OSError:
                continue
    return total


async def _each(items: list[Any], limit: int, fn: Any) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(item: Any) -> Any:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


async def _until(pred: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return pred()


def wav_loudness(data: bytes) -> dict[str, Any]:
    """Length and how much of a recording carries sound: the share of 20 ms frames whose peak
    reaches LOUD, over the file without its first and last second (joins and stops)."""
    with wave.open(io.BytesIO(data)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    if width != 2 or channels != 1:
        return {"rate": rate, "width": width, "channels": channels, "seconds": 0.0,
                "loud_ratio": 0.0}
    samples = np.frombuffer(frames, dtype="<i2").astype(np.int32)
    seconds = len(samples) / rate
    body = samples[rate:-rate] if len(samples) > 3 * rate else samples
    n = len(body) // FRAME
    peaks = np.abs(body[:n * FRAME].reshape(n, FRAME)).max(axis=1) if n else np.array([])
    loud = float((peaks >= LOUD).mean()) if n else 0.0
    return {"rate": rate, "width": width, "channels": channels, "seconds": round(seconds, 2),
            "loud_ratio": round(loud, 3)}


async def run(gw: Gateway, workdir: Path, tone: Path, plan: RecordingPlan,
              recordings_dir: Path, app: Receiver,
              stop_gateway: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Run the mode; `stop_gateway` runs at the end while SIPp is still up (it answers the
    gateway's BYEs), then SIPp is stopped."""
    calls = plan.rooms * plan.room_size
    numbers = [str(FIRST_ROOM + i % plan.rooms) for i in range(calls)]
    out: dict[str, Any] = {"plan": asdict(plan), "calls": calls, "problems": []}
    problems: list[str] = out["problems"]
    callers = await stages.place_callers(gw, workdir / "callers", tone, numbers, plan.rate,
                                         sipp.media_port(0), calls)
    try:
        problems += stages.setup_problems(callers, calls, calls)
        out["answered"] = callers.answered
        if problems:
            out["failed_calls"] = callers.failed
            return out
        rooms = sorted((await gw.participants()).keys())
        await asyncio.sleep(plan.settle_s)

        def files() -> int:
            return _dir_bytes(recordings_dir)

        windows: list[stages.Stage] = [await stages.measure(gw, "plain", plan.window_s, files)]
        done: list[tuple[str, str]] = []  # (room, recording id) of every recording made

        async def start(room: str) -> tuple[str, int, Any]:
            status, body = await gw.call_api("POST", f"/v1/conferences/{room}/recordings", {})
            return room, status, body

        for rnd in range(1, plan.rounds + 1):
            started: dict[str, str] = {}  # room -> recording id, this round
            for k in plan.record:
                todo = [r for r in rooms if r not in started][:max(0, k - len(started))]
                for room, status, body in await _each(todo, plan.concurrency, start):
                    if status == 201 and isinstance(body, dict):
                        started[room] = body["id"]
                    else:
                        problems.append(f"POST recordings {room}: {status} {body}")
                await asyncio.sleep(plan.settle_s)
                st = await stages.measure(gw, f"{len(started)} rooms recorded, round {rnd}",
                                          plan.window_s, files)
                st.extra.update(recorded_rooms=len(started), round=rnd)
                windows.append(st)

            async def stop(room: str, started: dict[str, str] = started) -> tuple[str, int, Any]:
                status, body = await gw.call_api(
                    "DELETE", f"/v1/conferences/{room}/recordings/{started[room]}")
                return room, status, body

            for room, status, body in await _each(list(started), plan.concurrency, stop):
                if status != 200 or not isinstance(body, dict) or \
                        body.get("status") != "completed":
                    problems.append(f"DELETE recording {room}: {status} {body}")
            done += started.items()
            await asyncio.sleep(plan.settle_s)
            windows.append(await stages.measure(gw, f"plain, after round {rnd}", plan.window_s,
                                                files))
        out["failed_calls"] = callers.failed
        out["sipp_alive"] = callers.alive
        if out["failed_calls"]:
            problems.append(f"{out['failed_calls']} failed calls")
        if not callers.alive:
            problems.append("SIPp exited: " + callers.inst.errors()[-300:])
        for w in windows:
            if w.in_rooms < calls:
                problems.append(f"{w.label}: gateway lists {w.in_rooms}/{calls} in rooms")
        out["windows"] = [w.as_dict() for w in windows]
        out["derived"] = derive(windows)
        out["files"] = await _audit_files(gw, done, plan.concurrency)
        # recording.completed goes to the event_url (no status_url in these rooms)
        await _until(lambda: app.events["recording.completed"] >= len(done), 15)
        out["recording_completed_events"] = app.events["recording.completed"]
        if out["recording_completed_events"] != len(done):
            problems.append(f"{out['recording_completed_events']} recording.completed events "
                            f"for {len(done)} recordings")
        bad = [f for f in out["files"]["each"] if not f["ok"]]
        if bad:
            problems.append(f"{len(bad)} recordings not completed or without the tone: "
                            f"{bad[:3]}")
    finally:
        out.setdefault("failed_calls", callers.failed)
        await stop_gateway()
        callers.stop()
    return out


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 4) if values else 0.0


def derive(windows: list[stages.Stage]) -> dict[str, Any]:
    """Added CPU and disk writes of the recorded windows, per number of rooms recorded.

    Each recorded window is compared with the plain windows just before and just after its
    round (their mean); over the rounds the median is the figure, min and max its spread.
    """
    plains = [i for i, w in enumerate(windows) if "recorded_rooms" not in w.extra]
    per_k: dict[int, list[dict[str, float]]] = {}
    for i, w in enumerate(windows):
        if "recorded_rooms" not in w.extra:
            continue
        before = windows[max(p for p in plains if p < i)]
        after = windows[min(p for p in plains if p > i)]
        plain = stages.reference(before, after)["cpu_cores"]
        k = int(w.extra["recorded_rooms"])
        clock_ref = (before.threads.get("clock", 0.0) + after.threads.get("clock", 0.0)) / 2
        per_k.setdefault(k, []).append({
            "ref": plain, "added": w.cpu_cores - plain,
            "clock_added": w.threads.get("clock", 0.0) - clock_ref,
            "growth": float(w.extra.get("file_growth_bytes_per_s", 0.0)),
            "write_bytes": w.write_bytes_per_s})
    rows = []
    for k, runs in sorted(per_k.items()):
        added = [r["added"] for r in runs]
        ref = _median([r["ref"] for r in runs])
        growth = _median([r["growth"] for r in runs])
        rows.append({
            "recorded_rooms": k, "rounds": len(runs), "plain_cores": ref,
            "added_cores": _median(added),
            "added_cores_min": round(min(added), 4), "added_cores_max": round(max(added), 4),
            "added_ms_per_room_s": round(1000 * _median(added) / k, 3),
            "added_ms_per_room_s_min": round(1000 * min(added) / k, 3),
            "added_ms_per_room_s_max": round(1000 * max(added) / k, 3),
            "added_pct": round(100 * _median(added) / ref, 1) if ref else 0.0,
            "clock_thread_added_ms_per_room_s": round(
                1000 * _median([r["clock_added"] for r in runs]) / k, 3),
            "file_growth_bytes_per_s": growth,
            "file_growth_bytes_per_room_s": round(growth / k, 1),
            "write_bytes_per_s": _median([r["write_bytes"] for r in runs]),
        })
    first, last = windows[plains[0]], windows[plains[-1]]
    return {"plain": stages.reference(first, last), "recorded": rows}


async def _audit_files(gw: Gateway, done: list[tuple[str, str]],
                       limit: int) -> dict[str, Any]:
    """Every recording as the API serves it: completed, its WAV carries the callers' tone."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        async def one(item: tuple[str, str]) -> dict[str, Any]:
            room, rec_id = item
            async with s.get(f"{gw.base}/v1/recordings/{rec_id}") as r:
                meta = await r.json()
            async with s.get(f"{gw.base}/v1/recordings/{rec_id}/audio") as r:
                data = await r.read() if r.status == 200 else b""
                audio_status = r.status
            loud = wav_loudness(data) if data else {"seconds": 0.0, "loud_ratio": 0.0}
            ok = (meta.get("status") == "completed" and audio_status == 200
                  and loud["loud_ratio"] >= 0.9)
            return {"room": room, "id": rec_id, "status": meta.get("status"),
                    "reason": meta.get("reason"), "duration_s": meta.get("duration_s"),
                    "bytes": len(data), **loud, "ok": ok}

        each = await _each(done, limit, one)
    return {"recordings": len(each), "ok": sum(f["ok"] for f in each),
            "min_loud_ratio": min((f["loud_ratio"] for f in each), default=0.0),
            "each": each}


def summary_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    rec = r.get("recording") or {}
    rows: list[dict[str, Any]] = []
    plan = rec.get("plan", {})
    rows.append({"measure": f"Failed calls ({rec.get('calls', 0)} SIPp legs, "
                            f"{plan.get('rooms', 0)} rooms of {plan.get('room_size', 0)})",
                 "target": "0", "result": str(rec.get("failed_calls", "?")),
                 "met": rec.get("failed_calls") == 0})
    d = rec.get("derived")
    if d:
        for row in d["recorded"]:
            rows.append({
                "measure": f"Added gateway CPU per recorded room ({row['recorded_rooms']} "
                           f"rooms recorded, median of {row['rounds']} rounds)",
                "target": "-",
                "result": f"{row['added_ms_per_room_s']:.3f} ms/s per room "
                          f"(rounds {row['added_ms_per_room_s_min']:.3f} to "
                          f"{row['added_ms_per_room_s_max']:.3f}); the gateway "
                          f"{row['added_pct']:+.1f}% over {row['plain_cores']:.3f} cores "
                          f"unrecorded; clock thread "
                          f"{row['clock_thread_added_ms_per_room_s']:.3f} ms/s per room",
                "met": None})
            rows.append({
                "measure": f"Disk write rate ({row['recorded_rooms']} rooms recorded)",
                "target": "-",
                "result": f"{row['file_growth_bytes_per_s'] / 1000:.1f} kB/s of WAV "
                          f"({row['file_growth_bytes_per_room_s'] / 1000:.1f} kB/s per room); "
                          f"write_bytes {row['write_bytes_per_s'] / 1000:.1f} kB/s",
                "met": None})
    files = rec.get("files")
    if files:
        rows.append({"measure": "Recordings completed and carrying the callers' tone",
                     "target": "all", "result": f"{files['ok']}/{files['recordings']}",
                     "met": files["ok"] == files["recordings"]})
    if rec.get("problems"):
        rows.append({"measure": "Problems", "target": "none",
                     "result": "; ".join(rec["problems"])[:600], "met": False})
    return rows


def markdown_lines(r: dict[str, Any]) -> list[str]:
    rec = r.get("recording") or {}
    lines: list[str] = []
    if rec.get("windows"):
        lines += ["", "Windows (same calls up, one gateway process, in this order):", "",
                  "| window | s | gateway cores | WAV growth kB/s | write_bytes kB/s | "
                  "RSS MB | in rooms | threads (cores) |",
                  "|---|---|---|---|---|---|---|---|"]
        for w in rec["windows"]:
            growth = w["extra"].get("file_growth_bytes_per_s", 0.0) / 1000
            threads = ", ".join(f"`{k}` {v:.3f}" for k, v in w["threads"].items())
            lines.append(f"| {w['label']} | {w['seconds']:g} | {w['cpu_cores']:.3f} | "
                         f"{growth:.1f} | {w['write_bytes_per_s'] / 1000:.1f} | "
                         f"{w['rss_mb']:g} | {w['in_rooms']} | {threads} |")
        d = rec["derived"]["plain"]
        lines += ["", "Each recorded window is compared with the mean of the plain windows "
                      "just before and after its round. The first and the last plain window "
                      f"differ by {d['drift_pct']:.1f}%."]
    return lines
