"""Conference events to a room's `status_url` (docs/api.md, "Conference events"): the
lifecycle envelope with `conference` added, queued in the durable outbox under one stream
per room, so that one room's events arrive in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from gateway.call.session import CallSession
from gateway.call.table import CallTable
from gateway.conferences import Conferences
from gateway.config import Application
from gateway.outbox import Outbox
from gateway.store import Recording
from gateway.timestamps import iso
from gateway.webhook_events import RoomEvent
from media.rooms import RoomKey


def room_stream(customer_id: str, room: str) -> str:
    """The outbox's ordering key of a room's events (its MiniVoice-Call-Id header too)."""
    return f"room:{customer_id}:{room}"


class RoomEvents:
    def __init__(self, outbox: Outbox, calls: CallTable, rooms: Conferences,
                 applications: Sequence[Application]) -> None:
        self.outbox = outbox
        self.calls = calls
        self.rooms = rooms
        self.applications = {a.id: a for a in applications}
        # Participants of rooms with a status_url: their call, for events after it ended.
        self._participants: dict[str, CallSession] = {}

    def recording(self, row: Recording, data: dict[str, Any]) -> None:
        """Queue recording.completed: to the room's status_url if it had one, else to the
        recording application's event_url; ordered with the room's other events."""
        app = self.applications.get(row.app_id)
        url = row.status_url or (app.event_url if app else None)
        if app is None or url is None:
            return
        key = RoomKey(row.customer_id, row.room)
        room = self.rooms.room(key)
        self._queue(key, url, app.id, "recording.completed", None,
                    len(room.members) if room else 0, data)

    def room(self, key: RoomKey, event: str, call_id: str | None, participants: int,
             data: dict[str, Any]) -> None:
        """A conference event of a room with a status_url (Conferences.on_event)."""
        hook = self.rooms.status.get(key)
        if hook is None:
            return
        session = None
        if call_id is not None:
            # A participant's call may have ended before it left the room: kept from its join.
            session = self.calls.get(call_id) or self._participants.get(call_id)
            if event == "participant.joined" and session is not None:
                self._participants[call_id] = session
            elif event == "participant.left":
                self._participants.pop(call_id, None)
        self._queue(key, hook.url, hook.app_id, cast(RoomEvent, event), session,
                    participants, data)

    def _queue(self, key: RoomKey, url: str, app_id: str, event: RoomEvent,
               session: CallSession | None, participants: int, data: dict[str, Any]) -> None:
        payload = {"event": event, "created_at": iso(),
                   "call": session.rec.call_view() if session is not None else None,
                   "variables": {}, "data": data,
                   "conference": {"room": key.name, "customer_id": key.customer_id,
                                  "participants": participants}}
        self.outbox.add(room_stream(key.customer_id, key.name), url, app_id, payload)
