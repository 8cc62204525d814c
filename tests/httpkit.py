"""Small real HTTP servers for tests: an aiohttp app on loopback whose routes a test sets."""

from __future__ import annotations

import asyncio
import io
import struct
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from media.tones import sine, to_pcm16

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Run `app` on a free loopback port: (its runner, for cleanup(); the port)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_pcm16(sine(440, seconds, rate)))
    return out.getvalue()


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


class Server:
    """An aiohttp server on loopback whose routes a test sets."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[str] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        return await self.routes[request.path](request)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner, self.port = await serve(app)
        return runner


def in_pieces(body: bytes, pieces: int = 2, gap_s: float = 0.05,
              headers: dict[str, str] | None = None) -> Route:
    """A handler that writes `body` in several pieces with pauses, as real servers may."""
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers=headers or {})
        await resp.prepare(request)
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            await resp.write(body[i:i + step])
            await asyncio.sleep(gap_s)
        await resp.write_eof()
        return resp
    return handler


def crafted_wav(rate: int, data: bytes, *, channels: int = 1, bits: int = 8, tag: int = 1,
                declared: int | None = None) -> bytes:
    """A WAV whose header says whatever the test wants."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + \
        struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", min(len(body), 0xFFFFFFFF)) + body
