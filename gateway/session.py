"""One call's life on the control plane: its state, its timeline, its webhooks.

The session is the single source of the JSON the application sees about a call
(answer_url request, lifecycle webhooks) and implements `CallContext` for the
actions. It reacts to SIP events (answered, media ready, DTMF, end of a prompt,
ended) and runs the action list in a task that is cancelled when the caller hangs up.
An outbound leg (from `transfer`) is a session too, with no action list of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import logs
from gateway.actions.base import Action
from gateway.actions.play import repeat
from gateway.conferences import StatusHook
from gateway.config import Application
from gateway.hooks import AnswerUrlError
from gateway.interpreter import run_actions
from gateway.media_cache import MediaError
from gateway.recordings import AlreadyRecording, RecordingRefused
from gateway.timestamps import iso
from gateway.webhook_events import ActionsEvent, EventName, LifecycleEvent
from media.rooms import Link, RoomKey
from sip import commands as cmd
from sip import events as ev
from sip.engine import SipCommandError
from sip.events import new_call_id
from sip.sipmsg import uri_user

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("minivoice.call")

_play_ids = itertools.count(1)




def dial_outcome(sip_code: int) -> str:
    """What a failed outbound attempt means to an application."""
    if sip_code in (486, 600, 603):
        return "busy"
    if sip_code in (408, 480, 487):
        return "no-answer"
    return "failed"


class CallSession:
    direction = "inbound"

    def __init__(self, gw: Gateway, leg: ev.IncomingCall, app: Application) -> None:
        self.gw = gw
        self.incoming = leg
        self.app = app
        self.call_id = leg.call_id
        self.customer_id = app.customer_id
        self.status = "ringing"
        self.created_at = time.time()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.timeline: list[dict[str, Any]] = []
        self.timeline_dropped = 0
        self.dtmf_dropped = 0
        self.documents = 0  # action documents fetched (limits.max_documents_per_call)
        self.error: dict[str, Any] | None = None
        self.hangup_by: str | None = None  # set when the gateway or the API ends the call
        self.hangup_cause: str | None = None
        self.hangup_reason: str | None = None
        self.sip_code: int | None = None
        self.room: RoomKey | None = None
        self.codec: str | None = None
        self._answer_sent = False
        self._background: set[asyncio.Task[None]] = set()
        self._status_url: str | None = None  # for the next room joined
        self._media_ready = asyncio.Event()
        self.ended = asyncio.Event()
        self.digits: asyncio.Queue[str] = asyncio.Queue(gw.cfg.limits.max_dtmf_queue)
        self._plays: dict[int, asyncio.Future[None]] = {}
        self.task: asyncio.Task[None] | None = None
        # call.completed is queued and will take the call's live row with it (app.finish)
        self.completion_queued = False
        self._ending: asyncio.Task[None] | None = None

    # -- the JSON the application sees -----------------------------------------------
    def call_view(self) -> dict[str, Any]:
        return {
            "id": self.call_id,
            "customer_id": self.app.customer_id,
            "application_id": self.app.id,
            "status": self.status,
            "direction": self.direction,
            "from": self.incoming.from_user,
            "to": self.incoming.dialed,
        }

    def envelope(self, event: EventName, data: dict[str, Any] | None = None) -> dict[str, Any]:
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
            **({"timeline_dropped": self.timeline_dropped} if self.timeline_dropped else {}),
        }

    def _webhook(self, event: LifecycleEvent, data: dict[str, Any] | None = None) -> None:
        self.note(event)
        if self.app.event_url:
            last = event == "call.completed"
            queued = self.gw.outbox.add(self.call_id, self.app.event_url, self.app.id,
                                        self.envelope(event, data), ends_call=last)
            self.completion_queued = self.completion_queued or (last and queued is not None)

    def note(self, event: str, **fields: Any) -> None:
        if len(self.timeline) < self.gw.cfg.limits.max_timeline_entries:
            self.timeline.append({"at": iso(time.time()), "event": event, **fields})
        else:  # a DTMF flood (RFC 4733 over RTP) must not grow the record without end
            self.timeline_dropped += 1
        log.info(event, extra=logs.fields(call_id=self.call_id, **fields))

    # -- the flow ----------------------------------------------------------------------
    async def run(self) -> None:
        """The call's flow. Whatever goes wrong in it, the call is ended, never left hanging."""
        limit = self.gw.cfg.limits.max_call_duration_s
        timer = asyncio.get_running_loop().call_later(
            limit, self._too_long) if limit else None
        try:
            await self._flow()
        except asyncio.CancelledError:
            raise
        except AnswerUrlError as exc:  # from gather's action_url or redirect's url
            self._failed(exc)
            await self.end_call(500, exc.code, "Application Error")
        except MediaError as exc:  # a prompt that cannot be fetched or is not audio
            self.error = {"code": "media_error", "message": str(exc)}
            self.note("media.error", message=str(exc))
            await self.end_call(500, "media_error", "Media Error")
        except SipCommandError as exc:  # pjsua refused (e.g. could not answer this INVITE)
            log.warning("sip.error", extra={"call_id": self.call_id, "error": str(exc)})
            self.error = {"code": "sip_error", "message": "the SIP stack refused the call"}
            await self.end_call(500, "sip_error", "Server Internal Error")
        except Exception:
            log.exception("call flow failed", extra={"call_id": self.call_id})
            # The exception text stays in our log: it may hold paths, addresses, internals.
            self.error = {"code": "internal_error", "message": "internal error"}
            await self.end_call(500, "internal_error", "Internal Server Error")
        finally:
            if timer is not None:
                timer.cancel()

    def _too_long(self) -> None:
        limit = self.gw.cfg.limits.max_call_duration_s
        self.note("limit.max_call_duration", seconds=limit)
        self._ending = asyncio.create_task(
            self.end_call(408, "max_call_duration", "Maximum Call Duration"))

    async def _flow(self) -> None:
        self._webhook("call.initiated", self.sip_data())
        self.documents += 1
        urls = [self.app.answer_url] + ([self.app.fallback_url] if self.app.fallback_url else [])
        try:
            actions = await self.gw.hooks.fetch_actions(
                urls, self.app.secret, self.envelope("call.answer", self.sip_data()),
                self.call_id)
        except AnswerUrlError as exc:
            self._failed(exc)
            await self.end_call(500, "answer_url_error", "Answer URL Error")
            return
        self.note("actions", actions=[a.name for a in actions])
        await run_actions(actions, self)
        if self.ended_at is None and self.hangup_cause is None:
            await self.end_call(603, "actions_exhausted", "")

    def _failed(self, exc: AnswerUrlError) -> None:
        self.error = exc.as_error()
        self.note(f"{exc.code}", message=exc.message, details=[d.as_dict() for d in exc.details])

    async def end_call(self, code: int, cause: str, reason: str, by: str = "gateway") -> None:
        """Hang up (or reject with `code` before answer), once; `call.completed` follows
        when the SIP side confirms, with `cause` and `by`."""
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
        await self.end_call(603, "hangup_action", reason or "")

    async def conference(self, room: str, *, mute: bool, end_on_exit: bool) -> None:
        self.room = RoomKey(self.customer_id, room)
        status = StatusHook(self._status_url, self.app.id) if self._status_url else None
        self._status_url = None
        try:
            why = await self.gw.conferences.join(self.room, self.call_id, mute=mute,
                                                 end_on_exit=end_on_exit, status=status)
            self.note("conference.left", room=room, why=why)
        finally:
            self.room = None

    def room_status_url(self, url: str) -> None:
        self._status_url = url

    def record_room(self, room: str) -> None:
        # A task of its own: it runs once this one waits in the room, i.e. has joined.
        task = asyncio.create_task(self._record_room(RoomKey(self.customer_id, room)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _record_room(self, key: RoomKey) -> None:
        try:
            row = await self.gw.recordings.start(
                key, self.app, status=self.gw.conferences.status.get(key), by=self.call_id)
            self.note("recording.started", room=key.name, recording_id=row.rec_id)
        except AlreadyRecording:
            pass
        except RecordingRefused as exc:
            self.note("recording.refused", room=key.name, reason=exc.reason, message=str(exc))

    async def prompt_file(self, url: str) -> Path:
        return await self.gw.media.fetch(url)

    async def prompt_speech(self, text: str, voice: str | None) -> Path:
        return await self.gw.media.speak(text, voice)

    async def play(self, path: Path) -> None:
        play_id = next(_play_ids)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._plays[play_id] = done
        try:
            await self.gw.engine.send(cmd.Play(self.call_id, str(path), play_id))
            await done
        finally:
            self._plays.pop(play_id, None)
            # Interrupted (a digit, a hang-up): stop the player. Cancelling our task also
            # cancels `done`, so "cancelled" means interrupted too.
            if not done.done() or done.cancelled():
                self.gw.send_quiet(cmd.StopPlay(self.call_id, play_id))

    def clear_digits(self) -> None:
        while not self.digits.empty():
            self.digits.get_nowait()

    async def next_digit(self, timeout: float | None) -> str | None:
        try:
            return await asyncio.wait_for(self.digits.get(), timeout)
        except TimeoutError:
            return None

    async def fetch_actions(
        self, url: str, event: ActionsEvent, data: dict[str, Any]
    ) -> tuple[Action, ...]:
        self.documents += 1
        cap = self.gw.cfg.limits.max_documents_per_call
        if self.documents > cap:  # the answer_url document counts too
            raise AnswerUrlError(f"more than {cap} action documents in one call "
                                 "(limits.max_documents_per_call)", code="action_url_error")
        actions = await self.gw.hooks.fetch_actions(
            [url], self.app.secret, self.envelope(event, data), self.call_id,
            kind="action_url", error_code="action_url_error")
        self.note("actions", source=event, actions=[a.name for a in actions])
        return actions

    async def transfer(self, to: str, caller_id: str | None, timeout: float) -> str:
        try:
            uri = self.gw.dial_uri(to)
        except ValueError as exc:
            self.note("transfer.failed", to=to, reason=str(exc))
            return "failed"
        child = await self.gw.dial(self, uri, caller_id or self.incoming.from_user)
        ringback = asyncio.create_task(repeat(self, self.gw.ringback, 0))
        try:
            try:
                await asyncio.wait_for(child.answered_or_ended(), timeout)
            except TimeoutError:
                child.outcome = "no-answer"
                await child.cancel_leg()
                await child.ended.wait()
                return "no-answer"
            finally:
                ringback.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ringback
            if child.ended.is_set():
                return child.outcome or "failed"
            self.gw.send_quiet(cmd.ApplyLinks(
                connect=(Link(self.call_id, child.call_id), Link(child.call_id, self.call_id))))
            self.note("transfer.bridged", child_call_id=child.call_id)
            await child.ended.wait()
            return "answered"
        finally:
            if not child.ended.is_set():  # we were cancelled: the caller hung up
                await child.cancel_leg()

    # -- SIP events --------------------------------------------------------------------
    def on_answered(self) -> None:
        self.answered_at = time.time()
        self.status = "in-progress"
        self._webhook("call.answered")

    def on_media(self, event: ev.MediaReady) -> None:
        self.codec = event.codec
        self._media_ready.set()

    def on_dtmf(self, event: ev.DtmfDigit) -> None:
        if self.digits.full():  # nobody is reading them: a flood, not a caller typing
            self.dtmf_dropped += 1
            if self.dtmf_dropped == 1:  # one line, not one per digit of the flood
                self.note("dtmf.dropped", digit=event.digit, method=event.method)
            return
        self.note("dtmf", digit=event.digit, method=event.method)
        self.digits.put_nowait(event.digit)

    def on_play_done(self, event: ev.PlayDone) -> None:
        done = self._plays.get(event.play_id)
        if done is not None and not done.done():
            done.set_result(None)

    def on_ended(self, event: ev.CallEnded) -> None:
        self.ended_at = time.time()
        self.sip_code = event.sip_code
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._classify_end(event)
        data: dict[str, Any] = {
            "duration_s": round(self.ended_at - self.answered_at, 3) if self.answered_at else 0,
            "hangup_cause": self.hangup_cause,
            "hangup_by": self.hangup_by,
            "sip_code": self.sip_code,
        }
        if self.hangup_reason:
            data["hangup_reason"] = self.hangup_reason
        data.update(self.extra_completed_data())
        if self.error:
            data["error"] = self.error
        self.ended.set()
        self._webhook("call.completed", data)

    def _classify_end(self, event: ev.CallEnded) -> None:
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
        elif self.hangup_cause == "hangup_action":
            self.status = "completed"
        else:
            self.status = "canceled" if self.hangup_by == "api" else "failed"

    def extra_completed_data(self) -> dict[str, Any]:
        return {}


class OutboundSession(CallSession):
    """The leg a `transfer` dials: webhooks of its own, linked to its parent."""

    direction = "outbound"

    def __init__(self, gw: Gateway, parent: CallSession, uri: str, from_user: str) -> None:
        leg = ev.IncomingCall(call_id=new_call_id(), sip_call_id="", from_uri="", to_uri=uri,
                              from_user=from_user, dialed=uri_user(uri) or uri, source="")
        super().__init__(gw, leg, parent.app)
        self.parent = parent
        self.uri = uri
        self.outcome: str | None = None

    def sip_data(self) -> dict[str, Any]:
        return {"to_uri": self.uri, "parent_call_id": self.parent.call_id}

    async def answered_or_ended(self) -> None:
        media = asyncio.create_task(self._media_ready.wait())
        ended = asyncio.create_task(self.ended.wait())
        try:
            await asyncio.wait({media, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            media.cancel()
            ended.cancel()

    async def cancel_leg(self) -> None:
        if not self.ended.is_set():
            await self.end_call(487, "transfer_ended", "Request Terminated")

    def _classify_end(self, event: ev.CallEnded) -> None:
        if self.answered_at:
            self.outcome = "answered"
            self.status = "completed"
            if event.by_gateway:
                self.hangup_by = self.hangup_by or "gateway"
                self.hangup_cause = self.hangup_cause or "parent_hangup"
            else:
                self.hangup_by, self.hangup_cause = "callee", "normal_clearing"
            return
        if self.outcome is None:
            self.outcome = "canceled" if self.hangup_by else dial_outcome(event.sip_code)
        self.status = {"busy": "busy", "no-answer": "no-answer",
                       "canceled": "canceled"}.get(self.outcome, "failed")
        self.hangup_by = self.hangup_by or "callee"
        self.hangup_cause = self.hangup_cause or self.outcome

    def extra_completed_data(self) -> dict[str, Any]:
        return {"parent_call_id": self.parent.call_id, "outcome": self.outcome}
