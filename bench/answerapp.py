"""The application for `python -m bench --mode setup`, in a process of its own.

    python -m bench.answerapp --port N --secret S [--no-verify]

POST /answer answers like the gateway's embedded demo app (gateway/demo.py): the request's
signature is checked with `secret` (HMAC-SHA256 over the raw body, gateway.signing.verify;
`--no-verify` skips it), then dialing N puts the caller in room `support-room-N` with one
`conference` action. POST /events accepts every webhook with 204 (signature checked the
same way) and counts it by event. GET /stats returns the counts as JSON, with the number of
TCP connections the requests came on (`connections`: keep-alive makes it far below the
number of requests).

Running it outside the gateway is the point: with the embedded demo app both ends of the
answer_url round trip are charged to the gateway's CPU, here its own pid carries its cost.
It prints `ready <port>` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter

from aiohttp import web

from gateway import signing
from gateway.demo import room_for

MAX_BODY = 64 * 1024  # a call.answer envelope is ~1 kB; anything far bigger is not ours
MAX_CONNECTIONS_COUNTED = 100_000


class AnswerApp:
    def __init__(self, secret: str, verify: bool = True) -> None:
        self.secret = secret
        self.verify = verify
        self.counts: Counter[str] = Counter()
        # TCP connections seen: far fewer than requests when the gateway keeps them alive
        self._connections: set[str] = set()

    def _seen(self, request: web.Request) -> None:
        if len(self._connections) < MAX_CONNECTIONS_COUNTED:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self._connections.add(str(peer))
            self.counts["connections"] = len(self._connections)

    async def _doc(self, request: web.Request) -> dict[str, object] | None:
        self._seen(request)
        body = await request.read()
        if self.verify and not signing.verify(self.secret, body,
                                              request.headers.get(signing.HEADER)):
            self.counts["bad_signature"] += 1
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            self.counts["not_json"] += 1
            return None
        if not isinstance(doc, dict):
            self.counts["not_object"] += 1
            return None
        return doc

    async def answer(self, request: web.Request) -> web.Response:
        doc = await self._doc(request)
        call = doc.get("call") if doc else None
        if not isinstance(call, dict):
            return web.Response(status=401 if doc is None else 400)
        self.counts["answer"] += 1
        room = room_for(str(call.get("to", "")))
        return web.json_response({"actions": [{"conference": {"room": room}}]})

    async def events(self, request: web.Request) -> web.Response:
        doc = await self._doc(request)
        if doc is None:
            return web.Response(status=401)
        self.counts[str(doc.get("event"))[:64]] += 1
        return web.Response(status=204)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.counts))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/answer", self.answer)
        app.router.add_post("/events", self.events)
        app.router.add_get("/stats", self.stats)
        return app


async def serve(port: int, secret: str, verify: bool) -> None:
    runner = web.AppRunner(AnswerApp(secret, verify).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print(f"ready {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.answerapp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--no-verify", action="store_true", help="do not check signatures")
    args = p.parse_args(argv)
    asyncio.run(serve(args.port, args.secret, not args.no_verify))
    return 0


if __name__ == "__main__":
    sys.exit(main())
