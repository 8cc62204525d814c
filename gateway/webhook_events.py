"""The catalogue of event names the gateway sends to applications (the `event` field of every
signed POST). docs/api.md describes each one.

Lifecycle webhooks go to `event_url` through the outbox; the others are requests for actions,
to `answer_url`/`fallback_url` and to the `action_url`/`url` of a gather or redirect.
"""

from __future__ import annotations

from typing import Literal, get_args

LifecycleEvent = Literal["call.initiated", "call.answered", "call.completed"]
ActionsEvent = Literal["call.answer", "call.gather", "call.redirect"]
# About a room rather than a call (`call` is null), through the outbox like lifecycle events.
RoomEvent = Literal["recording.completed"]
EventName = LifecycleEvent | ActionsEvent | RoomEvent

LIFECYCLE_EVENTS: tuple[LifecycleEvent, ...] = get_args(LifecycleEvent)
ACTIONS_EVENTS: tuple[ActionsEvent, ...] = get_args(ActionsEvent)
ROOM_EVENTS: tuple[RoomEvent, ...] = get_args(RoomEvent)
EVENT_NAMES: tuple[EventName, ...] = (*LIFECYCLE_EVENTS, *ACTIONS_EVENTS, *ROOM_EVENTS)
