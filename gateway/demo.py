"""The embedded demo application, served by the gateway itself at /demo/*.

It is what a first answer_url app looks like: verify the signature, return
actions, log the webhooks. Dialing number N puts the caller in room
`support-room-N`, so two softphones dialing 1001 talk to each other.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence

from aiohttp import web

from gateway import signing
from gateway.config import Application
from gateway.strict import ValidationError, parse_json

log = logging.getLogger("minivoice.demo")

SECRET_KEY: web.AppKey[str] = web.AppKey("demo_secret")


def secret_from(apps: Sequence[Application]) -> str:
    """The demo verifies signatures with the secret of the application that points at it."""
    for a in apps:
        if a.answer_url.endswith("/demo/answer"):
            return a.secret
    return apps[0].secret


def setup(app: web.Application, secret: str) -> None:
    app[SECRET_KEY] = secret
    app.router.add_post("/demo/answer", answer)
    app.router.add_post("/demo/events", events)


def room_for(dialed: str) -> str:
    return "support-room-" + (re.sub(r"[^A-Za-z0-9._-]", "", dialed)[:100] or "lobby")


async def _verified(request: web.Request) -> dict[str, object] | None:
    body = await request.read()
    if not signing.verify(request.app[SECRET_KEY], body, request.headers.get(signing.HEADER)):
        log.warning("demo: bad signature", extra={"path": request.path})
        return None
    try:  # signed, but still not necessarily an envelope (strict: no 500 on a crafted number)
        doc = parse_json(body)
    except ValidationError:
        return None
    return doc if isinstance(doc, dict) else None


async def answer(request: web.Request) -> web.Response:
    doc = await _verified(request)
    if doc is None:
        return web.Response(status=401)
    call = doc.get("call")
    if not isinstance(call, dict):
        return web.Response(status=400)
    room = room_for(str(call.get("to", "")))
    log.info("demo: answer", extra={"call_id": call.get("id"), "from": call.get("from"),
                                    "room": room})
    return web.json_response({"actions": [{"conference": {"room": room}}]})


async def events(request: web.Request) -> web.Response:
    doc = await _verified(request)
    if doc is None:
        return web.Response(status=401)
    # Room and recording events carry `"call": null` (docs/api.md, conference events).
    call = doc.get("call")
    room = doc.get("conference")
    log.info("demo: webhook received", extra={
        "call_id": call.get("id") if isinstance(call, dict) else None,
        "webhook": doc.get("event"),
        "status": call.get("status") if isinstance(call, dict) else None,
        "room": room.get("room") if isinstance(room, dict) else None,
        "data": json.dumps(doc.get("data"))})
    return web.Response(status=204)
