"""Stopping the edge is bounded, whatever Kamailio does.

Kamailio 5.6's workers now and then hang on a lock inside their SIGTERM handler (measured: 4
stops in about 450 on a loaded two-core box), and its main process then waits for them for
`exit_timeout`, 60 s by default. The gateway's stop-watch (gateway/stopwatch.py) counts the
edge's stop as part of the gateway's, so that wait once ended a clean stop with exit 70. Two
bounds now: `exit_timeout` in the rendered config (Kamailio kills its own workers), and
`Edge.stop` killing the whole process group after STOP_S. The second is checked here against
a stand-in Kamailio that ignores SIGTERM, with a worker that does too."""

from __future__ import annotations

import logging
import os
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.gateway import free_port
from gateway import stopwatch
from gateway.config import Config, from_dict
from gateway.edge import kamailio
from gateway.edge.kamailio import STOP_S, Edge, EdgePlan, prepare, render

BASE = {"applications": [{"id": "a", "customer_id": "c", "answer_url": "http://127.0.0.1:1/",
                          "secret": "s3cret-s3cret"}],
        "sip": {"host": "127.0.0.1", "port": 5070}}

# Answers OPTIONS like Kamailio (so Edge.start sees it up), forks one worker, and neither
# process reacts to SIGTERM. The worker writes its pid where the test can find it.
STUBBORN = textwrap.dedent("""\
    #!{python}
    import os, re, signal, socket, sys
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cfg = open(sys.argv[sys.argv.index("-f") + 1]).read()
    host, port = re.search(r"listen=udp:([0-9.]+):([0-9]+)", cfg).groups()
    runtime = sys.argv[sys.argv.index("-Y") + 1]
    pid = os.fork()
    if pid == 0:
        open(os.path.join(runtime, "worker.pid"), "w").write(str(os.getpid()))
        while True:
            signal.pause()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    print("0(1) NOTICE: <core> stand-in up", file=sys.stderr, flush=True)
    while True:
        data, peer = s.recvfrom(4096)
        if data.startswith(b"OPTIONS"):
            s.sendto(b"SIP/2.0 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n", peer)
    """)


def test_the_rendered_config_bounds_kamailios_own_exit(tmp_path: Path) -> None:
    e = from_dict({**BASE, "edge": {"tls_port": 0}}).edge
    text = render(EdgePlan(e, "127.0.0.1", 5070, tmp_path, tmp_path / "k.cfg", None, None,
                           "kamailio"), "0" * 64)
    found = re.search(r"^exit_timeout=(\d+)$", text, re.M)
    assert found is not None, "no exit_timeout: Kamailio would wait 60 s for hung workers"
    # Kamailio's own bound fires first, ours is the backstop, and both end before the
    # stop-watch calls the stop stuck.
    assert int(found.group(1)) < STOP_S < stopwatch.STUCK_S - 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it has exited for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] != "Z"


def stubborn_edge(tmp_path: Path) -> Config:
    """A config whose edge is the stand-in Kamailio above (written into tmp_path)."""
    fake = tmp_path / "kamailio"
    fake.write_text(STUBBORN.format(python=sys.executable))
    fake.chmod(0o755)
    port = free_port()
    return from_dict({**BASE, "edge": {
        "enabled": True, "kamailio": str(fake), "listen": "127.0.0.1", "udp_port": port,
        "tcp_port": port, "tls_port": 0, "users_db": str(tmp_path / "users.db"),
        "runtime_dir": str(tmp_path / "edge")}})


async def test_a_kamailio_that_ignores_sigterm_is_killed_with_its_workers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    edge = Edge(prepare(stubborn_edge(tmp_path)))
    await edge.start(timeout_s=10)
    assert edge.proc is not None
    worker_file = tmp_path / "edge" / "worker.pid"
    deadline = time.monotonic() + 5
    while not worker_file.exists() or not worker_file.read_text():
        assert time.monotonic() < deadline, "the stand-in's worker never started"
        time.sleep(0.05)
    worker = int(worker_file.read_text())

    caplog.set_level(logging.INFO, logger=kamailio.log.name)
    t0 = time.monotonic()
    await edge.stop()
    took = time.monotonic() - t0

    assert took < STOP_S + 2, f"the stop took {took:.1f} s"
    assert edge.proc.returncode == -9
    assert [r for r in caplog.records if r.getMessage() == "edge.kill"]
    assert [r for r in caplog.records if r.getMessage() == "edge.stopped"]
    deadline = time.monotonic() + 2
    while _alive(worker):  # the worker is in the same process group: killed too
        assert time.monotonic() < deadline, f"worker {worker} outlived the edge"
        time.sleep(0.05)
