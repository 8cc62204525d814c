"""The REST API across nodes: any node answers for a whole room and for any call.

- `GET /v1/conferences/{room}`: this node's participants, plus those of every other node
  that has members of the room (Redis: members by call ID -> node), asked over HTTP.
  Each participant has `node`. Cascade legs are not participants.
- `GET /v1/calls/{id}`: this node's call, else asked of every live node in turn. (No
  call -> node map in Redis: that would cost two Redis writes per call for a lookup the
  handful of nodes answer as cheaply.)

- `GET /v1/conferences`: every node's rooms, merged by room, each participant with `node`.
- `GET /v1/calls`: every live node's calls (the same query, forwarded to all at once),
  each with `node`; bounded in time, bytes per node and calls merged.
- Recordings: started by the room's owner (its mix has every node's callers); stopped,
  described and downloaded (streamed through) from the node that has the recording.
- Steering from any node (the `steer` middleware): PATCH and DELETE of a participant go to
  the node that has the participant (Redis: members); `DELETE /v1/calls/{id}` to the node
  that has the call (asked in turn); `DELETE /v1/conferences/{room}` to every node with
  members of the room; an announcement to the room's owner only (its mix reaches the other
  nodes' callers through their cascade legs: played on every node, it would be heard twice).

Node-to-node reads go to /cluster/v1/..., outside the bearer-token API, authenticated by
an HMAC of the path with cluster.secret. Forwarded /v1 requests go to the other node's own
/v1 path, signed (method, path and query, scope, a timestamp, the body's hash) with
cluster.secret, carrying the original caller's scope: the receiving node's ordinary handler
applies that scope exactly as it would a token's, so a forward can never widen it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

from gateway import api, keys
from gateway.api.conferences import room_view as local_room_view
from gateway.api.core import one_room
from gateway.cluster.node import ClusterNode
from gateway.timestamps import iso
from media.rooms import RoomKey

log = logging.getLogger("minivoice.cluster")

HEADER = "X-MiniVoice-Cluster"
NODE: web.AppKey[ClusterNode] = web.AppKey("cluster", ClusterNode)
CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("cluster_http", aiohttp.ClientSession)


def setup(app: web.Application, node: ClusterNode) -> None:
    app[NODE] = node
    app[keys.CLUSTER_ROOM] = room_view
    app[keys.CLUSTER_CALL] = call_view
    app[keys.CLUSTER_AUTH] = forwarded_scope
    app.middlewares.append(steer)
    app.router.add_get("/cluster/v1/rooms", local_rooms)
    app.router.add_get("/cluster/v1/rooms/{customer}/{room}", local_room)
    app.router.add_get("/cluster/v1/calls/{call_id}", local_call)
    app.cleanup_ctx.append(_client_ctx)


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    app[CLIENT] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
    yield
    await app[CLIENT].close()


def _mac(secret: str, path: str) -> str:
    return hmac.new(secret.encode(), path.encode(), hashlib.sha256).hexdigest()


def _check(request: web.Request) -> None:
    node = request.app[NODE]
    given = request.headers.get(HEADER, "")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               _mac(node.cfg.secret, request.raw_path).encode()):
        raise web.HTTPForbidden()


async def _ask(app: web.Application, base: str, path: str) -> Any | None:
    """GET another node's /cluster/v1 path; its JSON, or None (404, down, slow)."""
    node = app[NODE]
    try:
        async with app[CLIENT].get(base + path, headers={
                HEADER: _mac(node.cfg.secret, path)}) as r:
            if r.status != 200:
                if r.status != 404:
                    log.warning("cluster.ask_failed", extra={"url": base + path,
                                                             "status": r.status})
                return None
            return await r.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("cluster.ask_failed", extra={"url": base + path, "error": str(exc)})
        return None


# -- what this node has -------------------------------------------------------------------
async def _local_participants(app: web.Application, key: RoomKey) -> list[dict[str, Any]]:
    node = app[NODE]
    room = node.conferences.room(key)
    if room is None:
        return []
    view = await local_room_view(app, room)
    return [p | {"node": node.me} for p in view["participants"]
            if not node.is_cascade_leg(p["call_id"])]


