"""Waiting for an event with a timeout, and stopping tasks, without losing a cancellation.

`asyncio.wait_for(event.wait(), t)` on Python 3.11 returns normally when the task is
cancelled in the loop turn where the event was set (the inner wait has finished, so
wait_for hands back its result and drops the CancelledError). A `while True` loop built on
it then never stops: its owner's `task.cancel()` at shutdown is lost, and whoever awaits
the task (a cleanup context, asyncio.run's own cleanup) waits for ever. `asyncio.timeout`
counts cancellations and re-raises one that was not its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set or `timeout` seconds pass; True if it was set. A
    cancellation of the calling task always propagates."""
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout: float,
                          every: float = 0.1) -> set[asyncio.Task[Any]]:
    """Cancel `tasks` and wait up to `timeout` seconds for them to end, cancelling again every
    `every` seconds: one cancellation can be lost below us (redis-py's asyncio client wraps
    its socket writes in asyncio.wait_for, which on Python 3.11 drops a cancellation that
    arrives as the write completes), and a loop that lost it runs on for ever. The tasks
    still running at the end are returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(every, left))
    return pending
