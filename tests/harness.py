"""Real parts for integration tests: a gateway process, an application server, softphones.

Everything talks over loopback: the gateway is `python -m gateway serve` in a
subprocess with a generated YAML config; the application is an aiohttp server
in the test process; callers are `tests/phonebank.py` (pjsua2) or SIPp.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from bench.gateway import free_port as free_port  # shared with the benchmark; re-exported
from gateway import signing
from tests.httpkit import serve

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Every gateway process a test starts: a crash in C (pjsua2) prints each Python thread's stack
# to the gateway's log (faulthandler) instead of leaving only an exit code of -11.
GATEWAY_ENV = {**os.environ, "PYTHONFAULTHANDLER": "1"}
SECRET = "test-secret-123456"

# RTP port blocks handed out to gateways and phonebanks. A gateway takes random ports in
# [block, block + 1000) (rtp_port_range below): the last block ends below 32768, where Linux's
# ephemeral ports (clients) begin; free_port() hands out ports above that range.
_rtp_blocks = itertools.cycle(range(20000 + 200 * random.randrange(0, 30), 31700, 200))


def rtp_block() -> int:
    return next(_rtp_blocks)


# --------------------------------------------------------------------------- app ---
Handler = Callable[[dict[str, Any]], Awaitable[Any] | Any]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class AppServer:
    """The application under test. `answer` decides what /answer returns:
    a dict (sent as JSON), a (status, body-bytes) tuple, or an awaitable of either."""

    answer: Handler = lambda payload: {"actions": [{"conference": {"room": "r1"}}]}
    # POST /hook/<name> (gather action_url, redirect url) -> hooks[name](payload)
    hooks: dict[str, Handler] = field(default_factory=dict)
    # GET /media/<name> -> (body, content headers); honours If-None-Match with the ETag
    media: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    events_status: int = 204
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def webhooks(self, call_id: str | None = None) -> list[dict[str, Any]]:
        return [r.json for r in self.requests if r.path == "/events"
                and (call_id is None or r.json["call"]["id"] == call_id)]

    def posts(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def answers(self) -> list[Received]:
        return [r for r in self.requests if r.path == "/answer"]

    async def wait_for(self, pred: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = pred()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met; requests: "
                                   + ", ".join(r.path for r in self.requests))
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.2)

    async def completed(self, call_id: str | None = None, count: int = 1,
                        timeout: float = 10.0) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]]:
            hooks = [w for w in self.webhooks(call_id) if w["event"] == "call.completed"]
            return hooks if len(hooks) >= count else []
        result: list[dict[str, Any]] = await self.wait_for(done, timeout)
        return result

    async def _record(self, request: web.Request) -> Received:
        rec = Received(request.path, dict(request.headers), await request.read(), time.time())
        self.requests.append(rec)
        self._changed.set()
        return rec

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        handler = self.answer
        if request.path.startswith("/hook/"):
            handler = self.hooks[request.match_info["name"]]
        result = handler(rec.json)
        if asyncio.iscoroutine(result):
            result = await result
        if isinstance(result, tuple):
            status, body = result
            return web.Response(status=status, body=body, content_type="application/json")
        return web.json_response(result)

    async def _media(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        body, headers = self.media[request.match_info["name"]]
        etag = headers.get("ETag")
        if etag and request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.Response(status=self.events_status)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/answer", self._answer)
        app.router.add_post("/fallback", self._answer)
        app.router.add_post("/events", self._events)
        app.router.add_post("/hook/{name}", self._answer)
        app.router.add_get("/media/{name}", self._media)
        runner, self.port = await serve(app)
        return runner


def verify_signature(rec: Received) -> bool:
    return signing.verify(SECRET, rec.body, rec.headers.get(signing.HEADER))


# ------------------------------------------------------------------------ gateway ---
@dataclass
class GatewayProc:
    proc: subprocess.Popen[bytes]
    sip_port: int
    http_port: int
    log_path: Path
    db_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def uri(self, user: str = "1001") -> str:
        return f"sip:{user}@127.0.0.1:{self.sip_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    token: str | None = None  # bearer token sent by get()/request() when set

    async def get(self, path: str) -> tuple[int, Any]:
        return await self.request("GET", path)

    async def request(self, method: str, path: str, body: Any = None,
                      token: str | None = "default") -> tuple[int, Any]:
        """An API call; `token="default"` uses self.token, None sends no Authorization."""
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as s, s.request(
                method, self.http + path, json=body, headers=headers) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def app_config(app: AppServer, **overrides: Any) -> dict[str, Any]:
    cfg = {"id": "app_test", "customer_id": "cust_test", "answer_url": app.url + "/answer",
           "event_url": app.url + "/events", "secret": SECRET, "numbers": ["*"]}
    cfg.update(overrides)
    return cfg


# What a gateway that could not bind its ports logs (pjsua's and asyncio's wording).
_PORT_TAKEN = ("address already in use", "eaddrinuse")  # compared in lower case


async def start_gateway(tmp: Path, applications: list[dict[str, Any]],
                        **sections: Any) -> GatewayProc:
    """`python -m gateway serve` on free ports, healthy. A port can still be taken between
    free_port() and the gateway's bind (by another test run on the same box): then again,
    on other ports, twice at most."""
    for attempt in range(3):
        try:
            return await _start_gateway(tmp, applications, **sections)
        except RuntimeError as exc:
            if attempt == 2 or not any(t in str(exc).lower() for t in _PORT_TAKEN):
                raise
    raise AssertionError("unreachable")


async def _start_gateway(tmp: Path, applications: list[dict[str, Any]],
                         **sections: Any) -> GatewayProc:
    sip_port, http_port = free_port(), free_port()
    db = tmp / "gateway.db"
    cfg: dict[str, Any] = {
        "sip": {"host": "127.0.0.1", "port": sip_port, "rtp_port_start": rtp_block(),
                "rtp_port_range": 1000,
                "log_level": 2},
        "http": {"host": "127.0.0.1", "port": http_port},
        "database": str(db),
        "applications": applications,
        # short drain, so a test that fails with calls up still tears down quickly
        "shutdown": {"drain_s": 2},
        # every test's application is on loopback: action_url, redirect and play URLs
        # from its responses must be allowed to reach it (the default refuses them), and so
        # must the SIP URIs tests transfer to or call through POST /v1/calls
        "hooks": {"allow_private": ["127.0.0.0/8"]},
        "dialing": {"allow_private": ["127.0.0.0/8"]},
    }
    for name, values in sections.items():  # a section is merged; a scalar (demo) is set
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    path = tmp / f"gateway-{sip_port}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log_path = tmp / f"gateway-{sip_port}.log"
    proc = subprocess.Popen(
        [PYTHON, "-m", "gateway", "serve", "--config", str(path), "--log-level", "DEBUG"],
        cwd=ROOT, env=GATEWAY_ENV, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    gw = GatewayProc(proc, sip_port, http_port, log_path, db)
    deadline = time.monotonic() + 20
    # Each probe bounded: a port taken by a listener that never answers would hold it.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        while True:
            if proc.poll() is not None:
                log = gw.log()
                taken = [line for line in log.splitlines()
                         if any(t in line.lower() for t in _PORT_TAKEN)]
                raise RuntimeError("gateway exited:\n" + "\n".join(taken[:1]) + log[-3000:])
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with s.get(gw.http + "/healthz") as r:
                    if r.status == 200:
                        return gw
            if time.monotonic() > deadline:
                gw.stop()
                raise RuntimeError("gateway did not become healthy:\n" + gw.log()[-3000:])
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------- phonebank ---
class Phonebank:
    """Async driver of tests/phonebank.py."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, tmp: Path, *extra: str) -> Phonebank:
        err = tmp / f"phonebank-{len(list(tmp.glob('phonebank-*')))}.err"
        proc = await asyncio.create_subprocess_exec(
            PYTHON, str(ROOT / "tests" / "phonebank.py"), "--rtp-port-start", str(rtp_block()),
            *extra, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=err.open("wb"), cwd=ROOT)
        bank = cls(proc, err)
        await bank.wait("ready", None, timeout=15)
        return bank

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                event["at"] = asyncio.get_running_loop().time()  # arrival, on the test's clock
                self.events.append(event)
                self._changed.set()

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())

    def call(self, cid: str, uri: str, **opts: Any) -> None:
        self.send(op="call", id=cid, uri=uri, **opts)

    def hangup(self, cid: str) -> None:
        self.send(op="hangup", id=cid)

    async def hangup_all(self, cids: Iterable[str], timeout: float = 10.0) -> None:
        """Hang up every call of `cids`, then wait for each one's `ended`. The hang-ups go
        out together and the waits share one deadline: each call has `timeout` seconds from
        the hang-ups, as if each were waited for on its own, without the waits adding up."""
        cids = list(cids)
        for cid in cids:
            self.hangup(cid)
        deadline = time.monotonic() + timeout
        for cid in cids:
            await self.wait("ended", cid, timeout=max(0.0, deadline - time.monotonic()))

    def find(self, event: str, cid: str | None, **match: Any) -> dict[str, Any] | None:
        for e in self.events:
            if e.get("event") == event and (cid is None or e.get("id") == cid) and all(
                    e.get(k) == v for k, v in match.items()):
                return e
        return None

    async def wait(self, event: str, cid: str | None, timeout: float = 10.0,
                   **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(event, cid, **match)
            if found:
                return found
            if time.monotonic() > deadline or self.proc.returncode is not None:
                raise TimeoutError(f"no {event} for {cid} {match}; events: {self.events[-20:]}"
                                   f"\nstderr: {self.stderr_path.read_text()[-2000:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.2)

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.send(op="quit")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
        # pjlib in a release build logs a failed internal assertion instead of aborting: a
        # test phone must never hit one (one aborted a phone once; see tests/test_robustness).
        err = self.stderr_path.read_text(errors="replace")
        assert "Assert failed" not in err, err[-3000:]
