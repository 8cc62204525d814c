"""Driving SIPp: run a scenario against the gateway and read its statistics."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench import procstat

SCENARIOS = Path(__file__).resolve().parent / "scenarios"

# SIPp binds 4 media ports (audio and video RTP/RTCP) per process, from its -mp port. They sit
# in 10000-11999, below the gateway's random RTP range in configs/bench.yaml (12000-19999): a
# SIPp base inside that range was taken by a gateway stream now and then and the whole step
# failed ("Unable to bind video RTP socket ... Address already in use").
MEDIA_BASE = 10000


def media_port(slot: int) -> int:
    """SIPp's -mp for its slot-th concurrent process of a run."""
    if not 0 <= slot < 500:
        raise ValueError(f"SIPp media slot {slot} out of 0..499")
    return MEDIA_BASE + 4 * slot


def media_slot_free(slot: int) -> bool:
    """Whether the 4 media ports of a SIPp slot can be bound now: another bench run on this
    machine may hold them, and SIPp then fails (exits, or fails every call with "Unable to
    bind")."""
    base = media_port(slot)
    socks: list[socket.socket] = []
    try:
        for port in range(base, base + 4):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for sock in socks:
            sock.close()


def alaw_tone(path: Path, freq_hz: int = 1000, seconds: float = 2.0, volume: float = 0.05) -> Path:
    """An 8 kHz A-law WAV tone for SIPp's rtp_stream (made with sox)."""
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-e", "a-law", str(path),
                    "synth", str(seconds), "sine", str(freq_hz), "vol", str(volume)], check=True)
    return path


def scenario(workdir: Path, audio: Path, name: str = "uac_conference.xml") -> Path:
    out = workdir / name
    out.write_text((SCENARIOS / name).read_text().replace("@AUDIO@", str(audio)))
    return out


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    retransmissions: int
    stats_rows: list[dict[str, str]]
    errors: str

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.successful > 0


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if not path:
        raise RuntimeError("sipp not found: run `make setup` (Debian package sip-tester)")
    return path


async def run(workdir: Path, target: str, scenario_file: Path, *, service: str, calls: int,
              rate: float, hold_ms: int, media_port: int, limit: int | None = None,
              transport: str = "u1", timeout_s: float = 600, stat_period_s: int = 1,
              extra: tuple[str, ...] = ()) -> SippResult:
    """Run SIPp to completion: `calls` calls at `rate` per second, each held `hold_ms`."""
    stats = workdir / f"sipp-{media_port}.csv"
    errors = workdir / f"sipp-{media_port}-errors.log"
    args = [sipp_binary(), "-sf", str(scenario_file), target, "-s", service,
            "-m", str(calls), "-l", str(limit or calls), "-r", str(rate),
            "-d", str(hold_ms), "-i", "127.0.0.1", "-mi", "127.0.0.1", "-mp", str(media_port),
            "-p", "0", "-t", transport, "-nostdin", "-trace_stat", "-stf", str(stats),
            "-fd", str(stat_period_s), "-trace_err", "-error_file", str(errors),
            "-max_recv_loops", "10000", "-max_sched_loops", "10000", *extra]
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=workdir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        err = b"timeout"
    rows = list(csv.DictReader(stats.open(), delimiter=";")) if stats.exists() else []
    last = rows[-1] if rows else {}
    return SippResult(
        returncode=proc.returncode or 0,
        successful=int(last.get("SuccessfulCall(C)", 0)),
        failed=int(last.get("FailedCall(C)", 0)),
        retransmissions=int(last.get("Retransmissions(C)", 0)),
        stats_rows=rows,
        errors=(errors.read_text(errors="replace")[-3000:] if errors.exists() else "")
        + err.decode(errors="replace")[-1000:],
    )


# -- long-running instances for the benchmark's ramp ------------------------------------
def rooms_scenario(workdir: Path, audio: Path) -> Path:
    """The conference caller, but each call dials the number on its line of an -inf file.

    Derived from uac_conference.xml so there is one caller to maintain: only the dialed
    user changes, from `-s <service>` (one number per SIPp process) to `[field0]`.
    """
    text = (SCENARIOS / "uac_conference.xml").read_text().replace("@AUDIO@", str(audio))
    out = workdir / "uac_rooms.xml"
    out.write_text(text.replace("[service]", "[field0]"))
    return out


