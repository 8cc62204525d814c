"""`python -m bench.syscalls`: system calls per received RTP packet, gateway vs pjsua.

    .venv/bin/python -m bench.syscalls                       # the installed pjsua2 build
    .venv/bin/python -m bench.syscalls --build DIR --build DIR2   # builds side by side

The same SIPp load (rooms of G.711 callers sending RTP, bench/scenarios) is placed on
two servers one after the other, each with the same pjproject build:
- the gateway (`python -m gateway serve`, rooms mixed in pjmedia's bridge), and
- pjproject's own C app, `pjsua --auto-answer=200 --auto-loop --null-audio
  --clock-rate=8000` (RTP looped back per call, no mixing): the floor.
While every call is up, `perf stat` counts the server's system calls (all its threads)
from the kernel's syscall tracepoints, and the successful `recvfrom`s (`ret > 0`), which
are the packets it received; /proc gives its threads' voluntary context switches
("wakeups": each time a thread slept and had to be woken). The results are per received
packet: counts, not times, so they hardly depend on how loaded the machine is (only
epoll_wait and wakeups do a little: a busier box batches more packets per wake-up).
CPU per leg-second is printed too, for reference only. A build is a directory made by
sip/build/build_pjsua2.sh (pjsua2.py, _pjsua2*.so and the `pjsua` app of the same
source and patches); by default the one installed in this venv.
Prints a table and writes bench/results/syscalls-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import gateway, procstat, report, sipp
from bench.procstat import Sample, Window

log = logging.getLogger("bench.syscalls")

# What pjlib's ioqueue and pjmedia's clock do per packet, plus the batched variants a
# patch may switch to. "all" is every system call (raw_syscalls:sys_enter).
COUNTED = ("recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg",
           "epoll_wait", "epoll_pwait", "epoll_ctl", "futex", "clock_nanosleep", "nanosleep")
PACKETS = "packets"  # successful recvfrom: a datagram received
FIRST_ROOM = 30_000
PTIME_S = 0.02


@dataclass
class Measured:
    target: str  # "gateway" or "pjsua"
    build: str
    legs: int
    answered: int
    failed: int
    window_s: float
    counts: dict[str, int]
    cpu_ms_per_leg_s: float
    threads: dict[str, float] = field(default_factory=dict)

    @property
    def packets(self) -> int:
        return self.counts.get(PACKETS, 0)

    def per_packet(self) -> dict[str, float]:
        return per_packet(self.counts)


def per_packet(counts: dict[str, int]) -> dict[str, float]:
    """Each counted call divided by the packets received (0 when nothing arrived)."""
    n = counts.get(PACKETS, 0)
    return {k: round(v / n, 3) if n else 0.0 for k, v in counts.items() if k != PACKETS}


def perf_events() -> list[str]:
    args: list[str] = ["-e", "raw_syscalls:sys_enter"]
    for name in COUNTED:
        args += ["-e", f"syscalls:sys_enter_{name}"]
    # the filter applies to the event just before it
    return [*args, "-e", "syscalls:sys_exit_recvfrom", "--filter", "ret > 0"]


def parse_perf(text: str) -> dict[str, int]:
    """`perf stat -x,` output -> {"all": n, "recvfrom": n, ..., "packets": n}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) < 3:
            continue
        value, event = parts[0], parts[2]
        m = re.fullmatch(r"(raw_syscalls:sys_enter|syscalls:sys_(enter|exit)_(\w+))", event)
        if not m:
            continue
        if event == "raw_syscalls:sys_enter":
            key = "all"
        elif m.group(2) == "exit":
            key = PACKETS
        else:
            key = m.group(3)
        out[key] = int(value) if value.isdigit() else 0  # "<not counted>": none happened
    return out


def perf_stat(pid: int, seconds: float) -> dict[str, int]:
    perf = shutil.which("perf")
    if not perf:
        raise RuntimeError("perf not found: run `make setup` (Debian package linux-perf)")
    proc = subprocess.run([perf, "stat", "-x,", *perf_events(), "-p", str(pid), "--",
                           "sleep", str(seconds)], capture_output=True, text=True,
                          timeout=seconds + 30)
    counts = parse_perf(proc.stderr)
    if proc.returncode != 0 or "all" not in counts:
        raise RuntimeError("perf stat failed (syscall tracepoints need root or "
                           "kernel.perf_event_paranoid <= -1):\n" + proc.stderr[-1500:])
    return counts


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of all the process's threads: how often they slept.

    Each is a wake-up later; the kernel counts them, so like the syscall counts this does
    not depend on how loaded the machine is (involuntary switches, preemption, would).
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread ended between listdir and read
        m = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M)
        total += int(m.group(1)) if m else 0
    return total


