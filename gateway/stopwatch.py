"""A stop that does not finish says why, then ends.

Armed once the SIGTERM drain is over (the calls are being hung up): from then on every step
of the stop is bounded, so a process still alive `stuck_s` later is held by something that
is not (a task that swallowed its cancellation, a worker thread in a blocking call, a
non-daemon thread that the interpreter's exit joins). Then:

- `shutdown.stuck` (ERROR), followed by one `shutdown.stuck.thread` line per thread and one
  `shutdown.stuck.task` line per asyncio task not done, each with its stack (innermost
  last, `file:line function` separated by ` > `: outer calls inner);
- `forced_s` after arming, if still alive: `shutdown.forced` (CRITICAL) and the process
  exits with EXIT_CODE, so that nobody needs kill -9.

A plain Python thread cannot run while native code holds the GIL; for that case the
interpreter's fault handler (a C thread) dumps every thread's stack and exits a second
later than `forced_s`. A normal stop ends long before `stuck_s` and logs nothing of this.

The budget: every step after the drain has a bound (a constant next to the step); a step
that reaches it logs `shutdown.step_timeout step=...` (WARNING) and the stop goes on without
it. Worst case, in order (tests/test_stop_bounds.py adds these constants up):

| step                                     | bound  | why                                       |
|------------------------------------------|--------|-------------------------------------------|
| hang up every call, wait for CallEnded   | 2.0 s  | `app.HANGUP_S`: one SIP command each, all |
|                                          |        | at once; their call.completed is queued   |
| recordings.stop_all                      | 2.5 s  | `app.RECORDINGS_S`: pjmedia's own header  |
|                                          |        | write gets its FINALISE_WAIT_S; a file    |
|                                          |        | still open is repaired at the next start  |
| SIP engine stop (SIP thread ends)        | 5.0 s  | `app.SIP_STOP_S`: the thread's own stop   |
|                                          |        | waits up to 2 s for calls; left past this |
|                                          |        | (a daemon), pjsua runs on into the exit   |
| then, at the same time:                  |        |                                           |
| a) outbox.drain                          | 2.0 s  | `app.OUTBOX_DRAIN_S`: undelivered events  |
|                                          |        | stay in SQLite for the next start         |
|    HTTP requests under way               | 1.0 s  | `app.SHUTDOWN_HTTP_S`                     |
|    cluster node (loops, Redis release)   | 2.1 s  | `cluster.node.STOP_S`: leases lapse anyway|
|    Conferences.close                     | 0.1 s  | `conferences.CLOSE_S`: tasks cancelled    |
|    Outbox.stop (commit, close)           | 3.0 s  | `outbox.STOP_S`: its thread is a daemon   |
|    HTTP pools close                      | 0.1 s  | `app.POOLS_CLOSE_S`                       |
| b) the edge (Kamailio, `make run`)       | 3.5 s  | `edge.kamailio.STOP_S` + `READ_S`: no     |
|                                          |        | longer needed once SIP stopped            |
| total: 9.5 + max(8.3, 3.5)              | 17.8 s | under STUCK_S, MARGIN_S to spare          |

These are ceilings for a stop that is stuck somewhere; a normal stop takes about a second.

Threads that may block where nothing can cancel them (getaddrinfo, a stalled disk) are daemon
threads nobody joins (gateway.threads), so that they cannot hold the exit either.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TextIO

from gateway.watchdog import EXIT_CODE  # as for a dead SIP thread

log = logging.getLogger("minivoice.gateway")

# Past the budget below; the test harness kills a gateway 30 s after SIGTERM (2 s drain in
# tests), docker-compose 40 s (stop_grace_period).
STUCK_S = 19.0
FORCED_S = 22.0
MARGIN_S = 1.0  # the stop's budget (above) stays this far under STUCK_S
MAX_FRAMES = 16  # per stack: the innermost ones say what it waits for
MAX_TASKS = 50  # a stuck stop with thousands of calls: the log stays readable


async def bounded(step: str, aw: Awaitable[object], bound_s: float) -> bool:
    """Await `aw` for at most `bound_s` seconds; True if it finished. Past its bound, or on
    an error, a step logs one line and the stop goes on: `aw` runs in a task of its own that
    is cancelled and not awaited (a step that swallows its cancellation cannot hold us)."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.wait({task}, timeout=bound_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.done():
        task.cancel()
        log.warning("shutdown.step_timeout", extra={"step": step, "bound_s": bound_s})
        return False
    if task.cancelled():
        log.warning("shutdown.step_failed", extra={"step": step, "error": "cancelled"})
        return False
    exc = task.exception()
    if exc is not None:
        log.warning("shutdown.step_failed", extra={"step": step, "error": repr(exc)})
        return False
    return True


