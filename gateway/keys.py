"""The gateway's services as typed keys of the aiohttp application, for the HTTP handlers
(gateway.api) to reach exactly the service they need."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.call.services import Services
from gateway.call.table import CallTable
from gateway.conferences import Conferences
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.outbox import Outbox
from gateway.recordings import Recordings
from gateway.store import Store
from sip.engine import SipEngine


@dataclass
class Status:
    """What /healthz reports beyond the services: new calls are refused while draining."""

    accepting: bool = True


CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
STATUS: web.AppKey[Status] = web.AppKey("status", Status)
ENGINE: web.AppKey[SipEngine] = web.AppKey("engine", SipEngine)
ROOMS: web.AppKey[Conferences] = web.AppKey("rooms", Conferences)
STORE: web.AppKey[Store] = web.AppKey("store", Store)
CALLS: web.AppKey[CallTable] = web.AppKey("calls", CallTable)
OUTBOX: web.AppKey[Outbox] = web.AppKey("outbox", Outbox)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
RECORDINGS: web.AppKey[Recordings] = web.AppKey("recordings", Recordings)
SERVICES: web.AppKey[Services] = web.AppKey("services", Services)

# With a cluster (gateway.cluster.http): a room and a call as seen across every node.
CLUSTER_ROOM: web.AppKey[Callable[[web.Request], Awaitable[dict[str, Any]]]] = web.AppKey(
    "cluster_room")
CLUSTER_CALL: web.AppKey[Callable[[web.Request, str], Awaitable[dict[str, Any] | None]]] = (
    web.AppKey("cluster_call"))
