"""The asyncio side of the SIP thread (sip/thread.py).

The asyncio side never touches a pj object: it puts frozen commands on the queue and gets
a `CommandDone` back, correlated by request id; the thread's events arrive in batches
through `loop.call_soon_threadsafe`. `SipEngine.alive` reports whether the thread's loop has
turned within the last second (for /healthz). pjsua2 itself is imported only when the
thread starts, so that the control plane can be imported (and its configuration checked)
without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sip import commands as cmd
from sip import events as ev
from sip.config import SipConfig

if TYPE_CHECKING:
    from sip.thread import SipThread

log = logging.getLogger("minivoice.sip")



class SipEngine:
    """The asyncio side: start/stop the SIP thread, send commands, receive events."""

    def __init__(self, cfg: SipConfig, on_event: Callable[[ev.Event], None]) -> None:
        self.cfg = cfg
        self._on_event = on_event
        self._queue: queue.SimpleQueue[tuple[int, cmd.Command]] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: asyncio.Future[None] | None = None
        self.last_tick = 0.0  # written by the SIP thread (a float: atomic to read)
        self._worker: SipThread | None = None
        self.bound_port = 0
        # Events cross to the loop in batches: one loop wake-up (a self-pipe write) per
        # batch rather than per event, which mattered at 50 calls/s (py-spy: 6% of samples).
        self._batch: list[ev.Event] = []
        self._batch_lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self._thread is not None and time.monotonic() - self.last_tick < 1.0

    def live_legs(self) -> int:
        """Call objects alive on the SIP thread (for /metrics). len() of a dict another
        thread changes is atomic in CPython; no pj object is touched."""
        worker = self._worker
        return len(worker.calls) if worker is not None else 0

    def loop_age(self) -> float:
        """Seconds since the SIP loop last turned (0 before it started)."""
        return time.monotonic() - self.last_tick if self.last_tick else 0.0

    def problem(self, stall_s: float) -> str | None:
        """Why the SIP thread cannot serve calls (for the watchdog), or None."""
        if self._thread is None:
            return None  # not started, or stopped on purpose
        if not self._thread.is_alive():
            return "sip thread died"
        stalled = time.monotonic() - self.last_tick
        if stalled > stall_s:
            return f"sip loop stalled for {stalled:.1f} s"
        return None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.create_future()
        from sip.thread import SipThread  # imports pjsua2

        worker = SipThread(self.cfg, self._queue, self._post, self)
        self._worker = worker
        self._thread = threading.Thread(target=worker.run, name="sip", daemon=True)
        self._thread.start()
        await self._started

    def send(self, command: cmd.Command) -> asyncio.Future[Any]:
        """Queue a command for the SIP thread; the future resolves when it has run, with the
        command's value (queries) or None."""
        assert self._loop is not None
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[req_id] = fut
        self._queue.put((req_id, command))
        return fut

    async def levels(self, call_ids: tuple[str, ...]) -> dict[str, int]:
        """Each call's current level (0-255) of what it sends into the bridge."""
        return dict(await self.send(cmd.QueryLevels(call_ids)) or ())

    async def stop(self, timeout_s: float = 10.0) -> bool:
        """Ask the SIP thread to end and wait until it has, `timeout_s` at most; whether it
        did. Not a join in an executor: a thread that does not end would then hold that
        executor's shutdown, and the exit with it; the SIP thread is a daemon, left to the
        exit."""
        thread = self._thread
        if thread is None:
            return True
        self._queue.put((0, cmd.Shutdown()))
        deadline = time.monotonic() + timeout_s
        while thread.is_alive():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        self._thread = None
        return True

    # -- called on the SIP thread --------------------------------------------------
    def _post(self, event: ev.Event) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._batch_lock:
            self._batch.append(event)
            first = len(self._batch) == 1
        if first:  # otherwise a drain is already scheduled and will take this one too
            with contextlib.suppress(RuntimeError):  # the loop closed while we shut down
                loop.call_soon_threadsafe(self._drain)

    # -- called on the asyncio loop -------------------------------------------------
    def _drain(self) -> None:
        with self._batch_lock:
            batch, self._batch = self._batch, []
        for event in batch:
            self._dispatch(event)

    def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.CommandDone):
            fut = self._pending.pop(event.req_id, None)
            if fut is not None and not fut.done():
                if event.error:
                    fut.set_exception(SipCommandError(event.error))
                else:
                    fut.set_result(event.value)
            return
        if isinstance(event, ev.EngineStarted) and self._started and not self._started.done():
            self.bound_port = event.port
            self._started.set_result(None)
            return
        if isinstance(event, ev.EngineFailed) and self._started and not self._started.done():
            self._started.set_exception(SipCommandError(event.error))
            return
        self._on_event(event)


class SipCommandError(Exception):
    pass
