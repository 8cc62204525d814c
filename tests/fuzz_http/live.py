"""The HTTP fuzzer against a live gateway: mutated REST requests over raw HTTP/1.1 (paths,
queries, headers and bodies from the OpenAPI document and the REST bodies), and mutated
answer_url / action_url documents and media responses returned by the test application to
real SIP calls.

Oracles, per response: never a 5xx; every 4xx of the API has the documented error body
{"error": {"code", "message"[, "details"]}}; an answer within the time limit. Per campaign:
every real call ends with its call.completed webhook, /healthz stays 200, and (the caller's
job, tests/checks.py) a normal call still works. The gateway's log must hold no Traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from gateway.api.routes import openapi_document
from gateway.signing import sign
from tests.fuzz import messages as msgs
from tests.fuzz.run import ok_response
from tests.fuzz_http import corpus, mutate
from tests.harness import SECRET, AppServer, GatewayProc
from tests.httpkit import wav_bytes

ADMIN = "fuzz-admin-token-0123456789"
CUSTOMER = "fuzz-customer-token-0123456789"
TOKENS = [{"token": ADMIN}, {"token": CUSTOMER, "customer_id": "cust_test"}]
NAMES = corpus.field_names()


def gateway_sections() -> dict[str, Any]:
    """API tokens, the console and the demo application on: every HTTP server there is."""
    return {"api": {"tokens": TOKENS}, "http": {"console": True}, "demo": True}

STREAM = "/v1/console/stream"
# Statuses a fuzzed request may get that are not errors of the gateway's own.
ALLOWED_5XX = {503}  # 503 only while shutting down: a finding otherwise (checked below)


@dataclass
class Report:
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    calls: int = 0
    completed: int = 0
    app_requests: dict[str, int] = field(default_factory=dict)  # what the gateway fetched
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def finding(self, text: str) -> None:
        if len(self.findings) < 50:
            self.findings.append(text)

    def summary(self) -> str:
        codes = " ".join(f"{c}:{n}" for c, n in sorted(self.statuses.items()))
        fetched = " ".join(f"{p}:{n}" for p, n in sorted(self.app_requests.items()))
        rate = self.requests / self.seconds if self.seconds else 0.0
        return (f"live: requests={self.requests} ({rate:.0f}/s) calls={self.calls} "
                f"completed={self.completed} seconds={self.seconds:.1f} "
                f"findings={len(self.findings)}\n  statuses: {codes}\n"
                f"  the application served: {fetched}")


# -- REST requests ----------------------------------------------------------------------
@dataclass
class Known:
    """Real identifiers seen in responses, so fuzzed paths also reach the deep handlers."""
    call_ids: list[str] = field(default_factory=lambda: ["call_x"])
    rooms: list[str] = field(default_factory=lambda: ["r1", "fuzz-room"])
    recordings: list[str] = field(default_factory=lambda: ["rec_x"])

    def learn(self, body: bytes) -> None:
        for cid in re.findall(rb'"(call_[A-Za-z0-9_-]{1,64})"', body)[:5]:
            if cid.decode() not in self.call_ids:
                self.call_ids = [*self.call_ids, cid.decode()][-50:]
        for rid in re.findall(rb'"recording_id": ?"([^"]{1,64})"', body)[:5]:
            if rid.decode() not in self.recordings:
                self.recordings = [*self.recordings, rid.decode()][-20:]


def segment(rng: random.Random, known: list[str]) -> str:
    """A path segment, percent-encoded as a client would, or raw junk."""
    kind = rng.randrange(6)
    if kind <= 2:
        return quote(rng.choice(known), safe="")
    if kind == 3:
        return quote(mutate.string(rng)[:3000], safe="", errors="surrogatepass")
    return rng.choice(("..", "%2e%2e", "%2F", "%00", "a%00b", "%", "%zz", "%ff%fe", "x" * 5000,
                       "%41" * 300, ".", "~", "call_" + "a" * 65, "r1;x", "r1%20", "*", "%0d%0a"))


def body_for(method: str, path: str, rng: random.Random, base: str) -> bytes:
    if method == "POST" and path == "/v1/calls":
        doc: Any = corpus.call_request(rng, base)
        doc["to"] = rng.choice(("sip:2002@127.0.0.1:9", "sip:x@unresolvable.invalid", "alice"))
        doc["timeout"] = 1
    elif method == "PATCH":
        doc = corpus.patch(rng)
    elif path.endswith("/announcements"):
        doc = corpus.announcement(rng, base)
    elif rng.random() < 0.7:
        return rng.choice((b"", b"{}"))
    else:
        doc = mutate.value(rng)
    return mutate.document(doc, rng, NAMES)[0]


def auth(rng: random.Random) -> list[tuple[str, str]]:
    kind = rng.randrange(10)
    if kind <= 5:
        return [("Authorization", "Bearer " + ADMIN)]
    if kind == 6:
        return [("Authorization", "Bearer " + CUSTOMER)]
    return [("Authorization", rng.choice((
        "Bearer", "Bearer ", "bearer " + ADMIN, "Basic YTpi", "Bearer " + ADMIN + "x",
        "Bearer " + "A" * 7000, "Bearer \x01\x7f", "Bearer é" + ADMIN, "Bearer  " + ADMIN,
        "Digest username=\"a\"", "", "Bearer " + ADMIN[:16])))] * rng.choice((1, 1, 2))


def headers(rng: random.Random, body: bytes) -> list[tuple[str, str]]:
    h = [("Host", "127.0.0.1"), ("Connection", "close")]
    h += auth(rng)
    ctype = rng.choice(("application/json", "application/json; charset=utf-16", "text/plain",
                        "multipart/form-data; boundary=x", "", "application/json;;;"))
    if ctype:
        h.append(("Content-Type", ctype))
    if rng.random() < 0.1:
        h.append(("Content-Length", rng.choice(("-1", "1" * 30, "abc", "0"))))
    elif body or rng.random() < 0.5:
        h.append(("Content-Length", str(len(body))))
    if rng.random() < 0.1:
        h.append(rng.choice((("Transfer-Encoding", "chunked"), ("X-MiniVoice-Forwarded", "1"),
                             ("Accept", "*/*" * 1000), ("Range", "bytes=0-0,-1,5-1"),
                             ("If-None-Match", '"x"'), ("X-" + "a" * 100, "1"),
                             ("Expect", "100-continue"), ("Cookie", "a=" + "b" * 5000))))
    return h


def rest_case(rng: random.Random, known: Known, base: str,
              paths: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """(method, raw target, headers, body)."""
    path = rng.choice([*paths, "/healthz", "/v1/openapi.json", "/demo/answer",
                                     "/demo/events", "/", "/nope", "/v1/"])
    methods = [m.upper() for m in paths.get(path, {})] or ["GET", "POST"]
    method = rng.choice(methods) if rng.random() < 0.9 else rng.choice(
        ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"))
    target = path
    for name, pool in (("{call_id}", known.call_ids), ("{room}", known.rooms),
                       ("{recording_id}", known.recordings)):
        if name in target:
            target = target.replace(name, segment(rng, pool))
    if rng.random() < 0.3:
        q = [("state", rng.choice(("live", "ended", "x", ""))),
             ("limit", rng.choice(("1", "1000", "1001", "0", "-1", "9" * 5000, "1e3", "٣"))),
             ("customer_id", rng.choice(("cust_test", "", "%00", "x" * 300))),
             (mutate.string_plain(rng), mutate.string_plain(rng))]
        picked = rng.sample(q, rng.randrange(1, 5))
        target += "?" + "&".join(k + "=" + quote(v, safe="%", errors="surrogatepass")
                                 for k, v in picked)
    body = b""
    if method in ("POST", "PATCH", "PUT", "DELETE"):
        body = body_for(method, path, rng, base)
    hs = headers(rng, body)
    if path.startswith("/demo/") and rng.random() < 0.5:
        hs.append(("MiniVoice-Signature", sign(SECRET, body)))
    return method, target, hs, body


def encode_request(method: str, target: str, hs: list[tuple[str, str]], body: bytes) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs)
    return head.encode("utf-8", "surrogatepass") + b"\r\n" + body


async def send(port: int, raw: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection; (status, headers, body). Status 0: no answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        while line.startswith(b"HTTP/1.1 100 "):  # Expect: 100-continue; the answer follows
            while (await asyncio.wait_for(reader.readline(), timeout)).strip():
                pass
            line = await asyncio.wait_for(reader.readline(), timeout)
        m = re.match(rb"HTTP/1\.[01] (\d{3})", line)
        if not m:
            return 0, {}, line
        hs: dict[str, str] = {}
        while True:
            h = await asyncio.wait_for(reader.readline(), timeout)
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            hs[k.strip().lower()] = v.strip()
        body = b""
        if "content-length" in hs:
            with contextlib.suppress(asyncio.IncompleteReadError, TimeoutError):
                body = await asyncio.wait_for(
                    reader.readexactly(int(hs["content-length"])), timeout)
        return int(m.group(1)), hs, body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1)


def error_shape(body: bytes) -> str | None:
    """What is wrong with a 4xx body (None: the documented shape)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:80]!r}"
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or set(doc) != {"error"} or not isinstance(err, dict):
        return f"not {{'error': {{...}}}}: {body[:120]!r}"
    if not isinstance(err.get("code"), str) or not isinstance(err.get("message"), str) \
            or not set(err) <= {"code", "message", "details"}:
        return f"error without code/message: {body[:120]!r}"
    details = err.get("details")
    if details is not None and not (isinstance(details, list) and all(
            isinstance(d, dict) and set(d) == {"path", "reason"} for d in details)):
        return f"details not a list of {{path, reason}}: {body[:160]!r}"
    return None


