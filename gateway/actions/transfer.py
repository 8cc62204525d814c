"""`transfer`: dial a SIP URI (or a registered user, through the edge) and bridge the caller.

The caller hears ringback while the new leg rings. Answered: both are bridged until
either hangs up; if the far end hangs up first, the caller's next action runs. Busy,
no answer within `timeout`, or failure: the next action runs. The outbound leg has its
own call ID and lifecycle webhooks (`direction: outbound`, `data.parent_call_id`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.actions.base import Action, CallContext, Outcome
from gateway.strict import between, checked, length, pattern

TARGET = pattern(r"(sips?:[^\s<>]+@[^\s<>]+)|([A-Za-z0-9._+-]{1,64})",
                 "a SIP URI (sip:user@host) or a registered user name")


@dataclass(frozen=True)
class Transfer(Action):
    name = "transfer"

    to: str = checked(TARGET)
    caller_id: str | None = checked(length(1, 64),
                                    pattern(r"[A-Za-z0-9.+_-]+", "a number or user name"),
                                    default=None)
    timeout: float = checked(between(1, 600), default=30.0)

    async def run(self, call: CallContext) -> Outcome:
        await call.answer()
        outcome = await call.transfer(self.to, self.caller_id, self.timeout)
        call.note("transfer.outcome", to=self.to, outcome=outcome)
        return None
