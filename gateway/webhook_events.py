"""The catalogue of event names the gateway sends to applications (the `event` field of every
signed POST). docs/api.md describes each one.

Lifecycle webhooks go to `event_url` through the outbox; the others are requests for actions,
to `answer_url`/`fallback_url` and to the `action_url`/`url` of a gather or redirect.
"""

from __future__ import annotations

from typing import Literal, get_args

LifecycleEvent = Literal["call.initiated", "call.answered", "call.completed"]
ActionsEvent = Literal["call.answer", "call.gather", "call.redirect"]
# About a room (to its status_url; recording.completed without one goes to event_url), through
# the outbox like lifecycle events. `call` is the participant's, null for conference.* and
# recording.*.
RoomEvent = Literal[
    "conference.started", "conference.ended", "participant.joined", "participant.left",
    "participant.muted", "participant.unmuted", "participant.held", "participant.unheld",
    "participant.speaking.started", "participant.speaking.stopped", "recording.completed",
    "conference.owner_changed"]
EventName = LifecycleEvent | ActionsEvent | RoomEvent

LIFECYCLE_EVENTS: tuple[LifecycleEvent, ...] = get_args(LifecycleEvent)
ACTIONS_EVENTS: tuple[ActionsEvent, ...] = get_args(ActionsEvent)
ROOM_EVENTS: tuple[RoomEvent, ...] = get_args(RoomEvent)
EVENT_NAMES: tuple[EventName, ...] = (*LIFECYCLE_EVENTS, *ACTIONS_EVENTS, *ROOM_EVENTS)
