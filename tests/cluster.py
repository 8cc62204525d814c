"""Two (or more) gateway nodes sharing rooms through a real redis-server, for the cluster
tests: each node is an ordinary `python -m gateway serve` process (tests/harness.py) with a
`cluster:` section; callers are forced onto a node by dialling it directly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.cluster.redis_store import ClusterStore
from tests.audio import duration_s, levels
from tests.harness import AppServer, GatewayProc, app_config, start_gateway
from tests.redisproc import RedisProc

CLUSTER_SECRET = "cluster-secret-for-tests-0123"
# Fast enough for tests: an owner renews every 0.5 s; a dead owner's rooms are free after 2 s.
TIMING = {"tick_s": 0.5, "lease_s": 2.0, "node_ttl_s": 4.0}


@dataclass
class Cluster:
    tmp: Path
    redis: RedisProc
    app: AppServer
    nodes: dict[str, GatewayProc] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)
    old: list[GatewayProc] = field(default_factory=list)

    async def start_node(self, name: str, sections: dict[str, dict[str, Any]] | None = None,
                         app: dict[str, Any] | None = None, **cluster: Any) -> GatewayProc:
        """A node; `sections`: more config sections (e.g. api tokens); `app`: settings of
        the test's application (e.g. caller_ids)."""
        d = self.tmp / name
        d.mkdir(exist_ok=True)
        gw = await start_gateway(d, [app_config(self.app, **(app or {}))], cluster={
            "node_id": name, "redis_url": self.redis.url, "secret": CLUSTER_SECRET,
            **TIMING, **cluster}, sip={"media_timeout_s": 5}, **(sections or {}))
        if name in self.nodes:  # restarted: the old process's log is checked too
            self.old.append(self.nodes[name])
        self.nodes[name] = gw
        self.killed.discard(name)
        return gw

    def kill(self, name: str) -> None:
        """kill -9: nothing is cleaned up, nothing is said to anyone."""
        gw = self.nodes[name]
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
        self.killed.add(name)

    def stop_all(self) -> None:
        problems = []
        for name, gw in self.nodes.items():
            code = gw.stop()
            log = gw.log()
            if "Traceback" in log or "Assert failed" in log:
                problems.append(f"{name}: {log[-4000:]}")
            if name not in self.killed and code != 0:
                problems.append(f"{name}: exit code {code}\n{log[-3000:]}")
        for gw in self.old:
            if "Traceback" in gw.log():
                problems.append(gw.log()[-4000:])
        assert not problems, "\n".join(problems)


@pytest.fixture
async def cluster(tmp_path: Path, app: AppServer) -> AsyncIterator[Cluster]:
    redis = RedisProc(tmp_path).start()
    c = Cluster(tmp_path, redis, app)
    try:
        yield c
    finally:
        try:
            c.stop_all()
        finally:
            redis.stop()


@pytest.fixture
async def cluster_store(cluster: Cluster) -> AsyncIterator[ClusterStore]:
    """A client of the cluster's Redis, to read what the nodes keep there (closed before
    the cluster stops)."""
    store = ClusterStore(cluster.redis.url)
    yield store
    await store.close()


def tail_levels(path: Path, *freqs: float, window_s: float = 2.0,
                tail_s: float = 0.4) -> dict[float, float]:
    """Tone levels over the last `window_s` of a recording (before the hang-up's tail)."""
    end = duration_s(path) - tail_s
    return levels(path, *freqs, start_s=max(0.0, end - window_s), end_s=end)


async def room_nodes(gw: GatewayProc, room: str) -> dict[str, str]:
    """call ID -> node of every participant `gw`'s API lists for the room."""
    status, body = await gw.get(f"/v1/conferences/{room}")
    if status != 200:
        return {}
    return {p["call_id"]: p["node"] for p in body["participants"]}


async def settle(seconds: float) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(seconds)


def senders(c: Cluster, event_id: str) -> list[str]:
    """The nodes whose outbox (their SQLite, read-only) holds the webhook `event_id`: who
    sent it."""
    found = []
    for name, gw in sorted(c.nodes.items()):
        db = sqlite3.connect(f"file:{gw.db_path}?mode=ro", uri=True, timeout=5)
        try:
            if db.execute("SELECT 1 FROM outbox WHERE event_id = ?", (event_id,)).fetchone():
                found.append(name)
        finally:
            db.close()
    return found


def completions(c: Cluster, call_id: str) -> list[tuple[dict[str, Any], str]]:
    """Every call.completed the application received for `call_id`, with its event id."""
    return [(r.json, r.headers.get("MiniVoice-Event-Id", "")) for r in c.app.requests
            if r.path == "/events" and r.json["call"]["id"] == call_id
            and r.json["event"] == "call.completed"]


async def call_id_from(c: Cluster, caller: str, timeout: float = 10.0) -> str:
    """The call ID of the (first) call the application saw from `caller` (its webhooks
    come through an outbox: they may trail the call's media)."""
    def find() -> str | None:
        return next((w["call"]["id"] for w in c.app.webhooks() if w["call"]["from"] == caller),
                    None)
    found: str = await c.app.wait_for(find, timeout)
    return found
