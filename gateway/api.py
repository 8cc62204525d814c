"""The HTTP API on the gateway's port: health, and the REST API under /v1 to see and steer
live calls and conference rooms. JSON in and out; errors are
`{"error": {"code": ..., "message": ...}}`. The OpenAPI document at /v1/openapi.json is
built from the same route table, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.actions.say import Say
from gateway.call.outbound import place
from gateway.call.request import caller_id_allowed, choose_application, parse_call_request
from gateway.conferences import TooManyAnnouncements
from gateway.config import ApiToken
from gateway.dialing import TargetMalformed, TargetRefused, TargetUnresolvable
from gateway.edge.users import UserStore
from gateway.keys import (
    CALLS,
    CLUSTER_AUTH,
    CLUSTER_CALL,
    CLUSTER_ROOM,
    CONFIG,
    ENGINE,
    METRICS,
    OUTBOX,
    RECORDINGS,
    ROOMS,
    SERVICES,
    STATUS,
    STORE,
)
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.recordings import AlreadyRecording, RecordingRefused, public_view
from gateway.room_requests import (
    MAX_ANNOUNCEMENT_LOOP,
    MAX_SPEAK_TO,
    parse_announcement,
    parse_patch,
)
from gateway.store import Recording
from gateway.strict import ValidationError
from gateway.timestamps import iso
from media.rooms import Room, RoomError, RoomKey

log = logging.getLogger("minivoice.api")

# Who is asking: (admin, customer_id), set by the auth middleware for every /v1 request.
SCOPE: web.RequestKey[tuple[bool, str | None]] = web.RequestKey("scope")
# A request another node of a cluster forwarded here (gateway.cluster.http): signed with the
# cluster's secret, it carries the original caller's scope instead of a bearer token, and is
# answered by this node alone (never forwarded again).
FORWARDED_HEADER = "X-MiniVoice-Forwarded"
FORWARDED: web.RequestKey[bool] = web.RequestKey("forwarded")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: dict[str, Any] | None = None  # JSON schema of the request body


def setup(app: web.Application) -> None:
    cfg = app[CONFIG]
    app.middlewares.append(errors_and_auth)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
    app.router.add_get("/v1/openapi.json", openapi)
    if not cfg.api.tokens:  # loopback only: config.check_exposure refuses anything else
        log.warning("api open: no tokens configured", extra={"http": cfg.http.host})


# -- middleware ---------------------------------------------------------------------------
@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if (request.path.startswith("/v1/") and request.path != "/v1/openapi.json") \
                or request.path == "/metrics":
            if FORWARDED_HEADER in request.headers and CLUSTER_AUTH in request.app:
                request[SCOPE] = await request.app[CLUSTER_AUTH](request)
                request[FORWARDED] = True
            else:
                request[SCOPE] = _authorize(request)
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message, exc.details)
    except web.HTTPException as exc:  # aiohttp's own 404/405: same JSON shape
        if exc.status >= 400:
            return _error(exc.status, "http_error", exc.reason)
        raise


def _authorize(request: web.Request) -> tuple[bool, str | None]:
    """(is_admin, customer_id) of the caller; raises 401 for a missing or unknown token."""
    tokens = request.app[CONFIG].api.tokens
    if not tokens:
        return (True, None)
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise ApiError(401, "unauthorized", "missing bearer token")
    presented = header[len("Bearer "):].strip().encode("utf-8", "surrogateescape")
    # Constant time, and every token compared: neither the time of one comparison nor the
    # position of the match in the list tells a guesser anything.
    found: ApiToken | None = None
    for t in tokens:
        if hmac.compare_digest(t.token.encode(), presented):
            found = t
    if found is None:
        raise ApiError(401, "unauthorized", "unknown token")
    return (found.customer_id is None, found.customer_id)


def scope(request: web.Request) -> tuple[bool, str | None]:
    """(admin, customer_id) of an authenticated /v1 request (the console's stream uses it)."""
    return request[SCOPE]


def _error(status: int, code: str, message: str,
           details: list[dict[str, str]] | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return web.json_response({"error": error}, status=status)


def _visible(request: web.Request, customer_id: str) -> bool:
    admin, customer = request[SCOPE]
    return bool(admin or customer == customer_id)


# -- health -------------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    alive = request.app[ENGINE].alive
    body = {"status": "ok" if alive else "sip engine not running",
            "accepting_calls": request.app[STATUS].accepting,
            "calls": len(request.app[CALLS]),
            "webhooks_pending": request.app[OUTBOX].pending_count()}
    return web.json_response(body, status=200 if alive else 503)


# -- metrics ------------------------------------------------------------------------------
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. Gateway-wide numbers: an admin token only (a customer's token
    would see other customers' traffic in them)."""
    admin, _ = request[SCOPE]
    if not admin:
        raise ApiError(403, "forbidden", "metrics need an admin token")
    return web.Response(body=request.app[METRICS].render(),
                        headers={"Content-Type": METRICS_CONTENT_TYPE})


# -- calls --------------------------------------------------------------------------------
async def list_calls(request: web.Request) -> web.Response:
    """Live calls, or with ?state=ended the most recent finished ones (up to ?limit=)."""
    state = request.query.get("state", "live")
    if state == "live":
        calls = [s.record() for s in request.app[CALLS] if _visible(request, s.customer_id)]
    elif state == "ended":
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            raise ApiError(400, "invalid_query", "limit must be an integer") from None
        if not 1 <= limit <= 1000:
            raise ApiError(400, "invalid_query", "limit must be 1 to 1000")
        admin, customer = request[SCOPE]
        calls = request.app[STORE].calls_recent(limit, None if admin else customer)
    else:
        raise ApiError(400, "invalid_query", "state must be live or ended")
    return web.json_response({"calls": calls})


async def get_call(request: web.Request) -> web.Response:
    cid = request.match_info["call_id"]
    session = request.app[CALLS].get(cid)
    record = session.record() if session else request.app[STORE].call_get(cid)
    if record is None and CLUSTER_CALL in request.app:  # on another node?
        record = await request.app[CLUSTER_CALL](request, cid)
    if record is None or not _visible(request, record["customer_id"]):
        raise ApiError(404, "not_found", f"no call {cid}")
    return web.json_response(record)


async def hangup_call(request: web.Request) -> web.Response:
    cid = request.match_info["call_id"]
    session = request.app[CALLS].get(cid)
    if session is None or not _visible(request, session.customer_id):
        raise ApiError(404, "not_found", f"no live call {cid}")
    session.note("api.hangup")
    await session.end_call(487 if session.rec.answered_at is None else 200, "api_hangup",
                       "Hung up by API", by="api")
    return web.json_response({"call_id": cid, "status": "hanging_up"}, status=202)


# -- conferences --------------------------------------------------------------------------
def _room(request: web.Request) -> Room:
    """The room named in the path, within the caller's customer scope."""
    rooms = request.app[ROOMS]
    name = request.match_info["room"]
    admin, customer = request[SCOPE]
    if not admin:
        room = rooms.room(RoomKey(str(customer), name))
    else:
        wanted = request.query.get("customer_id")
        found = [r for r in rooms.live()
                 if r.key.name == name and (wanted is None or r.key.customer_id == wanted)]
        if len(found) > 1:
            raise ApiError(409, "ambiguous", f"room {name} exists for several customers: "
                                             "add ?customer_id=")
        room = found[0] if found else None
    if room is None:
        raise ApiError(404, "not_found", f"no room {name}")
    return room


def _member(request: web.Request, room: Room) -> str:
    cid = request.match_info["call_id"]
    if cid not in room.members:
        raise ApiError(404, "not_found", f"{cid} is not in room {room.key.name}")
    return cid


async def _room_view(app: web.Application, room: Room) -> dict[str, Any]:
    ids = tuple(room.members)
    levels = await app[ENGINE].levels(ids) if ids else {}
    return {
        "room": room.key.name,
        "customer_id": room.key.customer_id,
        "created_at": iso(room.created_at),
        # members who left while the levels were being read are left out (was a KeyError)
        "participants": [_participant(app, room, cid, levels.get(cid, 0)) for cid in ids
                         if cid in room.members],
    }


def _participant(app: web.Application, room: Room, cid: str, level: int) -> dict[str, Any]:
    m = room.members[cid]
    session = app[CALLS].get(cid)
    return {"call_id": cid, "from": session.rec.from_user if session else None,
            "muted": m.muted, "hold": m.held,
            "speak_to": sorted(m.speak_to) if m.speak_to is not None else None,
            "waiting": not m.held and not room.started, "start_on_enter": m.start_on_enter,
            "end_on_exit": m.end_on_exit, "joined_at": iso(m.joined_at),
            "talking": level >= app[CONFIG].rooms.speaker_level}


async def list_conferences(request: web.Request) -> web.Response:
    rooms = [r for r in sorted(request.app[ROOMS].live(), key=lambda r: r.key)
             if _visible(request, r.key.customer_id)]
    return web.json_response(
        {"conferences": [await _room_view(request.app, r) for r in rooms]})


async def get_conference(request: web.Request) -> web.Response:
    if CLUSTER_ROOM in request.app:  # every node's participants
        return web.json_response(await request.app[CLUSTER_ROOM](request))
    return web.json_response(await _room_view(request.app, _room(request)))


async def end_conference(request: web.Request) -> web.Response:
    room = _room(request)
    request.app[ROOMS].end(room.key)
    return web.Response(status=204)


async def patch_participant(request: web.Request) -> web.Response:
    """Mute, hold or coach a participant (any of them in one request, all or nothing)."""
    rooms = request.app[ROOMS]
    _member(request, _room(request))
    try:
        patch = parse_patch(await request.read())
    except ValidationError as exc:
        raise ApiError(400, "invalid_body", "invalid body",
                       [d.as_dict() for d in exc.details]) from None
    # Looked up again: the participant may have left (or the room ended) while the body
    # was on its way.
    room = _room(request)
    cid = _member(request, room)
    if patch.sets_speak_to and patch.speak_to is not None:
        missing = [t for t in patch.speak_to if t not in room.members]
        if missing:
            # A cluster node's room holds its own callers only: another node's callers are
            # heard through one cascade leg carrying that node's whole mix, so the coached
            # voice cannot reach one of them without reaching all (docs/cluster.md).
            where = (f"not in room {room.key.name} on this node ({cid}'s): in a cluster, "
                     "speak_to can only name participants on the same node"
                     if CLUSTER_ROOM in request.app else f"not in room {room.key.name}")
            raise ApiError(400, "invalid_body", "invalid body", [
                {"path": f"speak_to[{patch.speak_to.index(t)}]", "reason": where}
                for t in missing[:10]])
    try:
        if patch.hold is not None:
            rooms.set_held(cid, patch.hold)
        if patch.sets_speak_to:
            rooms.set_speak_to(cid, patch.speak_to)
        if patch.muted is not None:
            rooms.set_muted(cid, patch.muted)
    except RoomError:
        raise ApiError(404, "not_found", f"{cid} is not in room {room.key.name}") from None
    session = request.app[CALLS].get(cid)
    if session:
        changed: dict[str, Any] = {k: v for k, v in (("muted", patch.muted),
                                                     ("hold", patch.hold)) if v is not None}
        if patch.sets_speak_to:
            changed["speak_to"] = list(patch.speak_to) if patch.speak_to is not None else None
        session.note("api.participant", **changed)
    return web.json_response(_participant(request.app, room, cid, 0) | {"talking": None})


async def announce(request: web.Request) -> web.Response:
    """Say or play something once to the whole room, over the conversation."""
    _room(request)
    try:
        prompt = parse_announcement(await request.read())
    except ValidationError as exc:
        raise ApiError(400, "invalid_body", "invalid body",
                       [d.as_dict() for d in exc.details]) from None
    room = _room(request)
    media = request.app[SERVICES].media
    if isinstance(prompt, Say):
        say = prompt

        async def prepare() -> Path:
            return await media.speak(say.text, say.voice)
    else:
        url = prompt.url

        async def prepare() -> Path:
            return await media.fetch(url)
    try:
        request.app[ROOMS].announce(room.key, prepare, prompt.loop)
    except TooManyAnnouncements:
        limit = request.app[CONFIG].rooms.max_announcements
        raise ApiError(429, "too_many_announcements",
                       f"room {room.key.name} already has {limit} announcements under way "
                       "(rooms.max_announcements)") from None
    return web.json_response({"room": room.key.name, "status": "queued",
                              "kind": "say" if isinstance(prompt, Say) else "play"},
                             status=202)


async def remove_participant(request: web.Request) -> web.Response:
    room = _room(request)
    cid = _member(request, room)
    try:
        request.app[ROOMS].remove(cid)
    except RoomError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.Response(status=204)


async def place_call(request: web.Request) -> web.Response:
    """POST /v1/calls: dial `to`; once answered the call runs inline actions or answer_url's."""
    cfg = request.app[CONFIG]
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "invalid_body", "body must be JSON") from None
    try:
        req = parse_call_request(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid_body", "invalid request",
                       [d.as_dict() for d in exc.details]) from None
    admin, customer = request[SCOPE]
    app = choose_application(cfg.applications, req.application_id, None if admin else customer)
    if app is None:
        if admin and req.application_id is None:
            raise ApiError(400, "invalid_body", "invalid request", [
                {"path": "application_id", "reason": "is required with an admin token"}])
        raise ApiError(404, "not_found", f"no application {req.application_id}")
    if not caller_id_allowed(app, req.from_user):
        raise ApiError(403, "caller_id_not_allowed",
                       f"{app.id} may not call from {req.from_user!r} (its caller_ids)")
    if req.registered_user:
        if not cfg.edge.enabled:
            raise ApiError(400, "invalid_body", "invalid request", [
                {"path": "to", "reason": "a registered user needs the SIP edge (edge:)"}])
        users = UserStore(cfg.edge.users_db, cfg.edge.realm)
        if not await asyncio.to_thread(users.exists, req.to):
            raise ApiError(404, "not_found", f"no registered user {req.to}")
    if not request.app[STATUS].accepting:
        raise ApiError(503, "shutting_down", "the gateway is shutting down")
    calls = request.app[CALLS]
    cap = cfg.limits.max_calls_per_customer
    if cap is not None and calls.count(app.customer_id) >= cap:
        raise ApiError(429, "too_many_calls",
                       f"{cap} live calls (limits.max_calls_per_customer)")
    services = request.app[SERVICES]
    try:
        uri = await services.dial_target(req.to)
    except TargetMalformed as exc:
        raise ApiError(400, "invalid_body", "invalid request",
                       [{"path": "to", "reason": str(exc)}]) from None
    except TargetUnresolvable as exc:
        raise ApiError(422, "target_unresolvable", str(exc)) from None
    except TargetRefused as exc:
        raise ApiError(403, "target_not_allowed", str(exc)) from None
    leg = await place(services, app, uri, req.from_user,
                      answer_url=req.answer_url, actions=req.actions, timeout=req.timeout)
    return web.json_response(leg.record(), status=201)


# -- recordings ---------------------------------------------------------------------------
async def start_recording(request: web.Request) -> web.Response:
    body = await request.read()
    if body.strip():
        try:
            parsed = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "invalid_body", "body must be empty or {}") from None
        if parsed != {}:
            raise ApiError(400, "invalid_body", "body must be empty or {}")
    room = _room(request)
    # Its events are signed for the application of the room's first participant.
    calls = request.app[CALLS]
    first = next((s for c in room.members if (s := calls.get(c)) is not None), None)
    if first is None:
        raise ApiError(404, "not_found", f"no room {room.key.name}")
    try:
        row = await request.app[RECORDINGS].start(room.key, first.app, by="api")
    except AlreadyRecording as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except RecordingRefused as exc:
        if exc.reason == "disk_full":
            raise ApiError(507, "disk_full", str(exc)) from None
        if exc.reason == "limit":
            raise ApiError(429, "too_many_recordings", str(exc)) from None
        if exc.reason == "no_room":
            raise ApiError(404, "not_found", str(exc)) from None
        raise ApiError(500, "recording_failed", str(exc)) from None
    return web.json_response(public_view(row), status=201)


def _recording(request: web.Request) -> Recording:
    rec_id = request.match_info["recording_id"]
    row = request.app[STORE].recording_get(rec_id) if len(rec_id) <= 64 else None
    if row is None or not _visible(request, row.customer_id):
        raise ApiError(404, "not_found", f"no recording {rec_id}")
    return row


async def stop_recording(request: web.Request) -> web.Response:
    recordings = request.app[RECORDINGS]
    row = _recording(request)
    name = request.match_info["room"]
    if row.room != name or row.status != "recording" or row.rec_id not in recordings.active:
        raise ApiError(404, "not_found", f"no recording {row.rec_id} in progress in room {name}")
    return web.json_response(public_view(await recordings.stop(row.rec_id, "api")))


async def get_recording(request: web.Request) -> web.Response:
    return web.json_response(public_view(_recording(request)))


async def recording_audio(request: web.Request) -> web.StreamResponse:
    row = _recording(request)
    if row.status != "completed":
        raise ApiError(409, "not_ready" if row.status == "recording" else "conflict",
                       f"recording {row.rec_id} is {row.status}")
    path = Path(row.path)
    if not path.is_file():
        raise ApiError(404, "not_found", f"the audio of {row.rec_id} is gone")
    # FileResponse answers Range requests (206, 416) and conditional ones itself.
    return web.FileResponse(path, headers={"Content-Type": "audio/wav"})


ROUTES = (
    Route("POST", "/v1/calls", place_call,
          "Place a call: to, from, answer_url or actions, timeout (201 with the call)",
          {"type": "object", "required": ["to", "from"], "additionalProperties": False,
           "properties": {"to": {"type": "string"}, "from": {"type": "string"},
                          "application_id": {"type": "string"},
                          "answer_url": {"type": "string"},
                          "actions": {"type": "array", "items": {"type": "object"}},
                          "timeout": {"type": "number", "minimum": 1, "maximum": 600}}}),
    Route("GET", "/v1/calls", list_calls,
          "Live calls; ?state=ended&limit=N for the most recent finished ones"),
    Route("GET", "/v1/calls/{call_id}", get_call,
          "A call's state, timeline and error (live, or kept after it ended)"),
    Route("DELETE", "/v1/calls/{call_id}", hangup_call, "Hang up a live call"),
    Route("GET", "/v1/conferences", list_conferences, "Live rooms and their participants"),
    Route("GET", "/v1/conferences/{room}", get_conference, "One room"),
    Route("DELETE", "/v1/conferences/{room}", end_conference,
          "End the room: every participant leaves and runs its next action"),
    Route("PATCH", "/v1/conferences/{room}/participants/{call_id}", patch_participant,
          "Mute, hold or coach a participant (speak_to: only those participants hear them)",
          {"type": "object", "minProperties": 1, "additionalProperties": False,
           "properties": {"muted": {"type": "boolean"}, "hold": {"type": "boolean"},
                          "speak_to": {"type": "array", "nullable": True,
                                       "maxItems": MAX_SPEAK_TO,
                                       "items": {"type": "string",
                                                 "pattern": "^call_[A-Za-z0-9_-]{1,64}$"}}}}),
    Route("POST", "/v1/conferences/{room}/announcements", announce,
          "Say or play something once to everyone in the room (not on hold), mixed over "
          "the conversation",
          {"type": "object", "minProperties": 1, "maxProperties": 1,
           "additionalProperties": False, "properties": {
               "say": {"type": "object", "required": ["text"], "additionalProperties": False,
                       "properties": {"text": {"type": "string", "minLength": 1,
                                               "maxLength": 4000},
                                      "voice": {"type": "string"},
                                      "loop": {"type": "integer", "minimum": 1,
                                               "maximum": MAX_ANNOUNCEMENT_LOOP}}},
               "play": {"type": "object", "required": ["url"], "additionalProperties": False,
                        "properties": {"url": {"type": "string", "format": "uri"},
                                       "loop": {"type": "integer", "minimum": 1,
                                                "maximum": MAX_ANNOUNCEMENT_LOOP}}}}}),
    Route("DELETE", "/v1/conferences/{room}/participants/{call_id}", remove_participant,
          "Remove a participant from the room: their next action runs"),
    Route("POST", "/v1/conferences/{room}/recordings", start_recording,
          "Start recording the room (201 with the recording)"),
    Route("DELETE", "/v1/conferences/{room}/recordings/{recording_id}", stop_recording,
          "Stop a recording of the room; the finished recording"),
    Route("GET", "/v1/recordings/{recording_id}", get_recording,
          "A recording's metadata: room, status, started_at, duration_s"),
    Route("GET", "/v1/recordings/{recording_id}/audio", recording_audio,
          "The recording as a WAV file (8 kHz mono 16-bit PCM); Range requests answered"),
)


def _streams(error: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The operations served outside ROUTES because they answer something other than JSON:
    the Prometheus scrape and the console's event stream (only with `http.console: true`)."""
    def failure(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": error}}}

    text = {"type": "string"}
    return {
        "/metrics": {"get": {
            "summary": "Prometheus metrics in the text exposition format 0.0.4; an admin "
                       "token only (the numbers are gateway-wide)",
            "operationId": "metrics", "parameters": [], "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "The metrics",
                        "content": {METRICS_CONTENT_TYPE: {"schema": text}}},
                "401": failure("Missing or unknown token"),
                "403": failure("A customer's token"),
            }}},
        "/v1/console/stream": {"get": {
            "summary": "The web console's live view, as server-sent events: one `snapshot` "
                       "event every 0.5 s whose data is one line of JSON (rooms with their "
                       "participants' levels, mute and hold; live calls; recent calls). "
                       "Served only with http.console: true; a customer's token sees its "
                       "own rooms and calls",
            "operationId": "console_stream", "parameters": [], "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "The stream (until the client closes it)",
                        "content": {"text/event-stream": {"schema": text}}},
                "401": failure("Missing or unknown token"),
                "404": failure("The console is off (http.console: false)"),
                "429": failure("Too many console streams open (too_many_streams)"),
            }}},
    }


