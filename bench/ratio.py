"""The floor phase of `python -m bench`: the gateway's CPU per leg-second over pjproject's own.

The same SIPp load (rooms of G.711 callers sending RTP for the whole window) is placed on
the gateway (rooms mixed in pjmedia's bridge) and then on pjproject's C app `pjsua
--auto-answer --auto-loop --null-audio` of the same build (each call's RTP looped back, no
mixing), one after the other in the same run: the ratio is what the gateway costs over the
floor the library itself sets. `--floor-build DIR` (repeatable) adds the pjsua app of other
builds made by sip/build/build_pjsua2.sh, e.g. one without this project's patches, so the
ratio can also be read against an unpatched floor. CPU is utime+stime of the server's pid
over the window (/proc); nothing is attached to the process (bench.syscalls counts system
calls with perf; this phase does not, so its numbers carry no tracing cost).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import sipp, syscalls

log = logging.getLogger("bench.ratio")


async def run(work: Path, tone: Path, *, legs: int, room_size: int, rate: float,
              seconds: float, floor_builds: list[Path]) -> dict[str, Any]:
    args = argparse.Namespace(legs=legs, room_size=room_size, rate=rate, seconds=seconds,
                              settle=2.0, media_port=sipp.media_port(300),
                              pjsua_rtp_port=14000, perf=False)
    installed = syscalls.Build.installed()
    gw = await syscalls.measure_gateway(installed, work / "ratio-gateway", tone, args)
    floors = [await syscalls.measure_pjsua(installed, work / "ratio-pjsua", tone, args)]
    for i, path in enumerate(floor_builds):
        floors.append(await syscalls.measure_pjsua(syscalls.Build.from_dir(path),
                                                   work / f"ratio-pjsua-{i}", tone, args))
    rows = []
    for m in [gw, *floors]:
        row = {k: v for k, v in asdict(m).items() if k != "counts"}
        if m is not gw:
            row["gateway_over_this"] = round(gw.cpu_ms_per_leg_s / m.cpu_ms_per_leg_s, 3) \
                if m.cpu_ms_per_leg_s else None
        rows.append(row)
    log.info("ratio", extra={"legs": legs, "gateway_ms": gw.cpu_ms_per_leg_s,
                             "pjsua_ms": floors[0].cpu_ms_per_leg_s})
    return {"legs": legs, "room_size": room_size, "window_s": seconds, "servers": rows,
            "ratio": rows[1]["gateway_over_this"]}


def summary_rows(r: dict[str, Any], target: float) -> list[dict[str, Any]]:
    gw, *floors = r["servers"]
    ok = all(s["answered"] == r["legs"] and not s["failed"] for s in r["servers"])
    rows = []
    for f in floors:
        over = f["gateway_over_this"]
        # A floor that used no clock tick in the window (toy scale: a few legs for a second
        # or two) has no ratio; say so instead of dividing by zero.
        ratio_text = f"{over:g}x" if over is not None else \
            "n/a (pjsua used under one clock tick; lengthen --window)"
        rows.append({
            "measure": f"Gateway CPU per leg-second over pjsua's ({f['build']}), same load and "
                       f"run ({r['legs']} legs, rooms of {r['room_size']})",
            "target": f"<= {target:g}x",
            "result": f"{ratio_text} ({gw['cpu_ms_per_leg_s']:.3f} vs "
                      f"{f['cpu_ms_per_leg_s']:.3f} ms)" + ("" if ok else "; calls failed"),
            "met": ok and over is not None and over <= target})
    return rows
