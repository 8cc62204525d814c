"""`say`: speak text with the local TTS engine (espeak-ng), `loop` times (0 = until interrupted)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.actions.base import Action, CallContext, Outcome
from gateway.actions.play import repeat
from gateway.strict import between, checked, length, pattern


@dataclass(frozen=True)
class Say(Action):
    name = "say"

    text: str = checked(length(1, 4000))
    voice: str | None = checked(
        pattern(r"[a-z]{2,3}(-[a-z0-9]+)*(\+[a-z0-9]+)?", "an espeak-ng voice such as en-us"),
        default=None)
    loop: int = checked(between(0, 100), default=1)

    async def play_prompt(self, call: CallContext) -> None:
        path = await call.prompt_speech(self.text, self.voice)
        await repeat(call, path, self.loop)

    async def run(self, call: CallContext) -> Outcome:
        await call.answer()
        await self.play_prompt(call)
        return None
