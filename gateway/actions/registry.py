"""Every action the gateway knows, by name. Adding an action = one module + one line here."""

from __future__ import annotations

from gateway.actions.base import Action
from gateway.actions.conference import Conference
from gateway.actions.hangup import Hangup
from gateway.actions.pause import Pause

ACTIONS: dict[str, type[Action]] = {cls.name: cls for cls in (Conference, Hangup, Pause)}
