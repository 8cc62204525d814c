"""The live web console (`http.console: true`): a static page at / and one server-sent-events
stream of snapshots at /v1/console/stream.

The page is plain HTML, CSS and JavaScript from this package (no build step, nothing from a
CDN). It asks for an API token, keeps it in the tab's sessionStorage and sends it as the
`Authorization` header, on the stream too: the stream is read with fetch() rather than
EventSource, which cannot send headers, so the token never appears in a URL or a log. What a
token sees is what the REST API would show it (a customer's token: that customer's rooms and
calls). The buttons call the REST API itself.

Every SNAPSHOT_S the stream sends one `snapshot` event: the rooms in scope with each
participant's current level, the live calls, and the recent finished calls (sent only when
they changed). One level query to the SIP thread per snapshot, whatever the number of rooms;
at most MAX_STREAMS streams at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.call.record import CallRecord
from gateway.keys import CALLS, CONFIG, ENGINE, ROOMS, STORE
from gateway.timestamps import iso
from media.rooms import Room

log = logging.getLogger("minivoice.console")

STATIC = Path(__file__).resolve().parent / "static"
SNAPSHOT_S = 0.5
MAX_STREAMS = 8
RECENT = 15  # finished calls in a snapshot
# A console is for looking at, not for bulk export: a busy gateway's snapshot shows the first
# rooms and calls (with their totals), which bounds the level query and the JSON per tick.
MAX_ROOMS = 50
MAX_PARTICIPANTS = 400  # across the rooms shown; levels are read for these only
MAX_CALLS = 200
TIMELINE_TAIL = 60  # a recent call's last timeline entries (a record may hold 1000)
FILES = {"console.js": "text/javascript", "console.css": "text/css"}
# The page loads only its own files and talks only to its own origin.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
Scope = tuple[bool, str | None]  # (admin, customer_id) of the token, as the API has it
STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("console_streams")


def setup(app: web.Application, scope_of: Callable[[web.Request], Scope]) -> None:
    """Routes of the console; `scope_of` gives a request's scope (set by the API's
    authentication middleware for every /v1 path)."""
    app[STREAMS] = set()
    app.router.add_get("/", _page)
    for name in FILES:
        app.router.add_get(f"/console/{name}", _static)

    async def stream(request: web.Request) -> web.StreamResponse:
        # a coroutine function, not a lambda returning one: aiohttp deprecates bare functions
        return await _stream(request, scope_of(request))

    app.router.add_get("/v1/console/stream", stream)
    app.on_shutdown.append(_close_streams)


async def _page(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC / "index.html").read_bytes(),
                        content_type="text/html", charset="utf-8", headers=HEADERS)


async def _static(request: web.Request) -> web.Response:
    name = request.path.rsplit("/", 1)[1]
    return web.Response(body=(STATIC / name).read_bytes(), content_type=FILES[name],
                        charset="utf-8", headers=HEADERS)


async def _close_streams(app: web.Application) -> None:
    streams = app[STREAMS]
    for task in tuple(streams):
        task.cancel()


# -- the snapshot --------------------------------------------------------------------------
def participant_view(room: Room, cid: str, level: int, from_user: str | None,
                     speaker_level: int) -> dict[str, Any]:
    m = room.members[cid]
    return {"call_id": cid, "from": from_user, "muted": m.muted, "hold": m.held,
            "end_on_exit": m.end_on_exit, "joined_at": iso(m.joined_at), "level": level,
            "talking": level >= speaker_level}


def recent_view(record: dict[str, Any]) -> dict[str, Any]:
    """A finished call for the console: its record with the timeline's tail only."""
    timeline = record.get("timeline") or []
    out = {k: v for k, v in record.items() if k != "timeline"}
    out["timeline"] = timeline[-TIMELINE_TAIL:]
    out["timeline_total"] = len(timeline) + int(record.get("timeline_dropped") or 0)
    return out


async def snapshot(app: web.Application, scope: Scope) -> dict[str, Any]:
    admin, customer = scope

    def visible(customer_id: str) -> bool:
        return admin or customer == customer_id

    all_rooms = sorted((r for r in app[ROOMS].live() if visible(r.key.customer_id)),
                       key=lambda r: r.key)
    rooms: list[Room] = []
    shown = 0
    for r in all_rooms[:MAX_ROOMS]:
        if shown + len(r.members) > MAX_PARTICIPANTS and rooms:
            break
        rooms.append(r)
        shown += len(r.members)
    calls = app[CALLS]
    ids = tuple(cid for r in rooms for cid in list(r.members)[:MAX_PARTICIPANTS])
    levels = await app[ENGINE].levels(ids) if ids else {}
    speaker = app[CONFIG].rooms.speaker_level

    def who(cid: str) -> str | None:
        s = calls.get(cid)
        return s.rec.from_user if s is not None else None

    live = [s for s in calls if visible(s.customer_id)]
    return {
        "at": iso(time.time()),
        "rooms": [{"room": r.key.name, "customer_id": r.key.customer_id,
                   "created_at": iso(r.created_at), "size": len(r.members),
                   # a member who left while the levels were read is left out
                   "participants": [participant_view(r, cid, levels.get(cid, 0), who(cid),
                                                     speaker)
                                    for cid in list(r.members)[:MAX_PARTICIPANTS]
                                    if cid in r.members]}
                  for r in rooms],
        "rooms_total": len(all_rooms),
        "calls": [_live_call(s.rec) for s in live[:MAX_CALLS]],
        "calls_total": len(live),
    }


def _live_call(rec: CallRecord) -> dict[str, Any]:
    """A live call's summary, from its record's fields (not its full view: no timeline)."""
    return {"id": rec.call_id, "customer_id": rec.customer_id, "status": rec.status,
            "direction": rec.direction, "from": rec.from_user, "to": rec.to,
            "created_at": iso(rec.created_at),
            "answered_at": iso(rec.answered_at) if rec.answered_at else None,
            "room": rec.room, "codec": rec.codec}


def recent(app: web.Application, scope: Scope) -> list[dict[str, Any]]:
    admin, customer = scope
    return [recent_view(r) for r in app[STORE].calls_recent(RECENT, None if admin else customer)]


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; the JSON is on one line (json.dumps escapes newlines)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _stream(request: web.Request, scope: Scope) -> web.StreamResponse:
    app = request.app
    streams = app[STREAMS]
    if len(streams) >= MAX_STREAMS:
        return web.json_response({"error": {"code": "too_many_streams", "message":
                                            f"at most {MAX_STREAMS} console streams at once"}},
                                 status=429)
    task = asyncio.current_task()
    assert task is not None
    streams.add(task)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        await resp.prepare(request)
        last_recent: list[dict[str, Any]] | None = None
        while True:
            snap = await snapshot(app, scope)
            now_recent = recent(app, scope)
            if now_recent != last_recent:
                snap["recent"] = last_recent = now_recent
            await resp.write(sse("snapshot", snap))
            await asyncio.sleep(SNAPSHOT_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the page went away, or the gateway is stopping
    except Exception as exc:  # the page reconnects; one failed snapshot is no crash
        log.warning("console.stream_failed", extra={"error": f"{type(exc).__name__}: {exc}"})
    finally:
        streams.discard(task)
    return resp
