"""What the feature modes share: rooms of SIPp callers held up, and measured windows.

A feature mode (bench/recording.py, bench/roomfeatures.py) holds one load steady and
measures the gateway's CPU in windows before, during and after a feature is switched on,
all in one gateway process, so the comparison is paired: the same calls, the same
process, minutes apart. The plain window is taken before and again after the feature
window; their mean is the reference, and their difference shows how much the box drifted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import sipp
from bench.gateway import Gateway, free_port
from bench.load import HOLD_MS, wait_answered
from bench.procstat import Sample, Window, write_bytes


@dataclass
class Stage:
    """One measured window of the gateway with the calls up."""

    label: str
    seconds: float
    cpu_cores: float
    threads: dict[str, float]
    rss_mb: float
    write_bytes_per_s: float  # /proc/<pid>/io write_bytes over the window
    in_rooms: int  # participants the gateway lists at the end of the window
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def measure(gw: Gateway, label: str, seconds: float,
                  files_bytes: Callable[[], int] | None = None) -> Stage:
    """The gateway's CPU, RSS and storage writes over `seconds` (and file growth if asked)."""
    f0 = files_bytes() if files_bytes else 0
    w0 = write_bytes(gw.pid)
    s0 = Sample.take(gw.pid)
    await asyncio.sleep(seconds)
    s1 = Sample.take(gw.pid)
    w1 = write_bytes(gw.pid)
    f1 = files_bytes() if files_bytes else 0
    win = Window(s0, s1)
    in_rooms = sum((await gw.participants()).values())
    stage = Stage(label=label, seconds=round(win.seconds, 2), cpu_cores=round(win.cpu_share, 4),
                  threads=win.by_thread(), rss_mb=round(s1.rss_kb / 1024, 1),
                  write_bytes_per_s=round((w1 - w0) / win.seconds, 1), in_rooms=in_rooms)
    if files_bytes:
        stage.extra["file_growth_bytes_per_s"] = round((f1 - f0) / win.seconds, 1)
    return stage


def reference(before: Stage, after: Stage) -> dict[str, float]:
    """The plain reference: mean of the windows before and after, and their spread."""
    mean = (before.cpu_cores + after.cpu_cores) / 2
    drift = abs(after.cpu_cores - before.cpu_cores) / mean * 100 if mean else 0.0
    return {"cpu_cores": round(mean, 4), "drift_pct": round(drift, 1)}


@dataclass
class Callers:
    """One SIPp process placing `calls` calls (dialing `numbers` in order) and holding them."""

    inst: sipp.Instance
    answered: int = 0
    in_rooms: int = 0

    @property
    def failed(self) -> int:
        return self.inst.counter("FailedCall(C)")

    @property
    def alive(self) -> bool:
        return self.inst.proc.poll() is None

    def stop(self) -> None:
        self.inst.stop()


async def place_callers(gw: Gateway, workdir: Path, tone: Path, numbers: list[str],
                        rate: float, media_port: int, expected_in_rooms: int) -> Callers:
    """Start SIPp and wait until every call is answered and listed in its room."""
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = sipp.rooms_scenario(workdir, tone)
    inst = sipp.start(workdir, f"127.0.0.1:{gw.sip_port}", scenario,
                      sipp.dial_plan(workdir / "dial.csv", numbers), calls=len(numbers),
                      rate=rate, hold_ms=HOLD_MS, sip_port=free_port(),
                      media_port=media_port, control_port=free_port())
    callers = Callers(inst)
    deadline = time.monotonic() + len(numbers) / rate + 30
    callers.answered, callers.in_rooms = await wait_answered(inst, gw, expected_in_rooms,
                                                             deadline)
    return callers


def setup_problems(callers: Callers, calls: int, expected_in_rooms: int) -> list[str]:
    out = []
    if callers.failed:
        out.append(f"{callers.failed} failed calls")
    if callers.answered < calls:
        out.append(f"only {callers.answered}/{calls} calls answered")
    if callers.in_rooms < expected_in_rooms:
        out.append(f"gateway lists {callers.in_rooms}/{expected_in_rooms} in rooms")
    if not callers.alive:
        out.append("SIPp exited: " + callers.inst.errors()[-300:])
    return out
