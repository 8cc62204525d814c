"""The route table of the whole HTTP API and the function that serves it on an application.
Each resource module brings its own routes; none of them imports another."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.api import calls, conferences, openapi, recordings
from gateway.api.auth import errors_and_auth
from gateway.api.core import Route
from gateway.api.health import healthz, metrics
from gateway.keys import CONFIG

log = logging.getLogger("minivoice.api")

# In this order in the OpenAPI document.
ROUTES: tuple[Route, ...] = calls.ROUTES + conferences.ROUTES + recordings.ROUTES


def setup(app: web.Application) -> None:
    cfg = app[CONFIG]
    app.middlewares.append(errors_and_auth)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
    app.router.add_get("/v1/openapi.json", serve_openapi)
    if not cfg.api.tokens:  # loopback only: config.check_exposure refuses anything else
        log.warning("api open: no tokens configured", extra={"http": cfg.http.host})


def openapi_document() -> dict[str, Any]:
    return openapi.document(ROUTES)


async def serve_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
