"""`hangup`: end the call, with an optional reason reported in `call.completed`."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.actions.base import Action, CallContext, Outcome, Stop
from gateway.strict import checked, length


@dataclass(frozen=True)
class Hangup(Action):
    name = "hangup"

    reason: str | None = checked(length(1, 200), default=None)

    async def run(self, call: CallContext) -> Outcome:
        await call.hangup(self.reason)
        return Stop()
