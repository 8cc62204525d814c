"""CPU and memory of one process (the gateway) from /proc, nothing else.

The load generators run on the same two cores, so a whole-machine figure would
charge their cost to the gateway. utime+stime of the gateway's pid (all its
threads) over the steady window is the gateway's cost; the per-thread split
says which thread it goes to (SIP/asyncio vs pjmedia's clock and I/O).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _cpu_s(stat_path: Path) -> tuple[str, float]:
    text = stat_path.read_text()
    # comm is in parentheses and may contain spaces: split after the last ')'
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    # fields[11], fields[12] are utime, stime (stat fields 14 and 15)
    return comm, (int(fields[11]) + int(fields[12])) * TICK_S


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    cpu_s: float
    rss_kb: int
    threads: dict[str, float]  # "comm/tid" -> CPU seconds

    @classmethod
    def take(cls, pid: int) -> Sample:
        proc = Path(f"/proc/{pid}")
        at = time.monotonic()
        _, cpu = _cpu_s(proc / "stat")
        rss = 0
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        threads: dict[str, float] = {}
        for task in (proc / "task").iterdir():
            try:
                comm, t = _cpu_s(task / "stat")
            except (OSError, ValueError):
                continue  # the thread ended between listdir and read
            threads[f"{comm}/{task.name}"] = t
        return cls(at, cpu, rss, threads)


@dataclass(frozen=True)
class Window:
    """CPU used by the gateway between two samples."""

    start: Sample
    end: Sample

    @property
    def seconds(self) -> float:
        return self.end.at - self.start.at

    @property
    def cpu_s(self) -> float:
        return self.end.cpu_s - self.start.cpu_s

    @property
    def cpu_share(self) -> float:
        """Cores busy on average (1.0 = one core fully)."""
        return self.cpu_s / self.seconds if self.seconds > 0 else 0.0

    def ms_per_leg_second(self, legs: int) -> float:
        return 1000 * self.cpu_s / (legs * self.seconds) if legs and self.seconds else 0.0

    def by_thread(self) -> dict[str, float]:
        """Cores busy per thread name (threads with the same name summed)."""
        out: dict[str, float] = {}
        for key, t in self.end.threads.items():
            name = key.split("/", 1)[0]
            used = t - self.start.threads.get(key, 0.0)
            out[name] = out.get(name, 0.0) + used / self.seconds
        return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}


def write_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage (/proc/<pid>/io `write_bytes`).

    Counted when pages are dirtied, so page-cache writes count at once; socket traffic
    (RTP) does not count, unlike `wchar`. 0 where the kernel keeps no I/O accounting.
    """
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def terminate(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> int | None:
    """SIGTERM a child process, SIGKILL it if it is still there after `grace_s`, reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