def _frames(stack: traceback.StackSummary) -> str:
    return " > ".join(f"{os.path.basename(e.filename)}:{e.lineno} {e.name}"
                      for e in list(stack)[-MAX_FRAMES:])


def _task_stack(task: asyncio.Task[object]) -> str:
    frames = task.get_stack(limit=MAX_FRAMES)  # outermost first for a coroutine
    return " > ".join(f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno} "
                      f"{f.f_code.co_name}" for f in frames)


class StopWatch:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None,
                 stuck_s: float | None = None, forced_s: float | None = None,
                 stream: TextIO | None = None,
                 exit_fn: Callable[[int], object] = os._exit) -> None:
        self.loop = loop
        self.stuck_s = STUCK_S if stuck_s is None else stuck_s
        self.forced_s = FORCED_S if forced_s is None else forced_s
        self.stream = stream if stream is not None else sys.stderr
        self.exit_fn = exit_fn
        self._armed_at: float | None = None

    def arm(self) -> None:
        """Start the clock (once; later calls do nothing)."""
        if self._armed_at is not None:
            return
        self._armed_at = time.monotonic()
        # The last resort, for when no Python code can run (not possible on a stream without
        # a file descriptor).
        with contextlib.suppress(ValueError, OSError, AttributeError):
            faulthandler.dump_traceback_later(self.forced_s + 1.0, exit=True,
                                              file=self.stream)
        threading.Thread(target=self._watch, name="stop-watch", daemon=True).start()

    def _watch(self) -> None:
        assert self._armed_at is not None
        time.sleep(self.stuck_s)
        try:
            self.dump()
        except Exception as exc:  # the exit below must happen whatever the dump met
            log.error("shutdown.stuck", extra={"dump_failed": repr(exc)})
        time.sleep(max(0.0, self.forced_s - (time.monotonic() - self._armed_at)))
        log.critical("shutdown.forced", extra={
            "after_s": round(time.monotonic() - self._armed_at, 1),
            "exit_code": EXIT_CODE})
        self._flush()
        self.exit_fn(EXIT_CODE)

    def dump(self) -> None:
        """What every thread and every unfinished task is doing, one line each."""
        assert self._armed_at is not None
        threads = {t.ident: t for t in threading.enumerate()}
        frames = sys._current_frames()
        tasks = self._tasks()
        log.error("shutdown.stuck", extra={
            "after_s": round(time.monotonic() - self._armed_at, 1), "threads": len(frames),
            "tasks": len(tasks), "exit_in_s": round(self.forced_s - self.stuck_s, 1)})
        me = threading.get_ident()
        for ident, frame in frames.items():
            if ident == me:
                continue
            log.error("shutdown.stuck.thread", extra={
                "thread_name": threads[ident].name if ident in threads else hex(ident),
                "daemon": threads[ident].daemon if ident in threads else None,
                "stack": _frames(traceback.extract_stack(frame))})
        for task in tasks[:MAX_TASKS]:
            try:
                stack = _task_stack(task)
            except Exception as exc:  # read from another thread: it may change under us
                stack = f"unreadable: {exc!r}"
            log.error("shutdown.stuck.task", extra={"task": task.get_name(),
                                                    "cancelling": task.cancelling(),
                                                    "stack": stack})
        self._flush()

    def _tasks(self) -> list[asyncio.Task[object]]:
        if self.loop is None or self.loop.is_closed():
            return []
        try:  # not thread-safe in general; all_tasks retries when the set changes under it
            return [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        except RuntimeError:
            return []

    def _flush(self) -> None:
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.stream.flush()
