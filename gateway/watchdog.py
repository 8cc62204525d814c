"""Crash-only: a gateway whose SIP thread is gone or stuck exits, so its supervisor (systemd
`Restart=`, compose `restart:`) starts a fresh one, which finishes the calls the old one left
(gateway/recovery.py). Limping on would mean answering HTTP while no call can be served."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("minivoice.gateway")

EXIT_CODE = 70  # EX_SOFTWARE: an internal failure, restart me


class Engine(Protocol):
    def problem(self, stall_s: float) -> str | None: ...


async def watch(engine: Engine, stall_s: float, poll_s: float = 0.25,
                exit_fn: Callable[[int], object] = os._exit) -> None:
    """Check the SIP thread every `poll_s`; exit the process at the first problem."""
    while True:
        await asyncio.sleep(poll_s)
        problem = engine.problem(stall_s)
        if problem is not None:
            log.critical("sip.dead", extra={"reason": problem, "exit_code": EXIT_CODE})
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stdout.flush()
            exit_fn(EXIT_CODE)
            return