@dataclass(frozen=True)
class Build:
    """A pjproject build: the gateway's pjsua2 module and the pjsua app of the same build."""

    name: str
    pjsua2_dir: Path | None  # None: the venv's own pjsua2
    pjsua: Path

    @classmethod
    def from_dir(cls, path: Path) -> Build:
        path = path.resolve()
        return cls(path.name, path, path / "pjsua")

    @classmethod
    def installed(cls) -> Build:
        """The venv's pjsua2 and the pjsua app setup installed beside it (.venv/bin/pjsua)."""
        spec = importlib.util.find_spec("pjsua2")
        if not spec or not spec.origin:
            raise RuntimeError("pjsua2 is not installed: run `make setup`")
        info = Path(spec.origin).with_name("pjsua2.BUILDINFO")
        key = re.search(r"key=(\w+)", info.read_text()) if info.exists() else None
        pjsua = Path(sysconfig.get_paths()["scripts"]) / "pjsua"
        return cls(f"installed {key.group(1) if key else '?'}", None, pjsua)


def _numbers(legs: int, room_size: int) -> list[str]:
    rooms = max(1, -(-legs // room_size))
    return [str(FIRST_ROOM + i % rooms) for i in range(legs)]


async def _load(server: str, work: Path, tone: Path, legs: int, room_size: int, rate: float,
                media_port: int) -> sipp.Instance:
    work.mkdir(parents=True, exist_ok=True)
    scenario = sipp.rooms_scenario(work, tone)
    return sipp.start(work, server, scenario,
                      sipp.dial_plan(work / "dial.csv", _numbers(legs, room_size)),
                      calls=legs, rate=rate, hold_ms=3_600_000, sip_port=gateway.free_port(),
                      media_port=media_port, control_port=gateway.free_port())


async def _wait_answered(inst: sipp.Instance, legs: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    answered = 0
    while time.monotonic() < deadline:
        answered = len(inst.setup_ms())
        if answered >= legs or inst.counter("FailedCall(C)") or inst.proc.poll() is not None:
            break
        await asyncio.sleep(0.5)
    return answered


async def _measure(target: str, build: Build, pid: int, inst: sipp.Instance, legs: int,
                   args: argparse.Namespace) -> Measured:
    answered = await _wait_answered(inst, legs, legs / args.rate + 20)
    await asyncio.sleep(args.settle)
    before, switches = Sample.take(pid), voluntary_switches(pid)
    if getattr(args, "perf", True):
        counts = await asyncio.to_thread(perf_stat, pid, args.seconds)
    else:  # CPU only (bench/ratio.py): no perf attached to the server, no tracepoint cost
        await asyncio.sleep(args.seconds)
        counts = {}
    counts["wakeups"] = voluntary_switches(pid) - switches
    win = Window(before, Sample.take(pid))
    m = Measured(target=target, build=build.name, legs=legs, answered=answered,
                 failed=inst.counter("FailedCall(C)"), window_s=round(win.seconds, 2),
                 counts=counts, cpu_ms_per_leg_s=round(win.ms_per_leg_second(legs), 3),
                 threads=win.by_thread())
    log.info("measured", extra={"target": target, "build": build.name, "legs": legs,
                                "answered": answered, "packets": m.packets,
                                **{f"per_packet_{k}": v for k, v in m.per_packet().items()
                                   if k in ("all", "recvfrom", "epoll_ctl")}})
    return m


async def measure_gateway(build: Build, work: Path, tone: Path,
                          args: argparse.Namespace) -> Measured:
    gw = await gateway.start(work / "gateway", pjsua2_dir=build.pjsua2_dir)
    inst = await _load(f"127.0.0.1:{gw.sip_port}", work / "sipp-gateway", tone, args.legs,
                       args.room_size, args.rate, args.media_port)
    try:
        return await _measure("gateway", build, gw.pid, inst, args.legs, args)
    finally:
        await asyncio.to_thread(gw.stop, 30)  # hangs up while SIPp still answers the BYEs
        inst.stop()


async def measure_pjsua(build: Build, work: Path, tone: Path,
                        args: argparse.Namespace) -> Measured:
    if not build.pjsua.exists():
        raise RuntimeError(f"no pjsua app at {build.pjsua}: run `make setup` or pass --build")
    port = gateway.free_port()
    work.mkdir(parents=True, exist_ok=True)
    cmd = [str(build.pjsua), "--auto-answer=200", "--auto-loop", "--null-audio",
           "--clock-rate=8000", "--snd-clock-rate=8000", f"--local-port={port}", "--no-tcp",
           "--ip-addr=127.0.0.1", "--bound-addr=127.0.0.1", f"--rtp-port={args.pjsua_rtp_port}",
           f"--max-calls={args.legs + 2}", "--log-level=1", "--app-log-level=1"]
    # stdin stays open and idle: with /dev/null or /dev/zero pjsua's menu loop spins
    with (work / "pjsua.log").open("wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.STDOUT)
    inst = None
    try:
        await asyncio.sleep(1.0)
        if proc.poll() is not None:
            raise RuntimeError("pjsua exited: " + (work / "pjsua.log").read_text()[-1500:])
        inst = await _load(f"127.0.0.1:{port}", work / "sipp-pjsua", tone, args.legs,
                           args.room_size, args.rate, args.media_port)
        return await _measure("pjsua", build, proc.pid, inst, args.legs, args)
    finally:
        if inst is not None:
            inst.stop()
        procstat.terminate(proc)


def table(rows: list[Measured]) -> str:
    cols = ("all", "recvfrom", "sendto", "epoll_wait", "epoll_ctl", "wakeups")
    head = ("| server | build | legs | answered | packets received | "
            + " | ".join(f"{c}/pkt" for c in cols) + " | CPU ms/leg-s (load-dependent) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for m in rows:
        pp = m.per_packet()
        lines.append(f"| {m.target} | {m.build} | {m.legs} | {m.answered} | "
                     f"{m.packets} | " + " | ".join(f"{pp.get(c, 0.0):.2f}" for c in cols)
                     + f" | {m.cpu_ms_per_leg_s:.3f} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.syscalls", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", type=Path, action="append",
                   help="a build directory (repeatable; default: the installed build)")
    p.add_argument("--legs", type=int, default=40, help="SIPp callers (40)")
    p.add_argument("--room-size", type=int, default=10, help="callers per gateway room (10)")
    p.add_argument("--rate", type=float, default=20.0, help="calls per second (20)")
    p.add_argument("--seconds", type=float, default=20.0, help="counting window (20)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds after set-up (2)")
    p.add_argument("--only", choices=["gateway", "pjsua"], action="append",
                   help="measure only these servers (repeatable)")
    p.add_argument("--media-port", type=int, default=sipp.media_port(200),
                   help="SIPp's RTP base port")
    p.add_argument("--pjsua-rtp-port", type=int, default=14000, help="pjsua's RTP base port")
    p.add_argument("--results-dir", type=Path, default=report.RESULTS)
    return p


async def run(args: argparse.Namespace) -> list[Measured]:
    builds = [Build.from_dir(d) for d in args.build] if args.build else [Build.installed()]
    targets = args.only or ["gateway", "pjsua"]
    work = Path(tempfile.mkdtemp(prefix="minivoice-syscalls-"))
    tone = sipp.alaw_tone(work / "tone.wav", 1000, 2.0, volume=0.25)
    rows: list[Measured] = []
    for i, build in enumerate(builds):
        if "gateway" in targets:
            rows.append(await measure_gateway(build, work / f"{i}-gateway", tone, args))
        if "pjsua" in targets:
            rows.append(await measure_pjsua(build, work / f"{i}-pjsua", tone, args))
    return rows


def main(argv: list[str] | None = None) -> int:
    from gateway.logs import KeyValueFormatter

    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    rows = asyncio.run(run(args))
    result: dict[str, Any] = {
        "stamp": stamp, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([".venv/bin/python -m bench.syscalls",
                             *(sys.argv[1:] if argv is None else argv)]),
        "machine": report.machine(),
        "rows": [{**asdict(m), "per_packet": m.per_packet()} for m in rows]}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"syscalls-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"result: {path}")
    return 0 if all(m.answered == m.legs and not m.failed for m in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
