"""A gateway's stop cannot hang: the cluster loops keep their cancellation, a stop held by
anything else dumps every thread's and task's stack to the log and exits (gateway.stopwatch),
and an unresponsive Redis does not hold the exit."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from bench.gateway import free_port
from gateway import stopwatch
from gateway.cluster.config import ClusterConfig
from gateway.cluster.node import ClusterNode
from gateway.cluster.reconcile import LostCalls
from gateway.cluster.redis_store import ClusterStore
from gateway.conferences import Conferences
from gateway.waits import cancel_and_wait, wait_event
from tests.cluster import Cluster, cluster  # noqa: F401 (cluster: a fixture)
from tests.harness import GATEWAY_ENV, PYTHON, ROOT, GatewayProc, Phonebank, rtp_block
from tests.redisproc import RedisProc
from tests.waiting import eventually

# -- the lost cancellation -------------------------------------------------------------------


async def _kicked_then_cancelled(task: asyncio.Task[object], kick: object, turns: int) -> None:
    """`kick()`, let the loop turn `turns` times, then cancel `task`: the order in which a
    shutdown meets a loop woken by a call ending."""
    kick()  # type: ignore[operator]
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_wait_event_keeps_a_cancellation_that_meets_the_event(turns: int) -> None:
    wake = asyncio.Event()

    async def loop() -> None:
        while True:
            wake.clear()
            await wait_event(wake, 30.0)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    await _kicked_then_cancelled(task, wake.set, turns)
    for _ in range(3):  # more wake-ups after the cancel must not matter
        await asyncio.sleep(0.01)
        wake.set()
    await asyncio.wait({task}, timeout=2.0)
    assert task.cancelled()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for was rewritten in 3.12")
async def test_wait_for_loses_that_cancellation_on_this_python() -> None:
    """Why gateway.waits exists: the pattern the cluster loops had."""
    wake = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while rounds < 5:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 30.0)
            rounds += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    await _kicked_then_cancelled(task, wake.set, 1)
    for _ in range(5):
        await asyncio.sleep(0.01)
        wake.set()
    await asyncio.wait({task}, timeout=2.0)
    assert not task.cancelled() and rounds == 5  # it ran on after its cancel


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_the_call_records_loop_stops_when_cancelled_as_a_call_ends(
    store: ClusterStore, turns: int,
) -> None:
    """gateway.cluster.reconcile's loop against a real Redis, stopped as the node stops it
    (cancel_and_wait) in the turns after a call ended. A single cancel was seen lost here
    (turns=1: inside redis-py's socket write), the loop running on."""
    lost = LostCalls("n1", store, tick_s=30.0, internal_app="app_cluster")
    task = asyncio.create_task(lost.run())
    await asyncio.sleep(0.3)  # its first write done, waiting for the next wake-up
    ended = SimpleNamespace(app=SimpleNamespace(id="app_test"), call_id="call_1")
    lost.gone(ended)  # type: ignore[arg-type]
    for _ in range(turns):
        await asyncio.sleep(0)
    stuck = await cancel_and_wait([task], timeout=3.0)
    assert not stuck and task.cancelled()


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5])
async def test_a_cluster_node_stops_its_loops_while_they_are_busy(
    redis_server: RedisProc, turns: int, caplog: pytest.LogCaptureFixture,
) -> None:
    """The node's cleanup context, with its three loops woken just before: it ends within
    its bound and no loop is left running (cluster.task_stuck)."""
    cfg = ClusterConfig(node_id="n1", redis_url=redis_server.url, secret="s" * 16,
                        tick_s=0.1, lease_s=1.0, node_ttl_s=2.0)
    node = ClusterNode(cfg, Conferences(lambda change: None))
    node.quota.calls = CallTableStub()  # type: ignore[assignment]
    ctx = node.ctx(web.Application())
    await anext(ctx)
    node.start(None, "127.0.0.1:5999", "http://127.0.0.1:1")  # type: ignore[arg-type]
    await asyncio.sleep(0.5)  # a few ticks: heartbeats, call records, counts written
    node._wake.set()
    node.lost.gone(SimpleNamespace(app=SimpleNamespace(id="app_test"),  # type: ignore[arg-type]
                                   call_id="call_1"))
    node.quota.changed()
    for _ in range(turns):
        await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(StopAsyncIteration):
        await anext(ctx)
    took = time.monotonic() - started
    loops = [node._task, node._lost_task, node._quota_task]
    assert all(t is not None and t.done() for t in loops), loops
    assert "cluster.task_stuck" not in caplog.text
    assert took < 3.0, took


class CallTableStub(list[object]):
    """What the quota loop reads of the call table: no calls."""


# -- a stop held by something else: the stacks in the log, then an exit ----------------------

# The real `python -m gateway serve`, with a stop that leaves behind one thing that holds the
# process after serve has returned, and the stop watch's bounds shortened for the test.
HELD = r'''
import asyncio, sys, threading, time
from gateway import app, cli, stopwatch
stopwatch.STUCK_S, stopwatch.FORCED_S = 2.0, 4.0
how = sys.argv.pop(1)
stop = app.Gateway.stop

async def swallows_cancel():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

async def stop_then_hold(self, drain_s=0.0):
    await stop(self, drain_s)
    if how == "thread":  # a non-daemon thread: the interpreter's exit joins it
        threading.Thread(target=threading.Event().wait, name="held-worker").start()
    elif how == "task":  # asyncio.run cancels it once and waits for it
        asyncio.create_task(swallows_cancel(), name="held-task")
    elif how == "executor":  # the interpreter's exit joins a ThreadPoolExecutor's threads
        import concurrent.futures  # (not the loop's default one: gateway.threads, never joined)
        concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="held-pool").submit(
            time.sleep, 3600)

app.Gateway.stop = stop_then_hold
raise SystemExit(cli.main(sys.argv[1:]))
'''


