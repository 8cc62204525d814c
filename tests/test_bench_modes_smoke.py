"""The benchmark's feature modes at toy scale, so they cannot rot.

Only the plumbing is asserted (calls answered, recordings complete and carrying the tone,
features applied and the announcement heard, numbers present), never a performance
figure: this runs on loaded CI boxes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.sip


def _bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench", *args, "--window", "2", "--settle", "1", "--rounds", "1",
           "--rate", "20", "--no-markdown", "--label", "smoke", "--results-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=55)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [path] = tmp_path.glob("*.json")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def test_recording_mode_at_toy_scale(tmp_path: Path) -> None:
    r = _bench(tmp_path, "--mode", "recording", "--rooms", "2", "--room-size", "3",
               "--record", "1", "--record", "2")
    rec = r["recording"]
    assert rec["problems"] == [] and rec["failed_calls"] == 0, rec["problems"]
    assert [w["label"] for w in rec["windows"]] == [
        "plain", "1 rooms recorded, round 1", "2 rooms recorded, round 1",
        "plain, after round 1"]
    assert all(w["in_rooms"] == 6 for w in rec["windows"]), rec["windows"]
    assert [row["recorded_rooms"] for row in rec["derived"]["recorded"]] == [1, 2]
    # WAV files grow while recorded (16 kB/s per room at 8 kHz), not before or after
    growth = [w["extra"]["file_growth_bytes_per_s"] for w in rec["windows"]]
    assert growth[0] == 0 and growth[1] > 0 and growth[2] > 0 and growth[3] == 0, growth
    files = rec["files"]
    assert files["recordings"] == files["ok"] == 2, files
    assert all(f["status"] == "completed" and f["reason"] == "api" for f in files["each"])
    assert rec["recording_completed_events"] == 2
    assert r["recording_gateway"]["exit_code"] == 0, r["recording_gateway"]
    assert not r["recording_gateway"]["error_lines"], r["recording_gateway"]
    assert {row["measure"].split(" (")[0] for row in r["summary"]["rows"]} >= {
        "Failed calls", "Added gateway CPU per recorded room", "Disk write rate"}


def test_room_features_mode_at_toy_scale(tmp_path: Path) -> None:
    r = _bench(tmp_path, "--mode", "room-features", "--room-size", "6")
    f = r["room_features"]
    assert f["problems"] == [] and f["failed_calls"] == 0, f["problems"]
    assert f["feature_answers"] == {"hold": 200, "speak_to": 200, "announcement": 202}
    assert f["state_during"]["hold"] is True and len(f["state_during"]["speak_to"]) == 1
    heard = [w["extra"]["probe_hears_announcement"] for w in f["windows"]]
    assert heard[0] == 0 and heard[1] >= 0.9 and heard[2] == 0, heard  # only while it plays
    assert all(w["in_rooms"] == 7 for w in f["windows"]), f["windows"]  # 6 SIPp + the probe
    assert f["derived"]["rounds"] == 1 and f["derived"]["ratio"] > 0
    assert r["room_features_gateway"]["exit_code"] == 0, r["room_features_gateway"]
    assert not r["room_features_gateway"]["error_lines"], r["room_features_gateway"]


def test_cluster_mode_at_toy_scale(tmp_path: Path) -> None:
    """Redis + two nodes per phase, rooms of 3 split 2 + 1, one ramp step, 2 bursts."""
    cmd = [sys.executable, "-m", "bench", "--mode", "cluster", "--room-size", "3",
           "--remote", "1", "--compare-rooms", "2", "--steps", "1", "--rooms-per-step", "2",
           "--bursts", "2", "--rounds", "1", "--window", "1.5", "--settle", "1",
           "--rate", "20", "--no-markdown", "--label", "smoke",
           "--results-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [path] = tmp_path.glob("cluster-*.json")
    r = json.loads(path.read_text())
    c = r["cluster"]
    cmp_ = c["compare"]
    assert cmp_["problems"] == [], cmp_["problems"]
    assert [w["label"] for w in cmp_["windows"]] == [
        "idle", "compare 1 local", "compare 2 split", "compare 3 split", "compare 4 local"]
    # local rooms: all 3 callers on one node, one room per node; split: 2 on a, 1 on b
    assert [b["expected"] for b in cmp_["blocks"]][:2] == [
        {"40000": {"a": 3, "b": 0}, "40001": {"a": 0, "b": 3}},
        {"40002": {"a": 2, "b": 1}, "40003": {"a": 2, "b": 1}}]
    assert [b["calls"] for b in cmp_["blocks"]] == [{"a": 3, "b": 3}, {"a": 4, "b": 2},
                                                   {"a": 4, "b": 2}, {"a": 3, "b": 3}]
    assert all(b["failed"] == 0 and b["answered"] == 6 for b in cmp_["blocks"])
    d = cmp_["derived"]
    assert d["remote_participants"] == 2 and d["cascade_legs"] == 2
    assert len(d["added_cores"]["local"]) == len(d["added_cores"]["split"]) == 2
    [step] = c["ramp"]["steps"]
    assert step["ok"], step["why"]
    assert step["failed"] == 0 and step["answered"] == step["calls"] == 6
    assert step["legs_per_node"] == {"a": 4, "b": 2}
    assert step["owner"] in ("a", "b") and step["probe_heard_owner"] >= 0.9
    assert step["redis_ops_setup"] > 0 and step["window"]["redis_ops_per_s"] > 0
    dl = c["delay"]
    assert dl["bursts"]["one_node"] >= 1 and dl["bursts"]["cascade"] >= 1
    assert len(dl["added_per_round_ms"]) == 1
    for phase in ("compare", "ramp", "delay"):
        for node, stop in c[f"{phase}_nodes"].items():
            assert stop["exit_code"] == 0 and not stop["error_lines"], (phase, node, stop)
    assert {row["measure"].split(" (")[0] for row in r["summary"]["rows"]} >= {
        "Legs on 2 nodes, rooms split 2 + 1, zero failed calls, all listed, cascade heard",
        "Extra gateway CPU per remote participant", "Mouth-to-ear delay a cascade adds"}
    from bench import report

    block = report.markdown(r)
    assert "bench:cluster:begin" in block and "CPU comparison" in block, block
    assert f"bench/results/{path.stem}.json" in block


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` now (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(text[text.rindex(")") + 2:].split()[1])
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in out:
                out.add(child)
                todo.append(child)
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cluster_mode_interrupted_stops_everything(tmp_path: Path, sig: signal.Signals) -> None:
    """Interrupted with nodes, redis-server and SIPp up: every one of them is stopped."""
    cmd = [sys.executable, "-m", "bench", "--mode", "cluster", "--only", "ramp",
           "--room-size", "2", "--remote", "1", "--steps", "1", "--rooms-per-step", "1",
           "--window", "8", "--settle", "1", "--rate", "20", "--no-markdown",
           "--results-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 40
        seen: set[int] = set()
        names: set[str] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            seen |= _children(proc.pid)
            names = {_comm(p) for p in seen}
            if "sipp" in names and "redis-server" in names:
                break
            time.sleep(0.2)
        assert {"sipp", "redis-server"} <= names and len(seen) >= 4, (names, seen)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # the test failed: still nothing may be left behind
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for p in seen | _children(proc.pid):
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err
    assert not [p for p in seen if Path(f"/proc/{p}").exists()
                and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z"], seen
    assert not list(tmp_path.glob("*.json"))
