"""The REST API over real HTTP against a gateway with live SIP calls, and graceful stop."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway import api, console, keys
from gateway.config import ApiConfig, ApiToken, Config
from tests.audio import levels
from tests.harness import AppServer, GatewayProc, Phonebank, app_config

pytestmark = pytest.mark.sip

ADMIN = "admin-token-0123456789"
CUST_A = "cust-a-token-0123456789"
HEARD_DB, SILENT_DB = -25.0, -45.0


@pytest.fixture
async def secured(app: AppServer, gateway_factory: Any) -> GatewayProc:
    gw: GatewayProc = await gateway_factory(
        [app_config(app, id="app_a", customer_id="cust_a", numbers=["1001"]),
         app_config(app, id="app_b", customer_id="cust_b", numbers=["2001"])],
        api={"tokens": [{"token": ADMIN}, {"token": CUST_A, "customer_id": "cust_a"}]})
    gw.token = ADMIN
    return gw


def test_openapi_document_matches_the_routes() -> None:
    """Every route served under /v1 (the console's stream included) and /metrics is in the
    document, and nothing else is."""
    app = web.Application()
    app[keys.CONFIG] = Config(applications=(), api=ApiConfig(tokens=(ApiToken("x" * 20),)))
    api.setup(app)
    console.setup(app, api.scope)  # as the app does with http.console: true
    served = {(r.method, r.resource.canonical) for r in app.router.routes()  # type: ignore[union-attr]
              if r.resource is not None and r.method != "HEAD"
              and (r.resource.canonical.startswith("/v1/") or r.resource.canonical == "/metrics")}
    served.discard(("GET", "/v1/openapi.json"))
    doc = api.openapi_document()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["summary"] and op["operationId"] and op["security"] == [{"bearer": []}]
    ok = {p: doc["paths"][p]["get"]["responses"]["200"]["content"]
          for p in ("/metrics", "/v1/console/stream")}
    assert set(ok["/metrics"]) == {"text/plain; version=0.0.4; charset=utf-8"}
    assert set(ok["/v1/console/stream"]) == {"text/event-stream"}
    assert "403" in doc["paths"]["/metrics"]["get"]["responses"]
    assert "429" in doc["paths"]["/v1/console/stream"]["get"]["responses"]
    assert len({op["operationId"] for ops in doc["paths"].values() for op in ops.values()}) \
        == len(documented)


async def test_auth_and_customer_scope(
    secured: GatewayProc, app: AppServer, phones: Phonebank
) -> None:
    status, body = await secured.request("GET", "/v1/openapi.json", token=None)
    assert status == 200 and body == api.openapi_document()
    for token in (None, "nope"):
        status, body = await secured.request("GET", "/v1/calls", token=token)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    app.answer = lambda p: {"actions": [{"conference": {"room": "support"}}]}
    phones.call("a", secured.uri("1001"))
    phones.call("b", secured.uri("2001"))
    await phones.wait("media", "a")
    await phones.wait("media", "b")
    await asyncio.sleep(0.3)
    _, everything = await secured.get("/v1/calls")
    assert {c["customer_id"] for c in everything["calls"]} == {"cust_a", "cust_b"}
    _, mine = await secured.request("GET", "/v1/calls", token=CUST_A)
    assert [c["customer_id"] for c in mine["calls"]] == ["cust_a"]
    other = next(c["id"] for c in everything["calls"] if c["customer_id"] == "cust_b")
    status, _ = await secured.request("GET", f"/v1/calls/{other}", token=CUST_A)
    assert status == 404
    status, _ = await secured.request("DELETE", f"/v1/calls/{other}", token=CUST_A)
    assert status == 404
    # both customers have a "support" room: the admin must say which
    status, body = await secured.get("/v1/conferences/support")
    assert status == 409 and body["error"]["code"] == "ambiguous"
    status, room = await secured.get("/v1/conferences/support?customer_id=cust_b")
    assert status == 200 and room["customer_id"] == "cust_b"
    status, room = await secured.request("GET", "/v1/conferences/support", token=CUST_A)
    assert status == 200 and room["customer_id"] == "cust_a"
    status, body = await secured.get("/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "http_error"
    for cid in "ab":
        phones.hangup(cid)


async def test_mute_remove_end_and_hangup_through_the_api(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    app.answer = lambda p: {"actions": {
        "+15550000001": [{"conference": {"room": "r"}}],
        "+15550000002": [{"conference": {"room": "r"}},
                         {"say": {"text": "You were removed from the room."}},
                         {"hangup": {"reason": "removed"}}],
        "+15550000003": [{"conference": {"room": "r"}}, {"conference": {"room": "after"}}],
    }[p["call"]["from"]]}
    recs = {c: tmp_path / f"{c}.wav" for c in "abc"}
    for n, (cid, hz) in enumerate((("a", 440), ("b", 700), ("c", 1100)), 1):
        phones.call(cid, gateway.uri(), tone_hz=hz, record=str(recs[cid]),
                    **{"from": f"+1555000000{n}"})
        await phones.wait("media", cid)
    await asyncio.sleep(1.0)
    status, room = await gateway.get("/v1/conferences/r")
    assert status == 200 and len(room["participants"]) == 3
    by_from = {p["from"]: p for p in room["participants"]}
    assert all(p["talking"] and not p["muted"] for p in by_from.values()), room
    a_id = by_from["+15550000001"]["call_id"]
    b_id = by_from["+15550000002"]["call_id"]
    c_id = by_from["+15550000003"]["call_id"]

    # mute a: b and c stop hearing 440 Hz
    mute_at = asyncio.get_running_loop().time()
    status, part = await gateway.request("PATCH", f"/v1/conferences/r/participants/{a_id}",
                                         {"muted": True})
    assert status == 200 and part["muted"] is True
    for bad in ({"muted": "yes"}, {"mute": True}, [1]):
        status, body = await gateway.request(
            "PATCH", f"/v1/conferences/r/participants/{a_id}", bad)
        assert status == 400 and body["error"]["code"] == "invalid_body"
    await asyncio.sleep(1.5)

    # remove b: its next actions run (say, then hang up with a reason)
    status, _ = await gateway.request("DELETE", f"/v1/conferences/r/participants/{b_id}")
    assert status == 204
    await phones.wait("ended", "b", timeout=15)
    done_b = (await app.completed(b_id))[0]
    assert done_b["data"]["hangup_reason"] == "removed"

    # end the room: c moves on to its next action ("after"), a has none and is hung up
    status, _ = await gateway.request("DELETE", "/v1/conferences/r")
    assert status == 204
    await phones.wait("ended", "a")
    await asyncio.sleep(0.5)
    _, rooms = await gateway.get("/v1/conferences")
    assert [r["room"] for r in rooms["conferences"]] == ["after"]

    # hang up c through the API
    status, body = await gateway.request("DELETE", f"/v1/calls/{c_id}")
    assert status == 202
    await phones.wait("ended", "c")
    done_c = (await app.completed(c_id))[0]
    assert done_c["data"]["hangup_by"] == "api"

    # audio: before the mute c heard a; after it, not (a still heard c)
    muted_from = mute_at - _start_of(phones, "c") + 0.3
    c_before = levels(recs["c"], 440, start_s=0.3, end_s=muted_from - 0.4)
    c_after = levels(recs["c"], 440, start_s=muted_from, end_s=muted_from + 1.0)
    a_after = levels(recs["a"], 1100, start_s=muted_from, end_s=muted_from + 1.0)
    assert c_before[440] > HEARD_DB, c_before
    assert c_after[440] < SILENT_DB, c_after
    assert a_after[1100] > HEARD_DB, a_after

    # records outlive the calls (SQLite)
    status, rec = await gateway.get(f"/v1/calls/{a_id}")
    assert status == 200 and rec["status"] == "completed" and rec["timeline"]
    status, _ = await gateway.get("/v1/calls/call_doesnotexist00000000")
    assert status == 404


def _start_of(phones: Phonebank, cid: str) -> float:
    """Loop time at which the phone's recording started (its media event)."""
    return float(phones.find("media", cid)["at"])  # type: ignore[index]


async def test_sigterm_drains_then_hangs_up(
    app: AppServer, gateway_factory: Any, phones: Phonebank
) -> None:
    gw: GatewayProc = await gateway_factory([app_config(app)], shutdown={"drain_s": 3})
    phones.call("old", gw.uri())
    await phones.wait("media", "old")
    gw.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    status, health = await gw.get("/healthz")
    assert status == 200 and health["accepting_calls"] is False
    phones.call("new", gw.uri())
    refused = await phones.wait("ended", "new")
    assert refused["code"] == 503
    assert phones.find("ended", "old") is None, "drain must let the call go on"
    ended = await phones.wait("ended", "old", timeout=10)
    assert ended
    (done,) = await app.completed()
    assert done["data"]["hangup_cause"] == "shutdown" and done["data"]["duration_s"] >= 3
    assert await asyncio.get_running_loop().run_in_executor(None, gw.proc.wait, 10) == 0