def _serve(tmp: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path, int]:
    sip_port, http_port = free_port(), free_port()
    log = tmp / "gw.log"
    proc = subprocess.Popen(
        [PYTHON, "-c", HELD, *args, "serve", "--answer-url", "http://127.0.0.1:9/answer",
         "--secret", "held-secret-0123", "--sip-port", str(sip_port),
         "--http-port", str(http_port), "--rtp-port-start", str(rtp_block()),
         "--db", str(tmp / "g.db"), "--drain", "0"],
        cwd=ROOT, env=GATEWAY_ENV, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return proc, log, http_port


async def _ready(log: Path) -> None:
    await eventually(lambda: "gateway ready" in log.read_text(errors="replace"), timeout=30)


@pytest.mark.sip
@pytest.mark.parametrize(("how", "culprit"), [
    ("thread", "shutdown.stuck.thread thread_name=held-worker"),
    ("task", "shutdown.stuck.task task=held-task"),  # and its stack: swallows_cancel
    ("executor", "shutdown.stuck.thread thread_name=held-pool_0"),
])
async def test_a_stop_held_after_serve_dumps_its_stacks_and_exits(
    tmp_path: Path, how: str, culprit: str,
) -> None:
    proc, log, _ = _serve(tmp_path, how)
    try:
        await _ready(log)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert code == 70, text[-3000:]
    lines = text.splitlines()
    stuck = next(i for i, ln in enumerate(lines) if " shutdown.stuck " in ln)
    forced = next(i for i, ln in enumerate(lines) if " shutdown.forced " in ln)
    assert "gateway stopped" in text and stuck < forced, text[-3000:]
    assert any(culprit in ln for ln in lines[stuck:forced]), text[-3000:]
    if how == "task":  # the task's own stack names the coroutine that holds it
        assert any("held-task" in ln and "swallows_cancel" in ln for ln in lines), text[-3000:]
    assert "exit_code=70" in lines[forced]
    # The conftest's check: a stuck stop fails a test by its exit code and these lines,
    # not by looking like a crash.
    assert "Traceback" not in text
    assert took < 15.0, took  # 4 s bound here (11 s for real), under the harness's kill
    print(f"{how}: exit {code} {took:.1f} s after SIGTERM")


@pytest.mark.sip
async def test_a_normal_stop_logs_none_of_it(gateway: GatewayProc) -> None:
    """The watch is armed on every stop; a stop that ends in time never shows it."""
    await asyncio.sleep(0.5)
    sent = time.monotonic()
    code = await asyncio.to_thread(gateway.stop)
    took = time.monotonic() - sent
    text = gateway.log()
    assert code == 0 and "gateway stopped" in text, text[-3000:]
    assert "shutdown.stuck" not in text and "shutdown.forced" not in text
    print(f"normal stop: {took:.2f} s")


# -- Redis that stops answering ----------------------------------------------------------------


class FreezingProxy:
    """A TCP proxy in front of Redis that can stop answering: from `freeze()` on, nothing goes
    through either way, and connections (old and new) stay open: a Redis that hangs, not one
    that is down (refused connections fail at once)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.port = 0
        self._never = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        self.frozen = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self._writers:
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        with contextlib.suppress(Exception):
            if self.frozen:
                await self._never.wait()
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.append(up_w)
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.frozen:
                await self._never.wait()
            writer.write(data)
            await writer.drain()


@pytest.mark.sip
async def test_a_node_whose_redis_hangs_still_stops_at_once(
    cluster: Cluster, phones: Phonebank, tmp_path: Path,  # noqa: F811
) -> None:
    """A node owning a room with a caller in it; Redis stops answering (every command waits
    for its 1 s socket timeout); SIGTERM: the node drains, hangs up, gives up on Redis and
    exits 0, well inside the stop watch's bound."""
    proxy = await FreezingProxy(int(cluster.redis.url.rsplit(":", 1)[1].split("/")[0])).start()
    try:
        cluster.app.answer = lambda p: {"actions": [{"conference": {"room": "r1"}}]}
        a = await cluster.start_node("a", redis_url=proxy.url)
        phones.call("x", a.uri())
        await phones.wait("media", "x")
        await eventually(lambda: "conference.owner" in a.log(), timeout=10)
        proxy.freeze()
        await eventually(lambda: "cluster.redis_down" in a.log(), timeout=10)
        sent = time.monotonic()
        code = await asyncio.to_thread(a.stop)
        took = time.monotonic() - sent
    finally:
        await proxy.close()
    text = a.log()
    assert code == 0, text[-3000:]
    assert "gateway stopped" in text and "shutdown.stuck" not in text, text[-3000:]
    assert "cluster.task_stuck" not in text, text[-3000:]
    # 2 s of drain (the harness's), then bounded steps; the stop watch dumps at 8 s more
    assert took < 2.0 + stopwatch.STUCK_S, took
    print(f"stop with a hung Redis: {took:.1f} s after SIGTERM")