async def local_room(request: web.Request) -> web.Response:
    _check(request)
    key = RoomKey(request.match_info["customer"], request.match_info["room"])
    return web.json_response({"participants": await _local_participants(request.app, key)})


async def local_rooms(request: web.Request) -> web.Response:
    """Every room of this node that has participants (all customers: the asking node
    filters by its caller's scope)."""
    _check(request)
    app = request.app
    rooms = []
    for room in sorted(app[NODE].conferences.live(), key=lambda r: r.key):
        participants = await _local_participants(app, room.key)
        if participants:
            rooms.append({"room": room.key.name, "customer_id": room.key.customer_id,
                          "participants": participants})
    return web.json_response({"rooms": rooms})


async def local_call(request: web.Request) -> web.Response:
    _check(request)
    cid = request.match_info["call_id"]
    session = request.app[keys.CALLS].get(cid)
    record = session.record() if session else request.app[keys.STORE].call_get(cid)
    if record is None:
        raise web.HTTPNotFound()
    return web.json_response(record)


# -- what the API answers ---------------------------------------------------------------
async def _room_key(request: web.Request) -> RoomKey:
    node = request.app[NODE]
    name = request.match_info["room"]
    admin, customer = request[api.SCOPE]
    if not admin:
        return RoomKey(str(customer), name)
    wanted = request.query.get("customer_id")
    if wanted is not None:
        return RoomKey(wanted, name)
    found = {r.key for r in node.conferences.live() if r.key.name == name}
    with contextlib.suppress(Exception):  # Redis down: the local rooms are what we know
        found.update(await node.store.rooms_named(name))
    return one_room(name, found)


async def room_view(request: web.Request) -> dict[str, Any]:
    app = request.app
    node = app[NODE]
    key = await _room_key(request)
    participants = await _local_participants(app, key)
    partial = False
    try:
        members = await node.store.members(key)
        live = await node.store.nodes()
    except Exception:
        members, live, partial = {}, {}, True
    others = sorted({n for n in members.values() if n != node.me})
    path = f"/cluster/v1/rooms/{quote(key.customer_id, safe='')}/{quote(key.name, safe='')}"
    asked = await asyncio.gather(*(
        _ask(app, live[n].http, path) for n in others if n in live))
    for got in asked:
        if isinstance(got, dict) and isinstance(got.get("participants"), list):
            participants.extend(got["participants"])
        else:
            partial = True
    if not participants:
        raise api.ApiError(404, "not_found", f"no room {key.name}")
    local = node.conferences.room(key)
    created = [p["joined_at"] for p in participants]
    return {"room": key.name, "customer_id": key.customer_id,
            "created_at": iso(local.created_at) if local else min(created),
            "participants": sorted(participants, key=lambda p: p["joined_at"]),
            **({"partial": True} if partial else {})}


async def call_view(request: web.Request, call_id: str) -> dict[str, Any] | None:
    app = request.app
    node = app[NODE]
    try:
        live = await node.store.nodes()
    except Exception:
        return None
    path = "/cluster/v1/calls/" + quote(call_id, safe="")
    for n, info in live.items():
        if n == node.me:
            continue
        got = await _ask(app, info.http, path)
        if isinstance(got, dict):
            return got | {"node": n}
    return None


async def list_view(request: web.Request) -> web.Response:
    """GET /v1/conferences across the cluster: each room once, with every node's
    participants (cascade legs left out), within the caller's scope."""
    app = request.app
    node = app[NODE]
    admin, customer = request[api.SCOPE]
    merged: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for room in node.conferences.live():
        if admin or room.key.customer_id == customer:
            parts = await _local_participants(app, room.key)
            if parts:
                merged.setdefault((room.key.customer_id, room.key.name), []).extend(parts)
    partial = False
    try:
        live = await node.store.nodes()
    except Exception:
        live, partial = {}, True
    asked = await asyncio.gather(*(_ask(app, info.http, "/cluster/v1/rooms")
                                   for n, info in live.items() if n != node.me))
    for got in asked:
        if not isinstance(got, dict) or not isinstance(got.get("rooms"), list):
            partial = True
            continue
        for r in got["rooms"]:
            if admin or r.get("customer_id") == customer:
                merged.setdefault((str(r["customer_id"]), str(r["room"])), []).extend(
                    r["participants"])
    conferences = []
    for (cust, name), parts in sorted(merged.items()):
        parts.sort(key=lambda p: p["joined_at"])
        conferences.append({"room": name, "customer_id": cust,
                            "created_at": parts[0]["joined_at"], "participants": parts})
    return web.json_response({"conferences": conferences, **({"partial": True} if partial
                                                             else {})})


