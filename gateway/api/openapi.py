"""The OpenAPI document of GET /v1/openapi.json, built from the route table itself (plus the
two operations that answer something other than JSON), so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway import __version__
from gateway.api.core import Route
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE


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


def document(routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of these routes, and of /metrics and the console's stream."""
    error = {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object", "properties": {
            "path": {"type": "string"}, "reason": {"type": "string"}}}}}}}}
    paths: dict[str, Any] = {}
    for r in routes:
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
