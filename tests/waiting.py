"""`eventually`: the one "poll until" loop of the tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, *,
    interval: float = 0.05, message: str | Callable[[], str] = "timed out",
) -> T:
    """Call `predicate` (a function or a coroutine function) until it returns something
    true, and return that; every `interval` seconds, for up to `timeout` seconds, then fail
    the test with AssertionError(`message`) (a callable message is called then, to show the
    state at the time)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        await asyncio.sleep(interval)
