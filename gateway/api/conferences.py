"""/v1/conferences: the live rooms and their participants; end a room; mute, hold, coach or
remove a participant; announcements to the whole room."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.actions.say import Say
from gateway.api.core import ApiError, Route, invalid_body, member, room_in_scope, visible
from gateway.conferences import TooManyAnnouncements
from gateway.keys import CALLS, CLUSTER_ROOM, CONFIG, ENGINE, ROOMS, SERVICES
from gateway.room_requests import (
    MAX_ANNOUNCEMENT_LOOP,
    MAX_SPEAK_TO,
    parse_announcement,
    parse_patch,
)
from gateway.strict import ValidationError
from gateway.timestamps import iso
from media.rooms import Room, RoomError


async def room_view(app: web.Application, room: Room) -> dict[str, Any]:
    """The room with its participants, as GET /v1/conferences/{room} shows it (a cluster node
    also shows its own part of a room with it)."""
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
             if visible(request, r.key.customer_id)]
    return web.json_response(
        {"conferences": [await room_view(request.app, r) for r in rooms]})


async def get_conference(request: web.Request) -> web.Response:
    if CLUSTER_ROOM in request.app:  # every node's participants
        return web.json_response(await request.app[CLUSTER_ROOM](request))
    return web.json_response(await room_view(request.app, room_in_scope(request)))


async def end_conference(request: web.Request) -> web.Response:
    room = room_in_scope(request)
    request.app[ROOMS].end(room.key)
    return web.Response(status=204)


async def patch_participant(request: web.Request) -> web.Response:
    """Mute, hold or coach a participant (any of them in one request, all or nothing)."""
    rooms = request.app[ROOMS]
    member(request, room_in_scope(request))
    try:
        patch = parse_patch(await request.read())
    except ValidationError as exc:
        raise invalid_body(exc, "invalid body") from None
    # Looked up again: the participant may have left (or the room ended) while the body
    # was on its way.
    room = room_in_scope(request)
    cid = member(request, room)
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
    room_in_scope(request)
    try:
        prompt = parse_announcement(await request.read())
    except ValidationError as exc:
        raise invalid_body(exc, "invalid body") from None
    room = room_in_scope(request)
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
    room = room_in_scope(request)
    cid = member(request, room)
    try:
        request.app[ROOMS].remove(cid)
    except RoomError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.Response(status=204)


ROUTES = (
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
)