def openapi_document() -> dict[str, Any]:
    error = {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object", "properties": {
            "path": {"type": "string"}, "reason": {"type": "string"}}}}}}}}
    paths: dict[str, Any] = {}
    for r in ROUTES:
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in ("room", "call_id", "recording_id") if "{" + p + "}" in r.path]
        if "{room}" in r.path:
            params.append({"name": "customer_id", "in": "query", "required": False,
                           "schema": {"type": "string"},
                           "description": "with an admin token, when several customers "
                                          "have a room of that name"})
        op: dict[str, Any] = {
            "summary": r.summary, "operationId": r.handler.__name__, "parameters": params,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {
                    "schema": {"type": "object"}}}},
                "201": {"description": "Created", "content": {"application/json": {
                    "schema": {"type": "object"}}}},
                "202": {"description": "Accepted"}, "204": {"description": "Done"},
                "400": {"description": "Bad request", "content": {
                    "application/json": {"schema": error}}},
                "401": {"description": "Missing or unknown token", "content": {
                    "application/json": {"schema": error}}},
                "404": {"description": "Not found", "content": {
                    "application/json": {"schema": error}}},
                "429": {"description": "Over a limit (calls, announcements)", "content": {
                    "application/json": {"schema": error}}},
            },
        }
        if r.body is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": r.body}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    paths.update(_streams(error))
    return {
        "openapi": "3.0.3",
        "info": {"title": "MiniVoice gateway API", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
