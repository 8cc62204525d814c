"""An executor whose threads never hold the process's exit.

A thread blocked in a call that cannot be cancelled (getaddrinfo on a DNS server that never
answers, a commit on a disk that stalls) holds the exit if anything joins it: asyncio.run's
shutdown of the loop's default executor does (with no time limit on Python 3.11), and so does
the interpreter's exit for every concurrent.futures.ThreadPoolExecutor thread. This one's
threads are daemon threads that nobody joins, and its shutdown never waits: at exit, a thread
still blocked is simply dropped with the process. The gateway makes it the loop's default
executor (gateway.app.serve), so aiohttp's resolver, loop.getaddrinfo and asyncio.to_thread
use it too.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger("minivoice.gateway")

P = ParamSpec("P")
T = TypeVar("T")

_Item = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def default_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default


class DaemonExecutor(ThreadPoolExecutor):
    """At most `max_workers` daemon threads, started as work arrives and kept; `shutdown`
    tells them to end once idle and returns at once, whatever `wait` says. A
    ThreadPoolExecutor only in name (asyncio's set_default_executor wants one): it runs
    nothing of its base class but the constructor."""

    def __init__(self, max_workers: int | None = None, name: str = "worker") -> None:
        super().__init__(max_workers, thread_name_prefix=name)
        self.max_workers = max_workers or default_workers()
        self.name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        # Like ThreadPoolExecutor's idle semaphore: one per job finished, taken by a submit
        # that reuses a thread. It over-counts when a thread takes a job queued behind
        # another (as CPython's does), so `busy` is counted on its own.
        self._idle = 0
        self._running = 0
        self._shut = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        fut: Future[T] = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.put((fut, fn, args, kwargs))
            if self._idle:
                self._idle -= 1  # that idle thread takes it
            elif len(self._workers) < self.max_workers:
                t = threading.Thread(target=self._work, daemon=True,
                                     name=f"{self.name}_{len(self._workers)}")
                self._workers.append(t)
                t.start()
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args, kwargs = item
            result: Any = None
            error: BaseException | None = None
            running = fut.set_running_or_notify_cancel()
            if running:
                with self._lock:
                    self._running += 1
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # the caller's to see, as in ThreadPoolExecutor
                    error = exc
            # Idle before the caller hears back: its next submit then reuses this thread
            # instead of starting another.
            with self._lock:
                self._idle += 1
                self._running -= running
            if running:
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(result)
            del item, fut, fn, args, kwargs, result, error  # no reference kept while idle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Never waits (`wait` is ignored): that is the point of this executor. Threads still
        busy are named in one log line; they end with the process."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
            if self.busy:
                log.warning("shutdown.threads_left", extra={"executor": self.name,
                                                            "busy": self.busy})
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._workers:
                self._queue.put(None)

    @property
    def threads(self) -> int:
        return len(self._workers)

    @property
    def busy(self) -> int:
        """Threads running a call."""
        return self._running
