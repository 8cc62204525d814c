"""Every step of a stop after the drain is bounded, and the bounds add up to less than the
stop-watch's STUCK_S (the budget in gateway.stopwatch's docstring): a clean stop held by one
slow step logs that step and exits 0, never 70. Threads blocked where nothing can cancel them
(getaddrinfo) do not hold the exit (gateway.threads)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import yaml

from gateway import app, conferences, outbox, stopwatch
from gateway.config import HooksConfig
from gateway.edge import kamailio
from gateway.stopwatch import bounded
from gateway.store import Store
from gateway.threads import DaemonExecutor
from tests.harness import GATEWAY_ENV, PYTHON, ROOT, free_port, rtp_block
from tests.waiting import eventually

# -- the budget ----------------------------------------------------------------------------


def budget() -> tuple[float, float, float]:
    """(before the SIP engine stops, the gateway's rest, the edge): the last two at once."""
    before = app.HANGUP_S + app.RECORDINGS_S + app.SIP_STOP_S
    rest = (app.OUTBOX_DRAIN_S + app.SHUTDOWN_HTTP_S + app.CLUSTER_STOP_S
            + conferences.CLOSE_S + outbox.STOP_S + app.POOLS_CLOSE_S)
    edge = kamailio.STOP_S + kamailio.READ_S
    return before, rest, edge


def test_the_bounds_after_the_drain_fit_inside_the_stop_watch() -> None:
    before, rest, edge = budget()
    total = before + max(rest, edge)
    assert total <= stopwatch.STUCK_S - stopwatch.MARGIN_S, (before, rest, edge)
    assert stopwatch.MARGIN_S >= 1.0 and stopwatch.STUCK_S < stopwatch.FORCED_S
    # The docstring's table says the same as the constants.
    doc = stopwatch.__doc__ or ""
    assert f"total: {before:g} + max({rest:g}, {edge:g})" in doc, doc
    assert f"| {total:.1f} s" in doc


def test_the_edge_bound_leaves_kamailio_its_own_exit_timeout() -> None:
    text = kamailio.TEMPLATE.read_text()
    assert "exit_timeout=2" in text.replace(" ", "")
    assert kamailio.STOP_S > 2


# -- bounded() -------------------------------------------------------------------------------


async def test_a_step_past_its_bound_logs_its_name_and_the_stop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def swallows_cancel() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    assert await bounded("stuck_step", swallows_cancel(), 0.2) is False
    assert time.monotonic() - t0 < 5.0
    lines = [r for r in caplog.records if r.getMessage() == "shutdown.step_timeout"]
    assert [(r.step, r.bound_s) for r in lines] == [("stuck_step", 0.2)]  # type: ignore[attr-defined]
    release.set()  # the task left behind: end it for the test's loop
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()


async def test_a_step_that_fails_logs_and_does_not_raise(
        caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise OSError("disk gone")

    caplog.set_level(logging.WARNING)
    assert await bounded("broken", fails(), 1.0) is False
    (line,) = [r for r in caplog.records if r.getMessage() == "shutdown.step_failed"]
    assert line.step == "broken" and "disk gone" in line.error  # type: ignore[attr-defined]


async def test_a_step_in_time_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert await bounded("quick", asyncio.sleep(0.01), 1.0) is True
    assert not [r for r in caplog.records if r.getMessage().startswith("shutdown.")]


async def test_conferences_close_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    rooms = conferences.Conferences.__new__(conferences.Conferences)
    release = asyncio.Event()

    async def announcement() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # runs on after its cancel
                await asyncio.sleep(3600)

    task = asyncio.create_task(announcement())
    rooms._tasks = {task}
    await asyncio.sleep(0)
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    await rooms.close()
    assert time.monotonic() - t0 < conferences.CLOSE_S + 2.0
    assert any(getattr(r, "step", None) == "conferences" for r in caplog.records)
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=2.0)


async def test_outbox_stop_with_its_database_thread_blocked_is_bounded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: the close waited for the blocked thread, then executor.shutdown(wait=True)."""
    store = Store(str(tmp_path / "o.db"))
    http = aiohttp.ClientSession()
    box = outbox.Outbox(store, http, HooksConfig())
    task = asyncio.create_task(box.run())
    await asyncio.sleep(0.1)
    held = threading.Event()
    box._executor.submit(held.wait)  # a commit on a disk that stalls
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(box.stop(), outbox.STOP_S + 5.0)
        took = time.monotonic() - t0
    finally:
        held.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await http.close()
        store.close()
    assert took < outbox.STOP_S + 2.0, took
    assert any(getattr(r, "step", None) == "outbox" for r in caplog.records)


# -- gateway.threads.DaemonExecutor --------------------------------------------------------


def test_the_executor_runs_calls_and_its_shutdown_never_waits() -> None:
    ex = DaemonExecutor(2, name="t")
    assert ex.submit(pow, 2, 10).result(5) == 1024
    with pytest.raises(ZeroDivisionError):
        ex.submit(lambda: 1 / 0).result(5)
    held = threading.Event()
    blocked = ex.submit(held.wait)  # like a getaddrinfo that never returns
    t0 = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - t0 < 1.0 and not blocked.done()
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("t_"))
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 2)
    held.set()
    assert blocked.result(5) is True


def test_the_executor_starts_no_more_threads_than_its_limit() -> None:
    ex = DaemonExecutor(3, name="cap")
    gate = threading.Event()
    futures = [ex.submit(gate.wait, 10) for _ in range(50)]  # hostile: far more than 3
    assert ex.threads == 3
    gate.set()
    assert all(f.result(10) for f in futures)
    assert ex.threads == 3
    ex.shutdown()


def test_the_executor_reuses_idle_threads() -> None:
    ex = DaemonExecutor(8, name="reuse")
    for i in range(20):
        assert ex.submit(abs, -i).result(5) == i
    assert ex.threads == 1  # a thread is idle again before its caller hears back
    ex.shutdown(cancel_futures=True)


def test_the_executor_counts_busy_threads_with_jobs_queued_behind_them() -> None:
    """Jobs queued behind a busy thread are taken without a submit reusing it: busy went to
    -1 in the shutdown line (`shutdown.threads_left busy=-1`)."""
    ex = DaemonExecutor(1, name="queued")
    gate = threading.Event()
    futures = [ex.submit(gate.wait, 5) for _ in range(5)]
    time.sleep(0.1)
    assert ex.busy == 1
    gate.set()
    assert all(f.result(5) for f in futures)
    for i in range(10):
        ex.submit(abs, -i).result(5)
    assert ex.busy == 0 and ex.threads == 1
    ex.shutdown()


# -- the real process --------------------------------------------------------------------------

# `python -m gateway serve` with the stop-watch shortened, and one thing that blocks for ever:
# getaddrinfo for one name (a DNS server that never answers), or the SIP thread's own stop.
BLOCKING = r'''
import socket, sys, threading, time
from gateway import app, cli, stopwatch
stopwatch.STUCK_S, stopwatch.FORCED_S = 6.0, 9.0
app.SIP_STOP_S = 2.0  # the real 5 s would leave a loaded box too little room under 6
how = sys.argv.pop(1)
if how == "dns":
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "never.answers.example":
            threading.Event().wait()
        return real(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
elif how == "sip":
    from sip import thread

    def slow_shutdown(self):
        time.sleep(3600)  # a SIP thread that does not end

    thread.SipThread._shutdown = slow_shutdown
raise SystemExit(cli.main(sys.argv[1:]))
'''

TOKEN = "stop-bounds-token-0123456789"


def _serve(tmp: Path, how: str) -> tuple[subprocess.Popen[bytes], Path, int]:
    sip_port, http_port = free_port(), free_port()
    cfg = {
        "sip": {"host": "127.0.0.1", "port": sip_port, "rtp_port_start": rtp_block(),
                "rtp_port_range": 1000, "log_level": 2},
        "http": {"host": "127.0.0.1", "port": http_port},
        "database": str(tmp / "g.db"),
        "applications": [{"id": "app_test", "customer_id": "cust_test",
                          "answer_url": "http://127.0.0.1:9/answer",
                          "secret": "stop-bounds-secret", "numbers": ["*"],
                          "caller_ids": ["*"]}],
        "api": {"tokens": [{"token": TOKEN, "customer_id": "cust_test"}]},
        "dialing": {"resolve_timeout_s": 0.5},
        "shutdown": {"drain_s": 0},
    }
    path = tmp / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp / "gw.log"
    proc = subprocess.Popen(
        [PYTHON, "-c", BLOCKING, how, "serve", "--config", str(path), "--log-level", "DEBUG"],
        cwd=ROOT, env=GATEWAY_ENV, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return proc, log, http_port


async def _stop(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, time.monotonic() - sent


@pytest.mark.sip
async def test_a_dial_whose_dns_never_answers_does_not_hold_the_stop(tmp_path: Path) -> None:
    """Before gateway.threads, the blocked getaddrinfo held asyncio.run's shutdown of the
    default executor: `shutdown.stuck`, then exit 70 11 s after the drain."""
    proc, log, http_port = _serve(tmp_path, "dns")
    try:
        await eventually(lambda: "gateway ready" in log.read_text(errors="replace"),
                         timeout=30)
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{http_port}/v1/calls",
                json={"to": "sip:bob@never.answers.example", "from": "+15550001",
                      "actions": [{"hangup": {}}]},
                headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            body = await r.json()
        assert r.status == 422 and body["error"]["code"] == "target_unresolvable", body
    finally:
        code, took = await _stop(proc)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "gateway stopped" in text and "shutdown.stuck" not in text, text[-3000:]
    assert "shutdown.threads_left executor=asyncio busy=1" in text, text[-3000:]
    assert "Traceback" not in text
    assert took < 6.0, took  # 11 s (exit 70) before
    print(f"dns: exit {code} {took:.1f} s after SIGTERM")


@pytest.mark.sip
async def test_a_sip_thread_that_does_not_end_is_left_after_its_bound(tmp_path: Path) -> None:
    """Before: the SIP thread's join waited 10 s in the default executor, past the
    stop-watch (19 s, here 6 s): exit 70."""
    proc, log, _ = _serve(tmp_path, "sip")
    try:
        await eventually(lambda: "gateway ready" in log.read_text(errors="replace"),
                         timeout=30)
    finally:
        code, took = await _stop(proc)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "shutdown.step_timeout step=sip" in text, text[-3000:]
    assert "gateway stopped" in text and "shutdown.stuck" not in text, text[-3000:]
    assert "Traceback" not in text
    assert took < 6.0, took
    print(f"sip: exit {code} {took:.1f} s after SIGTERM")


# -- the edge stops while the gateway closes the rest ----------------------------------------


async def test_the_edge_stops_once_the_sip_engine_has_not_after_the_gateway(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """serve_stack with a stand-in Kamailio that ignores SIGTERM (killed after STOP_S) and a
    stand-in gateway whose stop, after its SIP engine, waits for the edge to be stopped: it
    is only if the edge's stop runs at the same time (before: after serve returned, so the
    budget had to hold the edge's bound after all of the gateway's)."""
    from tests.test_edge_stop import stubborn_edge

    cfg = stubborn_edge(tmp_path)
    caplog.set_level(logging.INFO, logger=kamailio.log.name)
    seen: dict[str, float] = {}

    def stopped() -> bool:
        return any(r.getMessage() == "edge.stopped" for r in caplog.records)

    async def serve(cfg: Any, drain_s: float | None, attach: Any) -> None:
        gw = SimpleNamespace(metrics=SimpleNamespace(edge_event=lambda *a: None),
                             on_sip_stopped=None)
        attach(gw)
        assert gw.on_sip_stopped is not None
        gw.on_sip_stopped()  # the SIP engine stopped; the rest of the stop goes on...
        t0 = time.monotonic()
        await eventually(stopped, timeout=kamailio.STOP_S + 10)  # ...while the edge stops
        seen["edge_s"] = time.monotonic() - t0

    assert await kamailio.serve_stack(cfg, serve, 0.0) == 0
    assert kamailio.STOP_S - 0.5 < seen["edge_s"] < kamailio.STOP_S + 5, seen
    assert [r for r in caplog.records if r.getMessage() == "edge.kill"]
    print(f"edge stopped {seen['edge_s']:.1f} s after the SIP engine, before serve returned")
