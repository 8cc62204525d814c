"""`redirect`: fetch a new actions document from `url`; it replaces the rest of the list."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.actions.base import Action, CallContext, Outcome, Replace
from gateway.strict import URL, checked


@dataclass(frozen=True)
class Redirect(Action):
    name = "redirect"

    url: str = checked(URL)

    async def run(self, call: CallContext) -> Outcome:
        return Replace(await call.fetch_actions(self.url, "call.redirect", {}))
