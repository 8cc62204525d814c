"""`python -m bench.syscalls`: the parsing of perf's counts, and the whole mode at toy scale.

The toy run asserts the harness's plumbing (calls answered on both servers, packets
counted, every received packet read once), never a time: it runs on loaded CI boxes.
The counts per packet are the kernel's, so "one recvfrom per packet" and "no epoll_ctl
per packet" hold at any load with sip/build/patches/0002 and 0003 applied.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bench import syscalls
from tests.harness import ROOT

PERF_OUTPUT = """\
161363,,raw_syscalls:sys_enter,20016583118,100.00,,
58853,,syscalls:sys_enter_recvfrom,20016583118,100.00,,
<not counted>,,syscalls:sys_enter_recvmsg,0,100.00,,
30122,,syscalls:sys_enter_sendto,20016583118,100.00,,
13723,,syscalls:sys_enter_epoll_wait,20016583118,100.00,,
57626,,syscalls:sys_enter_epoll_ctl,20016583118,100.00,,
30040,,syscalls:sys_exit_recvfrom,20016583118,100.00,,
not a counter line
,,,
"""


def test_parse_perf_reads_every_counter_and_the_packets() -> None:
    counts = syscalls.parse_perf(PERF_OUTPUT)
    assert counts == {"all": 161363, "recvfrom": 58853, "recvmsg": 0, "sendto": 30122,
                      "epoll_wait": 13723, "epoll_ctl": 57626, "packets": 30040}


def test_per_packet_divides_by_packets_received_and_survives_none() -> None:
    pp = syscalls.per_packet(syscalls.parse_perf(PERF_OUTPUT))
    assert pp["recvfrom"] == pytest.approx(1.959, abs=0.001)
    assert pp["epoll_ctl"] == pytest.approx(1.918, abs=0.001)
    assert "packets" not in pp
    assert syscalls.per_packet({"all": 10, "packets": 0}) == {"all": 0.0}
    assert syscalls.per_packet({}) == {}


def test_perf_events_filter_only_the_successful_recvfrom() -> None:
    events = syscalls.perf_events()
    assert events[-4:] == ["-e", "syscalls:sys_exit_recvfrom", "--filter", "ret > 0"]
    assert "raw_syscalls:sys_enter" in events


def _perf_can_count_syscalls() -> bool:
    perf = shutil.which("perf")
    if not perf:
        return False
    probe = subprocess.run([perf, "stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"],
                           capture_output=True, text=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.sip
def test_syscalls_mode_runs_gateway_and_pjsua_at_toy_scale(tmp_path: Path) -> None:
    if not _perf_can_count_syscalls():
        pytest.skip("this kernel does not let perf count syscall tracepoints here")
    assert (Path(sysconfig.get_paths()["scripts"]) / "pjsua").exists(), "run `make setup`"
    cmd = [sys.executable, "-m", "bench.syscalls", "--legs", "4", "--room-size", "2",
           "--rate", "10", "--seconds", "3", "--settle", "1", "--results-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [path] = tmp_path.glob("syscalls-*.json")
    rows = json.loads(path.read_text())["rows"]
    assert [r["target"] for r in rows] == ["gateway", "pjsua"]
    for r in rows:
        assert r["answered"] == 4 and r["failed"] == 0, r
        # 4 callers x 50 packets/s x 3 s: most of them arrived and were counted
        assert r["counts"]["packets"] > 300, r
        pp = r["per_packet"]
        # the patches' effect, a count and not a time: one read per packet, no re-arming
        assert pp["recvfrom"] < 1.2, r
        assert pp["epoll_ctl"] < 0.2, r
    assert "| gateway |" in proc.stdout and "| pjsua |" in proc.stdout
