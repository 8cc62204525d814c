"""Every action the gateway knows, by name. Adding an action = one module + one line here."""

from __future__ import annotations

from gateway.actions.base import Action
from gateway.actions.conference import Conference
from gateway.actions.gather import Gather
from gateway.actions.hangup import Hangup
from gateway.actions.pause import Pause
from gateway.actions.play import Play
from gateway.actions.redirect import Redirect
from gateway.actions.say import Say
from gateway.actions.transfer import Transfer

ACTIONS: dict[str, type[Action]] = {
    cls.name: cls
    for cls in (Conference, Play, Say, Pause, Gather, Redirect, Transfer, Hangup)
}
