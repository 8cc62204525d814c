"""What every resource of the REST API shares: the error it raises and the JSON body it
becomes, who is asking (the scope the auth middleware sets), the route record the app and the
OpenAPI document are built from, and the pure parsing of bodies and query parameters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.keys import ROOMS
from gateway.strict import ValidationError, parse_json
from media.rooms import Room, RoomKey

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


def error_response(status: int, code: str, message: str,
                   details: list[dict[str, str]] | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return web.json_response({"error": error}, status=status)


def visible(request: web.Request, customer_id: str) -> bool:
    """Whether the caller may see something of that customer's (an admin sees everything)."""
    admin, customer = request[SCOPE]
    return bool(admin or customer == customer_id)


# -- bodies and query parameters (pure) ---------------------------------------------------
def json_body(raw: bytes, message: str = "body must be JSON") -> Any:
    """The parsed body, or 400 invalid_body saying what is wrong with it (gateway.strict's
    parse_json: no NaN, no duplicate keys, no pathological nesting or numbers). The body's
    size is capped by the application's client_max_size before it gets here."""
    try:
        return parse_json(raw)
    except ValidationError as exc:
        raise invalid_body(exc, message) from None


def empty_body(raw: bytes) -> None:
    """A body that must be empty or `{}` (a request with nothing to say)."""
    if raw.strip() and json_body(raw, "body must be empty or {}") != {}:
        raise ApiError(400, "invalid_body", "body must be empty or {}")


def invalid_body(exc: ValidationError, message: str) -> ApiError:
    """A validator's every problem as one 400 with its (path, reason) details."""
    return ApiError(400, "invalid_body", message, [d.as_dict() for d in exc.details])


def query_limit(query: Mapping[str, str], default: int, most: int) -> int:
    """?limit=N of a listing: 1 to `most`, `default` when not given."""
    try:
        limit = int(query.get("limit", str(default)))
    except ValueError:
        raise ApiError(400, "invalid_query", "limit must be an integer") from None
    if not 1 <= limit <= most:
        raise ApiError(400, "invalid_query", f"limit must be 1 to {most}")
    return limit


# -- the room in the path (conferences and recordings both address rooms by name) --------
def room_in_scope(request: web.Request) -> Room:
    """The room named in the path, within the caller's customer scope."""
    rooms = request.app[ROOMS]
    name = request.match_info["room"]
    admin, customer = request[SCOPE]
    if not admin:
        room = rooms.room(RoomKey(str(customer), name))
    else:
        wanted = request.query.get("customer_id")
        key = one_room(name, {r.key for r in rooms.live() if r.key.name == name
                              and (wanted is None or r.key.customer_id == wanted)})
        room = rooms.room(key)
    if room is None:
        raise ApiError(404, "not_found", f"no room {name}")
    return room


def one_room(name: str, found: set[RoomKey]) -> RoomKey:
    """The one room named `name` an admin's request can mean (rooms of different customers
    may share a name): 409 when there are several, 404 when none."""
    if len(found) > 1:
        raise ApiError(409, "ambiguous", f"room {name} exists for several customers: "
                                         "add ?customer_id=")
    if not found:
        raise ApiError(404, "not_found", f"no room {name}")
    return next(iter(found))


def member(request: web.Request, room: Room) -> str:
    """The call ID in the path, which must be a participant of the room."""
    cid = request.match_info["call_id"]
    if cid not in room.members:
        raise ApiError(404, "not_found", f"{cid} is not in room {room.key.name}")
    return cid
