"""bench.outbox at toy scale, so it cannot rot. Only its plumbing is asserted (events queued,
delivered, numbers present), never a timing: this runs on loaded CI boxes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT


def test_outbox_bench_runs_end_to_end_at_toy_scale(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "bench.outbox", "--events", "300", "--records", "300",
           "--window", "1", "--sync-events", "40", "--sync-rate", "40", "--sync-seconds", "0.5",
           "--dir", str(tmp_path), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    dead = r["dead"]
    assert dead["pending_dead_events"] == 300 and dead["loop_lag"]["samples"] > 0, dead
    assert dead["live"]["sent"] > 0 and dead["live"]["arrived"] == dead["live"]["sent"], dead
    assert dead["dead_receiver"]["attempts"] > 0, dead
    assert r["records"]["records"] == 300 and r["records"]["customer_query_p50_ms"] >= 0
    for mode in ("NORMAL", "FULL"):
        s = r["sync"][mode]
        assert s["delivered"] == 40 and s["paced"]["arrived"] == s["paced"]["sent"] > 0, s
    assert not list(tmp_path.glob("bench-outbox-*")), "the SQLite files were not cleaned up"
