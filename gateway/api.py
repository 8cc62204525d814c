"""HTTP endpoints on the gateway's port: health, and read-only views of calls and rooms."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from gateway.app import Gateway

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")


def setup(app: web.Application, gw: Gateway) -> None:
    app[GATEWAY] = gw
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/calls", list_calls)
    app.router.add_get("/v1/calls/{call_id}", get_call)
    app.router.add_get("/v1/conferences", list_conferences)


async def healthz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    alive = gw.engine.alive
    body = {"status": "ok" if alive else "sip engine not running", "calls": len(gw.sessions),
            "webhooks_pending": gw.store.outbox_pending_count()}
    return web.json_response(body, status=200 if alive else 503)


async def list_calls(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    live = [s.record() for s in gw.sessions.values()]
    return web.json_response({"calls": live})


async def get_call(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    cid = request.match_info["call_id"]
    session = gw.sessions.get(cid)
    record = session.record() if session else gw.store.call_get(cid)
    if record is None:
        return _error(404, "not_found", f"no call {cid}")
    return web.json_response(record)


async def list_conferences(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rooms: list[dict[str, Any]] = []
    for key, room in sorted(gw.conferences.book.rooms.items()):
        rooms.append({
            "room": key.name,
            "customer_id": key.customer_id,
            "participants": [
                {"call_id": m.call_id, "muted": m.muted, "end_on_exit": m.end_on_exit}
                for m in room.members.values()
            ],
        })
    return web.json_response({"conferences": rooms})


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