async def rest_campaign(gw: GatewayProc, app: AppServer, cases: range, seed: int,
                        report: Report, known: Known, concurrency: int = 4) -> None:
    paths = openapi_document()["paths"]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for c in cases:
        queue.put_nowait(c)

    async def worker() -> None:
        while not queue.empty():
            case = queue.get_nowait()
            rng = random.Random(f"{seed}:rest:{case}")
            method, target, hs, body = rest_case(rng, known, app.url, paths)
            raw = encode_request(method, target, hs, body)
            where = f"case {case} (seed {seed}): {method} {target[:120]}"
            # a Content-Length promising more than the body: the server rightly waits for it
            # (or chunked, with no chunks)
            waits = any((k == "Content-Length" and v.isdigit() and int(v) > len(body))
                        or k == "Transfer-Encoding" for k, v in hs)
            try:
                status, rh, rbody = await send(gw.http_port, raw, 2 if waits else 15)
            except TimeoutError:
                if target.startswith(STREAM) or waits:  # a stream that streams
                    continue
                report.finding(f"no answer in 15 s to {where}")
                continue
            except (ConnectionError, OSError) as exc:
                # A request aiohttp's parser refuses (a control character in a header) is
                # answered 400 and the connection closed: a large body still being written
                # then meets a reset. Anything else is a finding.
                hostile = len(body) > 60_000 or any(
                    ord(c) < 32 or ord(c) == 127 for _, v in hs for c in v)
                if not hostile:
                    report.finding(f"connection failed ({exc}) on {where}")
                continue
            report.requests += 1
            report.statuses[status] = report.statuses.get(status, 0) + 1
            known.learn(rbody)
            if status == 0:
                report.finding(f"no HTTP status line on {where}: {rbody[:80]!r}")
            elif status >= 500:
                report.finding(f"{status} on {where}: {rbody[:200]!r}")
            elif method == "HEAD":  # no body to check
                pass
            elif 400 <= status < 500 and not target.startswith("/demo/") \
                    and "application/json" in rh.get("content-type", ""):
                wrong = error_shape(rbody)
                if wrong:
                    report.finding(f"{status} with {wrong} on {where}")
            elif 400 <= status < 500 and target.startswith(("/v1/", "/metrics", "/healthz")) \
                    and status not in (400, 413, 431) and not target.startswith(STREAM):
                # not JSON at all: only aiohttp's own parser errors may answer so
                report.finding(f"{status} not JSON on {where}: {rbody[:120]!r}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# -- answer_url documents on real calls --------------------------------------------------
def media_response(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """What the 'bad' media URL answers: not the audio it claims, or odd headers."""
    body = rng.choice((wav_bytes(0.2), b"", b"<html>no</html>", b"RIFF\xff\xff\xff\xffWAVE",
                       b"ID3" + bytes(50), b"\xff\xfb" + bytes(100), wav_bytes(0.2)[:30],
                       bytes(rng.randrange(256) for _ in range(500))))
    headers = {"Content-Type": rng.choice(("audio/wav", "audio/mpeg", "text/html", "",
                                           "audio/wav; x=" + "y" * 3000, "\x01"))}
    if rng.random() < 0.6:
        headers["Cache-Control"] = rng.choice(("max-age=" + "9" * rng.choice((10, 11, 400)),
                                               "max-age=-1", "no-store", "max-age=٣",
                                               "public, max-age=0, max-age=5"))
    if rng.random() < 0.5:
        headers["ETag"] = rng.choice(('"a"', "W/\"" + "e" * 5000 + '"', "", "\x7f"))
    if rng.random() < 0.3:
        headers["Last-Modified"] = rng.choice(("yesterday", "Mon, 01 Jan 10000 00:00:00 GMT", ""))
    headers = {k: v for k, v in headers.items() if "\x01" not in v and "\x7f" not in v}
    return body, headers


class _Sip(asyncio.DatagramProtocol):
    """A caller of just enough SIP: INVITE, ACK the 2xx, answer the gateway's BYE."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.answered: dict[str, asyncio.Future[str]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if data.startswith((b"BYE ", b"OPTIONS ", b"INFO ", b"UPDATE ")):
            self.transport.sendto(ok_response(data), addr)
            return
        m = re.match(rb"SIP/2\.0 (\d{3})", data)
        cid = re.search(rb"^Call-ID:\s*(\S+)", data, re.I | re.M)
        if not m or not cid or b"INVITE" not in (re.search(rb"^CSeq:[^\r\n]*", data, re.I | re.M)
                                                or [b""])[0]:
            return
        fut = self.answered.get(cid.group(1).decode())
        code = int(m.group(1))
        if fut is None or code < 200:
            return
        if 200 <= code < 300:
            tag = re.search(rb"^(?:To|t):[^\r\n]*;\s*tag=([^;>\s]+)", data, re.I | re.M)
            if not fut.done():
                fut.set_result(tag.group(1).decode() if tag else "")
        elif not fut.done():
            fut.set_result("")  # refused or failed: nothing to hang up


async def one_call(sip: _Sip, gw: GatewayProc, app: AppServer, local_port: int, case: int,
                   seed: int, report: Report) -> None:
    assert sip.transport is not None
    cid = f"httpfuzz-{seed}-{case}"
    d = msgs.Dialog("127.0.0.1", gw.sip_port, local_port, call_id=cid, from_tag=f"f{case}",
                    user=str(3000 + case), rtp_port=43000 + 2 * (case % 500))
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    sip.answered[cid] = fut
    sip.transport.sendto(msgs.invite(d, f"i{case}").encode(), (d.host, d.port))
    report.calls += 1
    try:
        tag = await asyncio.wait_for(fut, 20)
    except TimeoutError:
        report.finding(f"call case {case} (seed {seed}): no final answer to the INVITE in 20 s")
        return
    if tag:
        dlg = msgs.Dialog(**{**d.__dict__, "to_tag": tag})
        sip.transport.sendto(msgs.ack(dlg, f"a{case}").encode(), (d.host, d.port))
        await asyncio.sleep(1.5)  # let the fuzzed actions run a little
        sip.transport.sendto(msgs.bye(msgs.Dialog(**{**dlg.__dict__, "cseq": 2}),
                                      f"b{case}").encode(), (d.host, d.port))


async def answer_campaign(gw: GatewayProc, app: AppServer, cases: range, seed: int,
                          report: Report, concurrency: int = 6) -> None:
    """Each case a real SIP call whose answer_url (and action_url/redirect) responses and
    prompt media are fuzzed; every call must end with its call.completed webhook."""
    docs: dict[str, int] = {}  # the user dialed -> case

    def fuzzed(case: int, where: str) -> tuple[int, bytes]:
        rng = random.Random(f"{seed}:answer:{case}:{where}")
        app.media["bad"] = media_response(rng)
        if where == "answer" and rng.random() < 0.25:  # a valid document, the media fuzzed
            url = f"{app.url}/media/bad?v={case}"
            prompt = rng.choice(({"play": {"url": url}},
                                 {"conference": {"room": "w", "wait_url": url,
                                                 "end_on_exit": True}}))
            return 200, mutate.encode({"actions": [prompt, {"hangup": {}}]})
        doc = corpus.actions_document(rng, app.url, live=True)
        # about half of the documents valid, so their actions run (and fetch the fuzzed media)
        raw, _ = mutate.document(doc, rng, NAMES, tree_rate=0.5, text_rate=0.15)
        return rng.choice((200,) * 12 + (201, 204, 302, 404, 500)), raw

    def answer(payload: dict[str, Any]) -> tuple[int, bytes]:
        to = str(payload.get("call", {}).get("to", ""))
        return fuzzed(docs.get(to, -1), "answer")

    def hook(name: str) -> Any:
        def handler(payload: dict[str, Any]) -> tuple[int, bytes]:
            to = str(payload.get("call", {}).get("to", ""))
            return fuzzed(docs.get(to, -1), name)
        return handler

    app.answer = answer
    app.hooks.update({"g": hook("g"), "r": hook("r")})
    app.media.setdefault("tone", (wav_bytes(0.3), {"Content-Type": "audio/wav"}))
    loop = asyncio.get_running_loop()
    transport, sip = await loop.create_datagram_endpoint(_Sip, local_addr=("127.0.0.1", 0))
    local_port = transport.get_extra_info("sockname")[1]
    before = {w["call"]["id"] for w in app.webhooks() if w["event"] == "call.completed"}
    sem = asyncio.Semaphore(concurrency)

    async def run(case: int) -> None:
        docs[str(3000 + case)] = case
        async with sem:
            await one_call(sip, gw, app, local_port, case, seed, report)

    try:
        await asyncio.gather(*(run(c) for c in cases))

        def done() -> bool:
            ended = {w["call"]["id"] for w in app.webhooks() if w["event"] == "call.completed"
                     and w["call"].get("direction") != "outbound"}
            report.completed = len(ended - before)
            return report.completed >= report.calls

        with contextlib.suppress(TimeoutError):
            await app.wait_for(done, 30)
        if report.completed < report.calls:
            report.finding(f"{report.calls - report.completed} of {report.calls} calls never "
                           f"sent call.completed (seed {seed})")
    finally:
        transport.close()


async def campaign(gw: GatewayProc, app: AppServer, rest: range, calls: range,
                   seed: int) -> Report:
    """Both campaigns at once (the REST cases then meet live rooms and calls)."""
    report = Report()
    known = Known()
    started = time.monotonic()
    await asyncio.gather(rest_campaign(gw, app, rest, seed, report, known),
                         answer_campaign(gw, app, calls, seed, report))
    report.seconds = time.monotonic() - started
    for r in app.requests:
        where = "/".join(r.path.split("/")[:3])
        report.app_requests[where] = report.app_requests.get(where, 0) + 1
    status, _ = await gw.get("/healthz")
    if status != 200:
        report.finding(f"/healthz answered {status} after the campaign (seed {seed})")
    if gw.proc.poll() is not None:
        report.finding(f"the gateway exited with {gw.proc.returncode}")
    return report
