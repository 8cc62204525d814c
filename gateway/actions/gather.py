"""`gather`: collect DTMF digits (RFC 4733 or SIP INFO), optionally over a prompt, and POST
them to `action_url`; the actions it returns replace the rest of the list.

Ends on the first of: `num_digits` digits, `finish_on_key` (not included in the digits),
or `timeout` seconds without a digit (counted from the end of the prompt). The first
digit stops the prompt. No input still posts (`digits: ""`, `reason: "timeout"`): the
application decides what happens next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.actions.base import Action, CallContext, Outcome, Replace
from gateway.actions.play import Play
from gateway.actions.say import Say
from gateway.strict import URL, between, checked, pattern


@dataclass(frozen=True)
class Gather(Action):
    name = "gather"

    action_url: str = checked(URL)
    num_digits: int | None = checked(between(1, 64), default=None)
    timeout: float = checked(between(1, 120), default=5.0)
    finish_on_key: str = checked(pattern(r"[0-9*#]?", "one of 0-9, * or #, or empty"),
                                 default="#")
    play: Play | None = None
    say: Say | None = None

    def cross_check(self) -> Iterator[tuple[str, str]]:
        if self.play is not None and self.say is not None:
            yield "", "give one prompt: play or say, not both"

    async def run(self, call: CallContext) -> Outcome:
        await call.answer()
        call.clear_digits()
        prompt = self.play or self.say
        prompting = asyncio.create_task(prompt.play_prompt(call)) if prompt else None
        digits, reason = "", "timeout"
        try:
            while True:
                digit = await self._next(call, prompting)
                if digit is None:
                    break
                if prompting is not None:
                    prompting.cancel()
                if self.finish_on_key and digit == self.finish_on_key:
                    reason = "finish_on_key"
                    break
                digits += digit
                if self.num_digits is not None and len(digits) >= self.num_digits:
                    reason = "num_digits"
                    break
        finally:
            if prompting is not None and not prompting.done():
                prompting.cancel()
        call.note("gather.done", digits=digits, reason=reason)
        actions = await call.fetch_actions(self.action_url, "call.gather",
                                           {"digits": digits, "reason": reason})
        return Replace(actions)

    async def _next(self, call: CallContext, prompting: asyncio.Task[None] | None) -> str | None:
        """Wait for a digit: without limit while the prompt plays, then up to `timeout`."""
        if prompting is not None and not prompting.done():
            waiting = asyncio.create_task(call.next_digit(None))
            try:
                await asyncio.wait({waiting, prompting}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not waiting.done():
                    waiting.cancel()
            if waiting.done() and not waiting.cancelled():
                return waiting.result()
            if not prompting.cancelled() and prompting.exception() is not None:
                raise prompting.exception()  # type: ignore[misc]
        return await call.next_digit(self.timeout)
