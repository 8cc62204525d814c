"""The action engine: run a validated action list in order.

Deliberately small. Each action runs itself (see gateway/actions/); an action
may end the list (`Stop`) or replace the rest of it (`Replace`, from gather and
redirect). Cancellation (the caller hung up) propagates out of whatever action
is running.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.actions.base import Action, CallContext, Replace, Stop


async def run_actions(actions: Sequence[Action], call: CallContext) -> None:
    queue = list(actions)
    while queue:
        action = queue.pop(0)
        call.note("action.start", action=action.name)
        outcome = await action.run(call)
        call.note("action.end", action=action.name)
        if isinstance(outcome, Stop):
            return
        if isinstance(outcome, Replace):
            queue = list(outcome.actions)
