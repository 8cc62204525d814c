"""One call's life on the control plane: its state, its timeline, its webhooks.

The session is the single source of the JSON the application sees about a call
(answer_url request, lifecycle webhooks) and implements `CallContext` for the
actions. It reacts to SIP events (answered, media ready, ended) and runs the
action list in a task that is cancelled when the caller hangs up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway import logs
from gateway.config import Application
from gateway.hooks import AnswerUrlError
from gateway.interpreter import run_actions
from media.rooms import RoomKey
from sip import commands as cmd
from sip import events as ev

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("minivoice.call")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CallSession:
    def __init__(self, gw: Gateway, incoming: ev.IncomingCall, app: Application) -> None:
        self.gw = gw
        self.incoming = incoming
        self.app = app
        self.call_id = incoming.call_id
        self.customer_id = app.customer_id
        self.status = "ringing"
        self.created_at = time.time()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.timeline: list[dict[str, Any]] = []
        self.error: dict[str, Any] | None = None
        self.hangup_by: str | None = None  # set when the gateway or the API ends the call
        self.hangup_cause: str | None = None
        self.hangup_reason: str | None = None
        self.sip_code: int | None = None
        self.room: RoomKey | None = None
        self.codec: str | None = None
        self._answer_sent = False
        self._media_ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    # -- the JSON the application sees -----------------------------------------------
    def call_view(self) -> dict[str, Any]:
        return {
            "id": self.call_id,
            "customer_id": self.app.customer_id,
            "application_id": self.app.id,
            "status": self.status,
            "direction": "inbound",
            "from": self.incoming.from_user,
            "to": self.incoming.dialed,
        }

    def envelope(self, event: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "event": event,
            "created_at": iso(time.time()),
            "call": self.call_view(),
            "variables": {},
            "data": data if data is not None else {},
        }

    def sip_data(self) -> dict[str, Any]:
        return {"sip_call_id": self.incoming.sip_call_id, "from_uri": self.incoming.from_uri,
                "to_uri": self.incoming.to_uri}

    def record(self) -> dict[str, Any]:
        """The call's full public record (REST API, SQLite)."""
        return {
            **self.call_view(),
            "created_at": iso(self.created_at),
            "answered_at": iso(self.answered_at) if self.answered_at else None,
            "ended_at": iso(self.ended_at) if self.ended_at else None,
            "room": self.room.name if self.room else None,
            "codec": self.codec,
            "hangup_cause": self.hangup_cause,
            "hangup_by": self.hangup_by,
            "sip_code": self.sip_code,
            "error": self.error,
            "timeline": self.timeline,
        }

    def _webhook(self, event: str, data: dict[str, Any] | None = None) -> None:
        self.note(event)
        if self.app.event_url:
            self.gw.outbox.enqueue(self.call_id, self.app.event_url, self.app.secret,
                                   self.envelope(event, data))

    def note(self, event: str, **fields: Any) -> None:
        self.timeline.append({"at": iso(time.time()), "event": event, **fields})
        log.info(event, extra=logs.fields(call_id=self.call_id, **fields))

    # -- the flow ----------------------------------------------------------------------
    async def run(self) -> None:
        """The call's flow. Whatever goes wrong in it, the call is ended, never left hanging."""
        try:
            await self._flow()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("call flow failed", extra={"call_id": self.call_id})
            self.error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            await self._end(500, "internal_error", "Internal Server Error")

    async def _flow(self) -> None:
        self._webhook("call.initiated", self.sip_data())
        urls = [self.app.answer_url] + ([self.app.fallback_url] if self.app.fallback_url else [])
        try:
            actions = await self.gw.hooks.fetch_actions(
                urls, self.app.secret, self.envelope("call.answer", self.sip_data()),
                self.call_id)
        except AnswerUrlError as exc:
            self.error = exc.as_error()
            self.note("answer_url.error", message=exc.message,
                      details=[d.as_dict() for d in exc.details])
            await self._end(500, "answer_url_error", "Answer URL Error")
            return
        self.note("actions", actions=[a.name for a in actions])
        await run_actions(actions, self)
        if self.ended_at is None and self.hangup_cause is None:
            await self._end(603, "actions_exhausted", "")

    async def _end(self, code: int, cause: str, reason: str, by: str = "gateway") -> None:
        if self.ended_at is not None or self.hangup_cause is not None:
            return
        self.hangup_cause, self.hangup_by = cause, by
        await self.gw.engine.send(cmd.Hangup(self.call_id, code, reason))

    # -- CallContext for actions -------------------------------------------------------
    async def answer(self) -> None:
        if not self._answer_sent:
            self._answer_sent = True
            await self.gw.engine.send(cmd.Answer(self.call_id))
        await self._media_ready.wait()

    async def hangup(self, reason: str | None = None) -> None:
        self.hangup_reason = reason
        await self._end(603, "hangup_action", reason or "")

    async def conference(self, room: str, *, mute: bool, end_on_exit: bool) -> None:
        self.room = RoomKey(self.customer_id, room)
        try:
            why = await self.gw.conferences.join(self.room, self.call_id, mute=mute,
                                                 end_on_exit=end_on_exit)
            self.note("conference.left", room=room, why=why)
        finally:
            self.room = None

    # -- SIP events --------------------------------------------------------------------
    def on_answered(self) -> None:
        self.answered_at = time.time()
        self.status = "in-progress"
        self._webhook("call.answered")

    def on_media(self, event: ev.MediaReady) -> None:
        self.codec = event.codec
        self._media_ready.set()

    def on_ended(self, event: ev.CallEnded) -> None:
        self.ended_at = time.time()
        self.sip_code = event.sip_code
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if not event.by_gateway:
            self.hangup_by = "caller"
            self.hangup_cause = "normal_clearing" if self.answered_at else "originator_cancel"
        elif event.cause != "normal":
            self.hangup_by, self.hangup_cause = "gateway", event.cause
        elif self.hangup_by is None:
            self.hangup_by, self.hangup_cause = "gateway", "shutdown"
        if self.error:
            self.status = "failed"
        elif self.answered_at:
            self.status = "completed"
        elif self.hangup_by == "caller":
            self.status = "canceled"
        else:
            self.status = "completed" if self.hangup_cause == "hangup_action" else "failed"
        data: dict[str, Any] = {
            "duration_s": round(self.ended_at - self.answered_at, 3) if self.answered_at else 0,
            "hangup_cause": self.hangup_cause,
            "hangup_by": self.hangup_by,
            "sip_code": self.sip_code,
        }
        if self.hangup_reason:
            data["hangup_reason"] = self.hangup_reason
        if self.error:
            data["error"] = self.error
        self._webhook("call.completed", data)
