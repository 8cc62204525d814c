"""Who is asking, and every error as the same JSON: the middleware in front of the whole
HTTP API. /v1 (but the OpenAPI document) and /metrics need a bearer token from api.tokens, or
a cluster peer's signed forward; with no tokens configured the API is open (loopback only)."""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.api.core import FORWARDED, FORWARDED_HEADER, SCOPE, ApiError, Handler, error_response
from gateway.config import ApiToken
from gateway.keys import CLUSTER_AUTH, CONFIG


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if (request.path.startswith("/v1/") and request.path != "/v1/openapi.json") \
                or request.path == "/metrics":
            if FORWARDED_HEADER in request.headers and CLUSTER_AUTH in request.app:
                request[SCOPE] = await request.app[CLUSTER_AUTH](request)
                request[FORWARDED] = True
            else:
                request[SCOPE] = authorize(request)
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.details)
    except web.HTTPException as exc:  # aiohttp's own 404/405: same JSON shape
        if exc.status >= 400:
            return error_response(exc.status, "http_error", exc.reason)
        raise


def authorize(request: web.Request) -> tuple[bool, str | None]:
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
