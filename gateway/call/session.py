"""One call's life on the control plane: the asyncio side of a `CallRecord`.

The session implements `CallContext` for the actions over a `Services` value, reacts to the
SIP thread's events (looked up in a table by event type) and runs the action list in a task
that is cancelled when the caller hangs up. An outbound leg (a `transfer`) is a session too,
with `direction: outbound` and no action list of its own.

A new engine capability reaches actions without touching this module: an action sends its
command with `CallContext.command` and waits for the engine's answer with `next_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway import logs
from gateway.actions.base import Action
from gateway.actions.play import repeat
from gateway.call.record import CallRecord
from gateway.call.services import Services
from gateway.conferences import StatusHook
from gateway.config import Application
from gateway.hooks import AnswerUrlError
from gateway.interpreter import run_actions
from gateway.media_cache import MediaError
from gateway.recordings import AlreadyRecording, RecordingRefused
from gateway.webhook_events import ActionsEvent, LifecycleEvent
from media.rooms import Link, MemberOptions, RoomKey
from sip import commands as cmd
from sip import events as ev
from sip.engine import SipCommandError

log = logging.getLogger("minivoice.call")

_play_ids = itertools.count(1)

E = TypeVar("E")


class CallSession:
    def __init__(self, services: Services, app: Application, record: CallRecord,
                 parent: CallSession | None = None) -> None:
        self.services = services
        self.app = app
        self.rec = record
        self.call_id = record.call_id
        self.customer_id = app.customer_id
        self.parent = parent
        self.documents = 0  # action documents fetched (limits.max_documents_per_call)
        self.dtmf_dropped = 0
        self._answer_sent = False
        self._background: set[asyncio.Task[None]] = set()
        self._status_url: str | None = None  # for the next room joined
        self._media_ready = asyncio.Event()
        self._answered = asyncio.Event()
        self.ended = asyncio.Event()
        self.digits: asyncio.Queue[str] = asyncio.Queue(services.limits.max_dtmf_queue)
        self._plays: dict[int, asyncio.Future[None]] = {}
        self._waiters: list[tuple[type, asyncio.Future[Any]]] = []
        self.task: asyncio.Task[None] | None = None
        # call.completed is queued and will take the call's live row with it (CallTable)
        self.completion_queued = False
        # Another cluster node already sent this call's call.completed (it took this node
        # for dead: gateway.cluster.reconcile): none from here.
        self.completed_elsewhere: str | None = None
        self._ending: asyncio.Task[None] | None = None

    @classmethod
    def inbound(cls, services: Services, leg: ev.IncomingCall, app: Application
                ) -> CallSession:
        rec = CallRecord(
            call_id=leg.call_id, customer_id=app.customer_id, application_id=app.id,
            direction="inbound", from_user=leg.from_user, to=leg.dialed,
            sip={"sip_call_id": leg.sip_call_id, "from_uri": leg.from_uri,
                 "to_uri": leg.to_uri},
            created_at=time.time(), max_timeline=services.limits.max_timeline_entries)
        return cls(services, app, rec)

    # -- the record and the application's view of it ----------------------------------
    def record(self) -> dict[str, Any]:
        return self.rec.view()

    def webhook(self, event: LifecycleEvent, data: dict[str, Any] | None = None) -> None:
        if event == "call.completed" and data:
            # Its log line says how the call ended: several causes share one SIP code
            # (500: answer_url_error, action_url_error, media_error, sip_error,
            # internal_error), and the line is what tells them apart afterwards.
            self.rec.add_note(event, time.time())
            log.info(event, extra=logs.fields(call_id=self.call_id, **{
                k: data[k] for k in ("sip_code", "hangup_cause", "hangup_by") if k in data}))
        else:
            self.note(event)
        if self.app.event_url:
            last = event == "call.completed"
            queued = self.services.outbox.add(
                self.call_id, self.app.event_url, self.app.id,
                self.rec.envelope(event, time.time(), data), ends_call=last)
            self.completion_queued = self.completion_queued or (last and queued is not None)

    def note(self, event: str, **fields: Any) -> None:
        self.rec.add_note(event, time.time(), **fields)
        log.info(event, extra=logs.fields(call_id=self.call_id, **fields))

    # -- the flow ----------------------------------------------------------------------
    async def run(self, flow: Callable[[], Awaitable[None]] | None = None) -> None:
        """The call's flow (an inbound call's by default). Whatever goes wrong in it, the call
        is ended, never left hanging."""
        limit = self.services.limits.max_call_duration_s
        timer = asyncio.get_running_loop().call_later(
            limit, self._too_long) if limit else None
        try:
            await (flow or self._flow)()
        except asyncio.CancelledError:
            raise
        except AnswerUrlError as exc:  # from gather's action_url or redirect's url
            self._failed(exc)
            await self.end_call(500, exc.code, "Application Error")
        except MediaError as exc:  # a prompt that cannot be fetched or is not audio
            self.rec.error = {"code": "media_error", "message": str(exc)}
            self.note("media.error", message=str(exc))
            await self.end_call(500, "media_error", "Media Error")
        except SipCommandError as exc:  # pjsua refused (e.g. could not answer this INVITE)
            log.warning("sip.error", extra={"call_id": self.call_id, "error": str(exc)})
            self.rec.error = {"code": "sip_error", "message": "the SIP stack refused the call"}
            await self.end_call(500, "sip_error", "Server Internal Error")
        except Exception:
            log.exception("call flow failed", extra={"call_id": self.call_id})
            # The exception text stays in our log: it may hold paths, addresses, internals.
            self.rec.error = {"code": "internal_error", "message": "internal error"}
            await self.end_call(500, "internal_error", "Internal Server Error")
        finally:
            if timer is not None:
                timer.cancel()

    def _too_long(self) -> None:
        limit = self.services.limits.max_call_duration_s
        self.note("limit.max_call_duration", seconds=limit)
        self._ending = asyncio.create_task(
            self.end_call(408, "max_call_duration", "Maximum Call Duration"))

    async def _flow(self) -> None:
        self.webhook("call.initiated", self.rec.sip)
        urls = [self.app.answer_url] + ([self.app.fallback_url] if self.app.fallback_url else [])
        actions = await self._answer_document(urls, guarded=False)
        if actions is not None:
            await self._run_list(actions)

    async def _answer_document(self, urls: list[str], *, guarded: bool
                               ) -> tuple[Action, ...] | None:
        """The actions the answer_url (or its fallback) returns; None when it failed, and
        the call is then being ended (answer_url_error)."""
        self.documents += 1
        try:
            return await self.services.hooks.fetch_actions(
                urls, self.app.secret,
                self.rec.envelope("call.answer", time.time(), self.rec.sip), self.call_id,
                guarded=guarded)
        except AnswerUrlError as exc:
            self._failed(exc)
            await self.end_call(500, "answer_url_error", "Answer URL Error")
            return None

    async def _run_list(self, actions: tuple[Action, ...]) -> None:
        self.note("actions", actions=[a.name for a in actions])
        await run_actions(actions, self)
        if not self.rec.ending:
            await self.end_call(603, "actions_exhausted", "")

    async def placed_flow(self, answer_url: str | None, actions: tuple[Action, ...] | None,
                          timeout: float) -> None:
        """The flow of a call placed through the API (call.initiated is sent by the dialer):
        ring for up to `timeout`, then run `actions`, or those `answer_url` returns."""
        try:
            await asyncio.wait_for(self.answered_or_ended(), timeout)
        except TimeoutError:
            self.rec.outcome = "no-answer"
            await self.end_call(487, "no-answer", "Request Terminated")
            return
        if self.ended.is_set():
            return
        self._answer_sent = True  # the far end answered: actions must not answer again
        if actions is None:
            assert answer_url is not None
            # The URL came with the API request, not from the config: it follows the
            # network rules of response URLs.
            actions = await self._answer_document([answer_url], guarded=True)
        if actions is not None:
            await self._run_list(actions)

    def _failed(self, exc: AnswerUrlError) -> None:
        self.rec.error = exc.as_error()
        self.note(f"{exc.code}", message=exc.message, details=[d.as_dict() for d in exc.details])

    async def end_call(self, code: int, cause: str, reason: str, by: str = "gateway") -> None:
        """Hang up (or reject with `code` before answer), once; `call.completed` follows
        when the SIP side confirms, with `cause` and `by`."""
        if self.rec.ending:
            return
        self.rec.hangup_cause, self.rec.hangup_by = cause, by
        await self.services.engine.send(cmd.Hangup(self.call_id, code, reason, cause))

    # -- CallContext for actions -------------------------------------------------------
    async def answer(self, jb_max_ms: int = 0) -> None:
        """`jb_max_ms`: a cluster's cascade leg's jitter buffer (cmd.Answer.jb_max_ms)."""
        if not self._answer_sent:
            self._answer_sent = True
            await self.services.engine.send(cmd.Answer(self.call_id, jb_max_ms=jb_max_ms))
        await self._media_ready.wait()

    async def hangup(self, reason: str | None = None) -> None:
        self.rec.hangup_reason = reason
        await self.end_call(603, "hangup_action", reason or "")

    async def conference(self, room: str, options: MemberOptions) -> None:
        self.rec.room = room
        status = StatusHook(self._status_url, self.app.id) if self._status_url else None
        self._status_url = None
        try:
            # with itself as the room's caller: its timeline, its digits (DTMF controls)
            why = await self.services.rooms.join(RoomKey(self.customer_id, room), self.call_id,
                                                 options, caller=self, status=status)
            self.note("conference.left", room=room, why=why)
        finally:
            self.rec.room = None

    def room_status_url(self, url: str) -> None:
        self._status_url = url

    def record_room(self, room: str) -> None:
        # A task of its own: it runs once this one waits in the room, i.e. has joined.
        task = asyncio.create_task(self._record_room(RoomKey(self.customer_id, room)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _record_room(self, key: RoomKey) -> None:
        if self.services.recorder is None:
            self.note("recording.refused", room=key.name, reason="unavailable")
            return
        try:
            row = await self.services.recorder.start(key, self.app, by=self.call_id)
            self.note("recording.started", room=key.name, recording_id=row.rec_id)
        except AlreadyRecording:
            pass
        except RecordingRefused as exc:
            self.note("recording.refused", room=key.name, reason=exc.reason, message=str(exc))

    async def prompt_file(self, url: str) -> Path:
        return await self.services.media.fetch(url)

    async def prompt_speech(self, text: str, voice: str | None) -> Path:
        return await self.services.media.speak(text, voice)

    async def play(self, path: Path) -> None:
        play_id = next(_play_ids)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._plays[play_id] = done
        try:
            await self.services.engine.send(cmd.Play(self.call_id, str(path), play_id))
            await done
        finally:
            self._plays.pop(play_id, None)
            # Interrupted (a digit, a hang-up): stop the player. Cancelling our task also
            # cancels `done`, so "cancelled" means interrupted too.
            if not done.done() or done.cancelled():
                self.services.send_quiet(cmd.StopPlay(self.call_id, play_id))

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
        cap = self.services.limits.max_documents_per_call
        if self.documents > cap:  # the answer_url document counts too
            raise AnswerUrlError(f"more than {cap} action documents in one call "
                                 "(limits.max_documents_per_call)", code="action_url_error")
        actions = await self.services.hooks.fetch_actions(
            [url], self.app.secret, self.rec.envelope(event, time.time(), data), self.call_id,
            kind="action_url", error_code="action_url_error")
        self.note("actions", source=event, actions=[a.name for a in actions])
        return actions

    async def transfer(self, to: str, caller_id: str | None, timeout: float) -> str:
        try:
            uri = await self.services.dial_target(to)
        except ValueError as exc:
            self.note("transfer.failed", to=to, reason=str(exc))
            return "failed"
        child = await self.services.dialer(self.services, self.app, uri,
                                           caller_id or self.rec.from_user, self)
        ringback = asyncio.create_task(repeat(self, self.services.ringback, 0))
        try:
            try:
                await asyncio.wait_for(child.answered_or_ended(), timeout)
            except TimeoutError:
                child.rec.outcome = "no-answer"
                await child.cancel_leg()
                await child.ended.wait()
                return "no-answer"
            finally:
                ringback.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ringback
            if child.ended.is_set():
                return child.rec.outcome or "failed"
            self.services.send_quiet(cmd.ApplyLinks(
                connect=(Link(self.call_id, child.call_id), Link(child.call_id, self.call_id))))
            self.note("transfer.bridged", child_call_id=child.call_id)
            await child.ended.wait()
            return "answered"
        finally:
            if not child.ended.is_set():  # we were cancelled: the caller hung up
                await child.cancel_leg()

    async def command(self, command: cmd.Command) -> Any:
        """Send any engine command; its result (or SipCommandError)."""
        return await self.services.engine.send(command)

    async def next_event(self, kind: type[E], timeout: float | None = None) -> E | None:
        """The next SIP event of type `kind` for this call, or None after `timeout`."""
        fut: asyncio.Future[E] = asyncio.get_running_loop().create_future()
        entry = (kind, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    # -- the leg as seen by the one that dialed it ---------------------------------------
    async def answered_or_ended(self) -> None:
        """Until the far end has answered and its media is up, or the leg has ended. Both,
        not either: the SIP thread can report the media before the 200 OK's state change,
        and an answer_url asked in between was told the call was still ringing."""
        async def answered_with_media() -> None:
            await self._answered.wait()
            await self._media_ready.wait()
        ready = asyncio.create_task(answered_with_media())
        ended = asyncio.create_task(self.ended.wait())
        try:
            await asyncio.wait({ready, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            ended.cancel()

    async def cancel_leg(self) -> None:
        if not self.ended.is_set():
            await self.end_call(487, "transfer_ended", "Request Terminated")

    # -- SIP events (see HANDLERS) -------------------------------------------------------
    def handle(self, event: ev.Event) -> None:
        handler = HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)
        for kind, fut in list(self._waiters):
            if isinstance(event, kind) and not fut.done():
                fut.set_result(event)

    def on_answered(self, event: ev.CallAnswered | None = None) -> None:
        self.rec.answered(time.time())
        self._answered.set()
        self.webhook("call.answered")
        self.services.calls.remember(self)  # the stored record now says answered

    def on_media(self, event: ev.MediaReady) -> None:
        self.rec.codec = event.codec
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

    def on_progress(self, event: ev.CallProgress) -> None:
        self.note("progress", sip_code=event.code)

    def on_ended(self, sip_code: int, by_gateway: bool, cause: str) -> None:
        """The call is over (called by the ledger, the one finish path)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.rec.ended(time.time(), sip_code=sip_code, by_gateway=by_gateway, cause=cause)
        self.ended.set()
        if self.completed_elsewhere is None:
            self.webhook("call.completed", self.rec.completed_data())
        else:
            self.note("call.completed_elsewhere", node=self.completed_elsewhere)


HANDLERS: dict[type, Callable[[CallSession, Any], None]] = {
    ev.CallAnswered: CallSession.on_answered,
    ev.MediaReady: CallSession.on_media,
    ev.DtmfDigit: CallSession.on_dtmf,
    ev.PlayDone: CallSession.on_play_done,
    ev.CallProgress: CallSession.on_progress,
}
