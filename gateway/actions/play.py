"""`play`: play a WAV or MP3 file fetched over HTTP(S), `loop` times (0 = until interrupted)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from gateway.actions.base import Action, CallContext, Outcome
from gateway.strict import URL, between, checked


async def repeat(call: CallContext, path: Path, loop: int) -> None:
    """Play a prepared file `loop` times; 0 repeats until the task is cancelled."""
    for _ in itertools.count() if loop == 0 else range(loop):
        await call.play(path)


@dataclass(frozen=True)
class Play(Action):
    name = "play"

    url: str = checked(URL)
    loop: int = checked(between(0, 100), default=1)

    async def play_prompt(self, call: CallContext) -> None:
        """Fetch (cached) and play; used by `play` itself and by `gather`'s prompt."""
        path = await call.prompt_file(self.url)
        await repeat(call, path, self.loop)

    async def run(self, call: CallContext) -> Outcome:
        await call.answer()
        await self.play_prompt(call)
        return None