# -- steering from any node ----------------------------------------------------------------
SCOPE_HEADER = "X-MiniVoice-Scope"
STAMP_HEADER = "X-MiniVoice-Stamp"
FORWARD_WINDOW_S = 30  # a signed forward is accepted this long (clocks of one site agree)
MIB = 1024 * 1024
# Another node's answer to a forward is read up to this size (a live call list of ~1,200
# calls with full timelines is a few MiB); beyond, the node counts as not answering.
MAX_ANSWER_BYTES = 32 * MIB
LIST_TIMEOUT_S = 5.0  # a node's part of GET /v1/calls (the other forwards: 2 s)
# Starting and stopping a recording: a stop answers once the file is complete (up to 2 s
# waiting for pjmedia), so a 2 s forward could give up on a recording that did stop.
RECORDING_TIMEOUT_S = 10.0
MAX_MERGED_CALLS = 10_000  # calls in one cluster-wide list; beyond: "truncated": true
# A recording's audio streamed from the node that has the file: no total timeout (an hour
# is ~58 MB at 8 kHz), but a node that stops sending for this long ends the download.
AUDIO_READ_TIMEOUT_S = 10.0
AUDIO_HEADERS_IN = ("Range", "If-Range", "If-Modified-Since", "If-None-Match")
AUDIO_HEADERS_OUT = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges",
                     "Last-Modified", "ETag")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _scope_text(scope: tuple[bool, str | None]) -> str:
    admin, customer = scope
    return "admin" if admin else f"customer:{customer}"


def _forward_mac(secret: str, method: str, path_qs: str, scope: str, stamp: str,
                 body: bytes) -> str:
    text = "\n".join((method, path_qs, scope, stamp, hashlib.sha256(body).hexdigest()))
    return hmac.new(secret.encode(), text.encode("utf-8", "surrogateescape"),
                    hashlib.sha256).hexdigest()


async def forwarded_scope(request: web.Request) -> tuple[bool, str | None]:
    """The scope of a /v1 request another node forwarded: 403 unless signed by the cluster
    at most FORWARD_WINDOW_S ago."""
    node = request.app[NODE]
    scope = request.headers.get(SCOPE_HEADER, "")
    stamp = request.headers.get(STAMP_HEADER, "")
    try:
        fresh = abs(time.time() - int(stamp)) <= FORWARD_WINDOW_S
    except ValueError:
        fresh = False
    expected = _forward_mac(node.cfg.secret, request.method, request.raw_path, scope, stamp,
                            await request.read())
    given = request.headers.get(api.FORWARDED_HEADER, "")
    if not (fresh and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                          expected.encode())):
        log.warning("cluster.forward_refused", extra={"path": request.path,
                                                      "remote": request.remote})
        raise api.ApiError(403, "forbidden", "bad cluster signature")
    if scope == "admin":
        return (True, None)
    if scope.startswith("customer:") and len(scope) > len("customer:"):
        return (False, scope[len("customer:"):])
    raise api.ApiError(403, "forbidden", "bad cluster scope")


def _signed_headers(request: web.Request, path_qs: str, body: bytes) -> dict[str, str]:
    """The headers of a forward of `request` to another node's `path_qs`, as this caller."""
    node = request.app[NODE]
    stamp = str(int(time.time()))
    scope_text = _scope_text(request[api.SCOPE])
    return {api.FORWARDED_HEADER: _forward_mac(node.cfg.secret, request.method, path_qs,
                                               scope_text, stamp, body),
            SCOPE_HEADER: scope_text, STAMP_HEADER: stamp}


