"""Outbound legs: a call the gateway places (a `transfer`, or `POST /v1/calls`). The leg is
an ordinary `CallSession` with `direction: outbound`; it ends through the same path as any
call."""

from __future__ import annotations

import asyncio
import time

from gateway.actions.base import Action
from gateway.call.record import CallRecord
from gateway.call.services import Services
from gateway.call.session import CallSession
from gateway.config import Application
from sip import commands as cmd
from sip.engine import SipCommandError
from sip.events import new_call_id
from sip.sipmsg import uri_user


async def dial(services: Services, app: Application, uri: str, from_user: str,
               parent: CallSession | None,
               headers: tuple[tuple[str, str], ...] = (),
               jb_max_ms: int = 0) -> CallSession:
    """Place the leg; it is live (in the ledger, call.initiated sent) when this returns.
    If the SIP stack refuses to even start it, it has already ended (outcome failed)."""
    call_id = new_call_id()
    sip = {"to_uri": uri} | ({"parent_call_id": parent.call_id} if parent else {})
    rec = CallRecord(
        call_id=call_id, customer_id=app.customer_id, application_id=app.id,
        direction="outbound", from_user=from_user, to=uri_user(uri) or uri, sip=sip,
        created_at=time.time(), max_timeline=services.limits.max_timeline_entries,
        parent_call_id=parent.call_id if parent else None)
    leg = CallSession(services, app, rec, parent)
    services.calls.admit(leg)
    leg.note("dial", **({"parent_call_id": parent.call_id} if parent else {}), uri=uri)
    leg.webhook("call.initiated", sip)
    try:
        await services.engine.send(cmd.Dial(call_id, uri, from_user, headers,
                                            jb_max_ms=jb_max_ms))
    except SipCommandError as exc:
        # No SIP dialog was created: the leg ends here, as the SIP thread would end it.
        rec.error = {"code": "dial_failed", "message": str(exc)}
        rec.outcome = "failed"
        services.calls.finish(leg, 500, str(exc), True, "dial_failed")
    return leg


async def place(services: Services, app: Application, uri: str, from_user: str, *,
                answer_url: str | None, actions: tuple[Action, ...] | None,
                timeout: float) -> CallSession:
    """A call placed through the API: dialled now; once answered it runs `actions`, or what
    `answer_url` returns."""
    leg = await dial(services, app, uri, from_user, None)
    if not leg.ended.is_set():
        leg.task = asyncio.create_task(
            leg.run(lambda: leg.placed_flow(answer_url, actions, timeout)), name=leg.call_id)
    return leg
