"""/v1/calls: place a call, list live or recently ended calls, see one, hang one up."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web

from gateway.api.core import SCOPE, ApiError, Route, invalid_body, json_body, query_limit, visible
from gateway.call.outbound import place
from gateway.call.request import caller_id_allowed, choose_application, parse_call_request
from gateway.dialing import TargetMalformed, TargetRefused, TargetUnresolvable
from gateway.edge.users import UserStore
from gateway.keys import CALLS, CLUSTER_CALL, CONFIG, SERVICES, STATUS, STORE
from gateway.strict import ValidationError

MAX_ENDED = 1000  # ?state=ended&limit=: the most a listing returns


def listing(query: Mapping[str, str]) -> int | None:
    """GET /v1/calls's query: None for the live calls, N for the N most recent ended ones."""
    state = query.get("state", "live")
    if state == "live":
        return None
    if state == "ended":
        return query_limit(query, default=50, most=MAX_ENDED)
    raise ApiError(400, "invalid_query", "state must be live or ended")


async def list_calls(request: web.Request) -> web.Response:
    """Live calls, or with ?state=ended the most recent finished ones (up to ?limit=)."""
    limit = listing(request.query)
    if limit is None:
        calls = [s.record() for s in request.app[CALLS] if visible(request, s.customer_id)]
    else:
        admin, customer = request[SCOPE]
        calls = request.app[STORE].calls_recent(limit, None if admin else customer)
    return web.json_response({"calls": calls})


async def get_call(request: web.Request) -> web.Response:
    cid = request.match_info["call_id"]
    session = request.app[CALLS].get(cid)
    record = session.record() if session else request.app[STORE].call_get(cid)
    if record is None and CLUSTER_CALL in request.app:  # on another node?
        record = await request.app[CLUSTER_CALL](request, cid)
    if record is None or not visible(request, record["customer_id"]):
        raise ApiError(404, "not_found", f"no call {cid}")
    return web.json_response(record)


async def hangup_call(request: web.Request) -> web.Response:
    cid = request.match_info["call_id"]
    session = request.app[CALLS].get(cid)
    if session is None or not visible(request, session.customer_id):
        raise ApiError(404, "not_found", f"no live call {cid}")
    session.note("api.hangup")
    await session.end_call(487 if session.rec.answered_at is None else 200, "api_hangup",
                       "Hung up by API", by="api")
    return web.json_response({"call_id": cid, "status": "hanging_up"}, status=202)


async def place_call(request: web.Request) -> web.Response:
    """POST /v1/calls: dial `to`; once answered the call runs inline actions or answer_url's."""
    cfg = request.app[CONFIG]
    body = json_body(await request.read())
    try:
        req = parse_call_request(body)
    except ValidationError as exc:
        raise invalid_body(exc, "invalid request") from None
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
)
