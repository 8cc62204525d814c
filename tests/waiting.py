"""`eventually`: the one "poll until" loop of the tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


# Two overloads rather than one `Callable[[], T | Awaitable[T]]`: mypy cannot solve T through
# that union (a coroutine function would bind T to the coroutine, or to Never). The predicate's
# `None` is dropped from the result: a falsy result is never returned, so a predicate typed
# `-> X | None` gives back an X.
@overload
async def eventually(
    predicate: Callable[[], Awaitable[T | None]], timeout: float = 10.0, *,
    interval: float = 0.05, message: str | Callable[[], str] = "timed out",
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T | None], timeout: float = 10.0, *,
    interval: float = 0.05, message: str | Callable[[], str] = "timed out",
) -> T: ...


async def eventually(
    predicate: Callable[[], object], timeout: float = 10.0, *,
    interval: float = 0.05, message: str | Callable[[], str] = "timed out",
) -> object:
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
            return result
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        await asyncio.sleep(interval)
