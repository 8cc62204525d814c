"""`pause`: wait N seconds (silence for the caller)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.actions.base import Action, CallContext, Outcome
from gateway.strict import between, checked


@dataclass(frozen=True)
class Pause(Action):
    name = "pause"

    length: float = checked(between(0, 3600), default=1.0)

    async def run(self, call: CallContext) -> Outcome:
        await call.answer()
        await asyncio.sleep(self.length)
        return None