def dial_plan(path: Path, numbers: list[str]) -> Path:
    """An -inf file: call i dials numbers[i] (SEQUENTIAL: in order, one line per call)."""
    path.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
    return path


@dataclass
class Instance:
    """One SIPp process placing and holding calls in the background."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    calls: int

    def stats(self) -> dict[str, str]:
        """The last row of SIPp's -trace_stat CSV (written every second)."""
        path = self.workdir / "stats.csv"
        if not path.exists():
            return {}
        rows = list(csv.DictReader(path.open(), delimiter=";"))
        return rows[-1] if rows else {}

    def counter(self, name: str) -> int:
        value = self.stats().get(name, "0")
        return int(value) if value.isdigit() else 0

    def setup_ms(self) -> list[float]:
        """INVITE -> 200 OK of every answered call (SIPp's rtd, whole milliseconds)."""
        out: list[float] = []
        for path in self.workdir.glob("*_rtt.csv"):
            for row in csv.DictReader(path.open(), delimiter=";"):
                with contextlib.suppress(KeyError, ValueError):
                    out.append(float(row["response_time_ms"]))
        return out

    def refusals(self) -> dict[str, int]:
        """The final responses >= 300 SIPp logged as unexpected, counted by status line and
        Warning header (bench.sipp.refusals)."""
        paths = list(self.workdir.glob("*errors.log"))
        if not paths:
            return {}
        with paths[0].open("rb") as f:
            return refusals(f.read(MAX_ERRORS_READ).decode(errors="replace"))

    def errors(self) -> str:
        paths = list(self.workdir.glob("*errors.log"))
        return paths[0].read_text(errors="replace")[-2000:] if paths else ""

    def stop(self) -> None:
        procstat.terminate(self.proc)


MAX_ERRORS_READ = 4 << 20  # bytes of SIPp's error log read for refusals()
MAX_REFUSAL_KINDS = 20
_STATUS = re.compile(r"SIP/2\.0 ([3-6]\d\d) ([^\r\n']{0,120})")
_WARNING = re.compile(r"^Warning\s*:\s*([^\r\n']{0,200})", re.IGNORECASE | re.MULTILINE)


def refusals(text: str) -> dict[str, int]:
    """`"500 Answer URL Error [399 minivoice \"answer_url_error\"]": n` for the final
    responses >= 300 in SIPp's error log text: the reason phrase and the gateway's Warning
    (its cause) say why a call failed, where SIPp's counters only say that it did."""
    out: dict[str, int] = {}
    matches = list(_STATUS.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        w = _WARNING.search(text, m.end(), min(end, m.end() + 4000))
        key = f"{m.group(1)} {m.group(2).strip()}" + (f" [{w.group(1).strip()}]" if w else "")
        if key in out or len(out) < MAX_REFUSAL_KINDS:
            out[key] = out.get(key, 0) + 1
    return out


def start(workdir: Path, target: str, scenario_file: Path, inf: Path, *, calls: int,
          rate: float, hold_ms: int, sip_port: int, media_port: int,
          control_port: int) -> Instance:
    """Start SIPp placing `calls` calls at `rate`/s, each held `hold_ms`, dialing from `inf`.

    Ports are explicit: with -p 0 SIPp takes 5060 and 8888, which `make run` and other
    SIPp processes on this machine may hold.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    args = [sipp_binary(), "-sf", str(scenario_file), target, "-inf", str(inf),
            "-m", str(calls), "-l", str(calls), "-r", str(rate), "-d", str(hold_ms),
            "-i", "127.0.0.1", "-mi", "127.0.0.1", "-mp", str(media_port),
            "-p", str(sip_port), "-cp", str(control_port), "-t", "u1", "-nostdin",
            "-trace_stat", "-stf", str(workdir / "stats.csv"), "-fd", "1",
            "-trace_rtt", "-rtt_freq", "1", "-trace_err",
            "-max_recv_loops", "10000", "-max_sched_loops", "10000"]
    proc = subprocess.Popen(args, cwd=workdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=(workdir / "stderr.log").open("wb"))
    return Instance(proc, workdir, calls)
