"""The HTTP API on the gateway's port: health, and the REST API under /v1 to see and steer
live calls and conference rooms. JSON in and out; errors are
`{"error": {"code": ..., "message": ...}}`. The OpenAPI document at /v1/openapi.json is
built from the same route table, so the two cannot drift apart.

One module a resource (calls, conferences, recordings, health), each with its own routes;
what they share is in core (errors, scope, body and query parsing, the room in the path);
auth is the middleware; routes assembles the table and serves it (setup); openapi writes
the document. The names the rest of the gateway and the tests use are here.
"""

from __future__ import annotations

from gateway.api.auth import authorize as _authorize
from gateway.api.auth import errors_and_auth, scope
from gateway.api.core import FORWARDED, FORWARDED_HEADER, SCOPE, ApiError, Handler, Route
from gateway.api.routes import ROUTES, openapi_document, setup

__all__ = [
    "FORWARDED",
    "FORWARDED_HEADER",
    "ROUTES",
    "SCOPE",
    "ApiError",
    "Handler",
    "Route",
    "_authorize",
    "errors_and_auth",
    "openapi_document",
    "scope",
    "setup",
]
