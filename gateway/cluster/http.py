"""The REST API across nodes: any node answers for a whole room and for any call.

- `GET /v1/conferences/{room}`: this node's participants, plus those of every other node
  that has members of the room (Redis: members by call ID -> node), asked over HTTP.
  Each participant has `node`. Cascade legs are not participants.
- `GET /v1/calls/{id}`: this node's call, else asked of every live node in turn. (No
  call -> node map in Redis: that would cost two Redis writes per call for a lookup the
  handful of nodes answer as cheaply.)

Node-to-node requests go to /cluster/v1/..., outside the bearer-token API, authenticated by
an HMAC of the path with cluster.secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from gateway import api, keys
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
    view = await api._room_view(app, room)
    return [p | {"node": node.me} for p in view["participants"]
            if not node.is_cascade_leg(p["call_id"])]


async def local_room(request: web.Request) -> web.Response:
    _check(request)
    key = RoomKey(request.match_info["customer"], request.match_info["room"])
    return web.json_response({"participants": await _local_participants(request.app, key)})


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
    if len(found) > 1:
        raise api.ApiError(409, "ambiguous", f"room {name} exists for several customers: "
                                             "add ?customer_id=")
    if not found:
        raise api.ApiError(404, "not_found", f"no room {name}")
    return found.pop()


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
