"""The bench's own HTTP server on loopback: an application's event_url, and media files.

The feature modes point the gateway's application `event_url` here (the webhooks are
accepted with 204 and counted per event, as a working application would) and serve
`play` files from here (the gateway then needs `hooks.allow_private` for loopback).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

from bench.gateway import free_port


class Receiver:
    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.fetches: list[tuple[float, str]] = []
        self.files: dict[str, Path] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _event(self, request: web.Request) -> web.Response:
        try:
            self.events[str(json.loads(await request.read()).get("event"))] += 1
        except (ValueError, AttributeError):
            self.events["<not json>"] += 1
        return web.Response(status=204)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self.files.get(name)
        if path is None:
            raise web.HTTPNotFound()
        self.fetches.append((time.monotonic(), name))
        return web.Response(body=path.read_bytes(), content_type="audio/wav")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self._event)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    @property
    def event_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def serve(self, path: Path) -> str:
        """Serve `path`; its URL."""
        self.files[path.name] = path
        return f"http://127.0.0.1:{self.port}/files/{path.name}"

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()