def _path_qs(request: web.Request, key: RoomKey | None) -> str:
    url = request.rel_url
    if key is not None and request[api.SCOPE][0]:
        url = url.update_query(customer_id=key.customer_id)
    return str(url)


class _TooBig(Exception):
    pass


async def _read_capped(r: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of another node's answer, at most `limit` bytes (_TooBig beyond)."""
    got = bytearray()
    async for chunk in r.content.iter_chunked(64 * 1024):
        got += chunk
        if len(got) > limit:
            raise _TooBig()
    return bytes(got)


async def _send(request: web.Request, base: str, key: RoomKey | None = None, *,
                timeout: float | None = None, limit: int = MAX_ANSWER_BYTES
                ) -> tuple[int, str, bytes] | None:
    """Send this /v1 request to another node as this caller: (status, content type,
    body), or None if the node could not be reached in time or answered more than
    `limit` bytes. An admin's room request names the customer, so the other node cannot
    pick another customer's room of the same name."""
    app = request.app
    path_qs = _path_qs(request, key)
    body = await request.read()
    headers = _signed_headers(request, path_qs, body)
    if body:
        headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
    extra: dict[str, Any] = {} if timeout is None else {
        "timeout": aiohttp.ClientTimeout(total=timeout)}
    try:
        async with app[CLIENT].request(request.method, URL(base + path_qs, encoded=True),
                                       data=body, headers=headers, **extra) as r:
            payload = await _read_capped(r, limit)
            log.info("cluster.forward", extra={"path": request.path, "to": base,
                                               "status": r.status})
            return r.status, r.content_type, payload
    except (aiohttp.ClientError, TimeoutError, _TooBig) as exc:
        log.warning("cluster.forward_failed", extra={"path": request.path, "to": base,
                                                     "error": str(exc) or type(exc).__name__})
        return None


async def _forward(request: web.Request, base: str, key: RoomKey | None = None,
                   timeout: float | None = None) -> web.Response | None:
    """This /v1 request carried out by another node: its answer unchanged, or None if the
    node could not be reached."""
    got = await _send(request, base, key, timeout=timeout)
    if got is None:
        return None
    status, content_type, payload = got
    return web.Response(status=status, body=payload or None,
                        content_type=content_type if payload else None)


async def _local_or_404(request: web.Request, handler: Handler) -> web.StreamResponse | None:
    """This node's own answer, or None where it has nothing (404)."""
    try:
        resp = await handler(request)
    except api.ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return None if resp.status == 404 else resp


async def _participant(request: web.Request, handler: Handler) -> web.StreamResponse:
    node = request.app[NODE]
    key = await _room_key(request)
    cid = request.match_info["call_id"]
    room = node.conferences.room(key)
    if room is not None and cid in room.members:
        return await handler(request)
    try:
        where = (await node.store.members(key)).get(cid)
        live = await node.store.nodes() if where not in (None, node.me) else {}
    except Exception:  # Redis down: this node's participants are what it can steer
        return await handler(request)
    if where is not None and where in live:
        got = await _forward(request, live[where].http, key)
        if got is not None:
            return got
        raise api.ApiError(502, "node_unreachable", f"node {where} did not answer")
    return await handler(request)


async def _end_room(request: web.Request, handler: Handler) -> web.StreamResponse:
    node = request.app[NODE]
    key = await _room_key(request)
    try:
        members = await node.store.members(key)
        live = await node.store.nodes()
    except Exception:
        members, live = {}, {}
    others = sorted({n for n in members.values() if n != node.me and n in live})
    here, *there = await asyncio.gather(
        _local_or_404(request, handler),
        *(_forward(request, live[n].http, key) for n in others))
    if here is not None or any(r is not None and r.status == 204 for r in there):
        return web.Response(status=204)
    raise api.ApiError(404, "not_found", f"no room {key.name}")


async def _announce(request: web.Request, handler: Handler) -> web.StreamResponse:
    node = request.app[NODE]
    key = await _room_key(request)
    try:
        claim = await node.store.get_claim(key)
        live = await node.store.nodes() if claim is not None and claim.owner != node.me \
            else {}
    except Exception:
        claim, live = None, {}
    if claim is not None and claim.owner in live:
        got = await _forward(request, live[claim.owner].http, key)
        if got is not None:
            return got
    return await handler(request)


async def _hang_up(request: web.Request, handler: Handler) -> web.StreamResponse:
    node = request.app[NODE]
    if request.app[keys.CALLS].get(request.match_info["call_id"]) is not None:
        return await handler(request)
    try:
        live = await node.store.nodes()
    except Exception:
        live = {}
    for n, info in sorted(live.items()):
        if n != node.me:
            got = await _forward(request, info.http)
            if got is not None and got.status != 404:
                return got
    return await handler(request)


async def _list_calls(request: web.Request, handler: Handler) -> web.StreamResponse:
    """GET /v1/calls across the cluster: this node's answer (which checks the query), then
    every other live node's, asked at once with the same query and scope; each call with
    its `node`. Ended calls: the newest `limit` of all of them."""
    node = request.app[NODE]
    here = await handler(request)
    body = here.body if isinstance(here, web.Response) else None
    if here.status != 200 or not isinstance(body, bytes | bytearray):
        return here
    calls = [c | {"node": node.me} for c in json.loads(body)["calls"]]
    partial = truncated = False
    try:
        live = await node.store.nodes()
    except Exception:  # Redis down: this node's calls are what we know
        live, partial = {}, True
    others = sorted(n for n in live if n != node.me)
    asked = await asyncio.gather(*(_send(request, live[n].http, timeout=LIST_TIMEOUT_S)
                                   for n in others))
    for n, got in zip(others, asked, strict=True):
        part = None
        if got is not None and got[0] == 200:
            with contextlib.suppress(ValueError, RecursionError):
                answer = json.loads(got[2])
                part = answer.get("calls") if isinstance(answer, dict) else None
        if not isinstance(part, list):
            partial = True
            continue
        calls.extend(c | {"node": n} for c in part if isinstance(c, dict))
    if request.query.get("state") == "ended":
        calls.sort(key=lambda c: str(c.get("ended_at") or ""), reverse=True)
        calls = calls[:int(request.query.get("limit", "50"))]
    if len(calls) > MAX_MERGED_CALLS:
        calls, truncated = calls[:MAX_MERGED_CALLS], True
    return web.json_response({"calls": calls, **({"partial": True} if partial else {}),
                              **({"truncated": True} if truncated else {})})


async def _start_recording(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Recording a room: by its owner, whose mix has every node's callers (the other
    nodes' come in on their cascade legs). A non-owner's recording would miss the callers
    of the nodes it has no leg to, so an owner that does not answer is a 502."""
    node = request.app[NODE]
    key = await _room_key(request)
    try:
        claim = await node.store.get_claim(key)
        live = await node.store.nodes() if claim is not None and claim.owner != node.me \
            else {}
    except Exception:
        claim, live = None, {}
    if claim is not None and claim.owner in live:
        got = await _forward(request, live[claim.owner].http, key,
                             timeout=RECORDING_TIMEOUT_S)
        if got is not None:
            return got
        raise api.ApiError(502, "node_unreachable",
                           f"node {claim.owner} (the room's owner) did not answer")
    return await handler(request)


# Asks one other node (by its HTTP base URL) for a recording: its answer, NOT_THERE if it
# does not have it, None if it could not be reached.
Ask = Callable[[str], Awaitable[web.StreamResponse | None]]


async def _from_the_node_that_has_it(request: web.Request, handler: Handler, ask: Ask
                                     ) -> web.StreamResponse:
    """This node's answer if it has the recording, else the first other live node's that
    has it (recordings are found by id only: a room's owner may have changed since one
    started). A 404 only if every node answered: one that did not may have it (502)."""
    here = await _local_or_404(request, handler)
    if here is not None:
        return here
    node = request.app[NODE]
    try:
        live = await node.store.nodes()
    except Exception:
        live = {}
    silent = []
    for n, info in sorted(live.items()):
        if n != node.me:
            got = await ask(info.http)
            if got is None:
                silent.append(n)
            elif got is not NOT_THERE:
                return got
    if silent:
        raise api.ApiError(502, "node_unreachable",
                           f"node {silent[0]} did not answer (it may have the recording)")
    return await handler(request)


async def _on_the_node_that_has_it(request: web.Request, handler: Handler
                                   ) -> web.StreamResponse:
    """A recording's metadata, or its stop, from the node that has it."""
    async def ask(base: str) -> web.StreamResponse | None:
        got = await _forward(request, base, timeout=RECORDING_TIMEOUT_S)
        return NOT_THERE if got is not None and got.status == 404 else got
    return await _from_the_node_that_has_it(request, handler, ask)


async def _recording_audio(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A recording's WAV file from the node that wrote it, streamed through (Range and
    conditional requests passed on, their answers passed back)."""
    return await _from_the_node_that_has_it(request, handler,
                                            lambda base: _stream_from(request, base))


NOT_THERE = web.Response(status=404)  # _stream_from: that node answered 404


async def _stream_from(request: web.Request, base: str) -> web.StreamResponse | None:
    """GET this request's path from another node and stream its answer to our caller;
    NOT_THERE if that node does not have it (404), None if it cannot be reached."""
    path_qs = _path_qs(request, None)
    headers = _signed_headers(request, path_qs, b"")
    headers.update({h: request.headers[h] for h in AUDIO_HEADERS_IN if h in request.headers})
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0,
                                    sock_read=AUDIO_READ_TIMEOUT_S)
    resp: web.StreamResponse | None = None
    try:
        async with request.app[CLIENT].get(URL(base + path_qs, encoded=True),
                                           headers=headers, timeout=timeout) as r:
            if r.status == 404:
                return NOT_THERE
            if r.status not in (200, 206):  # an error, a 304 or a 416: small, passed on
                payload = await _read_capped(r, MIB)
                return web.Response(status=r.status, body=payload or None, headers={
                    h: r.headers[h] for h in AUDIO_HEADERS_OUT
                    if h in r.headers and h != "Content-Length"})
            resp = web.StreamResponse(status=r.status, headers={
                h: r.headers[h] for h in AUDIO_HEADERS_OUT if h in r.headers})
            await resp.prepare(request)
            async for chunk in r.content.iter_chunked(64 * 1024):
                await resp.write(chunk)
            log.info("cluster.forward", extra={"path": request.path, "to": base,
                                               "status": r.status})
            return resp
    except (aiohttp.ClientError, TimeoutError, _TooBig) as exc:
        log.warning("cluster.forward_failed", extra={"path": request.path, "to": base,
                                                     "error": str(exc) or type(exc).__name__})
        if resp is None:
            return None
        # Part of the file is sent already: cut the connection, so that the client sees a
        # short download rather than a complete-looking one.
        if request.transport is not None:
            request.transport.close()
        return resp


STEERED: dict[tuple[str, str], Callable[[web.Request, Handler],
                                        Awaitable[web.StreamResponse]]] = {
    ("PATCH", "/v1/conferences/{room}/participants/{call_id}"): _participant,
    ("DELETE", "/v1/conferences/{room}/participants/{call_id}"): _participant,
    ("DELETE", "/v1/conferences/{room}"): _end_room,
    ("POST", "/v1/conferences/{room}/announcements"): _announce,
    ("DELETE", "/v1/calls/{call_id}"): _hang_up,
    ("GET", "/v1/calls"): _list_calls,
    ("POST", "/v1/conferences/{room}/recordings"): _start_recording,
    ("DELETE", "/v1/conferences/{room}/recordings/{recording_id}"): _on_the_node_that_has_it,
    ("GET", "/v1/recordings/{recording_id}"): _on_the_node_that_has_it,
    ("GET", "/v1/recordings/{recording_id}/audio"): _recording_audio,
}


@web.middleware
async def steer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Cluster-wide /v1 requests: the list merged from every node, and the steering ones
    sent to the node(s) that have the participant, call or room. A forwarded request is
    answered here alone."""
    if api.SCOPE not in request or request.get(api.FORWARDED):
        return await handler(request)
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else ""
    if request.method == "GET" and path == "/v1/conferences":
        return await list_view(request)
    how = STEERED.get((request.method, path))
    return await how(request, handler) if how is not None else await handler(request)
