"""An answer_url application in its own container: the shape to copy for yours.

    MINIVOICE_SECRET=... python examples/app/app.py      # listens on 0.0.0.0:3000

POST /answer   signed call.answer request -> put the caller of number N in room `room-N`
POST /events   signed lifecycle webhooks (call.initiated, call.answered, call.completed)
GET  /events   the webhooks received so far, oldest first (for tests and debugging)
GET  /healthz  200

Requests whose signature does not verify get 401, and are neither answered nor recorded.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from aiohttp import web

from gateway import signing

log = logging.getLogger("app")

SECRET: web.AppKey[str] = web.AppKey("secret")
EVENTS: web.AppKey[list[dict[str, Any]]] = web.AppKey("events")


def room_for(number: str) -> str:
    return "room-" + (re.sub(r"[^A-Za-z0-9._-]", "", number)[:64] or "lobby")


async def _signed_json(request: web.Request) -> dict[str, Any] | None:
    body = await request.read()
    if not signing.verify(request.app[SECRET], body, request.headers.get(signing.HEADER)):
        log.warning("app.bad_signature path=%s", request.path)
        return None
    doc: dict[str, Any] = json.loads(body)
    return doc


async def answer(request: web.Request) -> web.Response:
    doc = await _signed_json(request)
    if doc is None:
        return web.Response(status=401)
    call = doc["call"]
    room = room_for(str(call["to"]))
    log.info("app.answer call_id=%s from=%s room=%s", call["id"], call["from"], room)
    return web.json_response({"actions": [{"conference": {"room": room}}]})


async def event(request: web.Request) -> web.Response:
    doc = await _signed_json(request)
    if doc is None:
        return web.Response(status=401)
    request.app[EVENTS].append(doc)
    log.info("app.event event=%s call_id=%s", doc.get("event"), doc.get("call", {}).get("id"))
    return web.Response(status=204)


async def events(request: web.Request) -> web.Response:
    return web.json_response(request.app[EVENTS])


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(secret: str) -> web.Application:
    app = web.Application()
    app[SECRET] = secret
    app[EVENTS] = []
    app.router.add_post("/answer", answer)
    app.router.add_post("/events", event)
    app.router.add_get("/events", events)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    secret = os.environ.get("MINIVOICE_SECRET", "")
    if len(secret) < 8:
        raise SystemExit("set MINIVOICE_SECRET to the application's secret (8+ characters)")
    web.run_app(make_app(secret), host=os.environ.get("HOST", "0.0.0.0"),
                port=int(os.environ.get("PORT", "3000")), print=None)


if __name__ == "__main__":
    main()
