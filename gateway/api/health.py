"""GET /healthz (for load balancers and orchestrators: no token) and GET /metrics (Prometheus,
an admin token only)."""

from __future__ import annotations

from aiohttp import web

from gateway.api.core import SCOPE, ApiError
from gateway.keys import CALLS, ENGINE, METRICS, OUTBOX, STATUS
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE


async def healthz(request: web.Request) -> web.Response:
    alive = request.app[ENGINE].alive
    body = {"status": "ok" if alive else "sip engine not running",
            "accepting_calls": request.app[STATUS].accepting,
            "calls": len(request.app[CALLS]),
            "webhooks_pending": request.app[OUTBOX].pending_count()}
    return web.json_response(body, status=200 if alive else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. Gateway-wide numbers: an admin token only (a customer's token
    would see other customers' traffic in them)."""
    admin, _ = request[SCOPE]
    if not admin:
        raise ApiError(403, "forbidden", "metrics need an admin token")
    return web.Response(body=request.app[METRICS].render(),
                        headers={"Content-Type": METRICS_CONTENT_TYPE})
