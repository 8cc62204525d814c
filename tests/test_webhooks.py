"""What the application receives: answer_url requests and lifecycle webhooks, compared
field by field with the reference example (tests/fixtures/), signed, ordered, and never lost."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from gateway import signing
from tests.harness import SECRET, AppServer, GatewayProc, Phonebank, app_config, verify_signature

pytestmark = pytest.mark.sip

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "fixtures" / "seed-webhook-example.json"

# The reference "Real Webhook Example", verbatim (kept as a fixture file too, see fixtures/README).
SEED_WEBHOOK: dict[str, Any] = {
    "event": "call.completed",
    "created_at": "2026-05-29T12:10:00Z",
    "call": {"id": "call_123", "customer_id": "cust_123", "application_id": "app_123",
             "status": "completed", "direction": "inbound", "from": "+15551230001",
             "to": "+15551230002"},
    "variables": {},
    "data": {},
}
CALL_ID = re.compile(r"call_[A-Za-z0-9_-]{20,}")
ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def seed_example() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(SEED.read_text())
    assert parsed == SEED_WEBHOOK
    return parsed


def same_shape(actual: Any, example: Any, path: str = "") -> None:
    """Every key of the example is present with a value of the same JSON type; no extra keys
    (except in `data`, which the contract extends)."""
    if isinstance(example, dict):
        assert isinstance(actual, dict), path
        if path != ".data":
            assert set(actual) == set(example), f"{path}: {sorted(actual)} != {sorted(example)}"
        for k, v in example.items():
            same_shape(actual[k], v, f"{path}.{k}")
    else:
        assert type(actual) is type(example), f"{path}: {actual!r}"


async def one_call(gw: GatewayProc, phones: Phonebank, app: AppServer, dial: str = "+15551230002",
                   caller: str = "+15551230001", hold_s: float = 0.5) -> str:
    phones.call("x", gw.uri(dial), **{"from": caller})
    await phones.wait("media", "x")
    await asyncio.sleep(hold_s)
    phones.hangup("x")
    await phones.wait("ended", "x")
    (done,) = await app.completed()
    call_id: str = done["call"]["id"]
    return call_id


async def test_lifecycle_webhooks_match_the_seed(
    gateway: GatewayProc, app: AppServer, phones: Phonebank
) -> None:
    example = seed_example()
    call_id = await one_call(gateway, phones, app)
    hooks = [r for r in app.requests if r.path == "/events"]
    assert [h.json["event"] for h in hooks] == ["call.initiated", "call.answered", "call.completed"]
    for h in hooks:
        body = h.json
        same_shape(body, example)
        assert CALL_ID.fullmatch(body["call"]["id"]) and body["call"]["id"] == call_id
        assert ISO_Z.fullmatch(body["created_at"])
        assert body["call"]["customer_id"] == "cust_test"
        assert body["call"]["application_id"] == "app_test"
        assert body["call"]["direction"] == "inbound"
        assert body["call"]["from"] == "+15551230001" and body["call"]["to"] == "+15551230002"
        assert body["variables"] == {}
        assert verify_signature(h), "bad signature"
        assert h.headers["User-Agent"].startswith("MiniVoice/")
        assert h.headers["MiniVoice-Call-Id"] == call_id
    assert len({h.headers["MiniVoice-Event-Id"] for h in hooks}) == 3
    statuses = [h.json["call"]["status"] for h in hooks]
    assert statuses == ["ringing", "in-progress", "completed"]
    data = hooks[-1].json["data"]
    assert data["hangup_by"] == "caller" and data["hangup_cause"] == "normal_clearing"
    assert data["sip_code"] == 200 and 0.4 < data["duration_s"] < 5
    assert "error" not in data


async def test_answer_url_request_shape_and_signature(
    gateway: GatewayProc, app: AppServer, phones: Phonebank
) -> None:
    call_id = await one_call(gateway, phones, app)
    (req,) = app.answers()
    body = req.json
    assert body["event"] == "call.answer"
    same_shape({k: v for k, v in body.items()}, {**SEED_WEBHOOK, "data": {}})
    assert body["call"]["status"] == "ringing" and body["call"]["id"] == call_id
    assert set(body["data"]) == {"sip_call_id", "from_uri", "to_uri"}
    assert body["data"]["from_uri"].startswith(("sip:", "<sip:"))
    assert req.headers["Content-Type"].startswith("application/json")
    assert req.headers["MiniVoice-Call-Id"] == call_id
    assert verify_signature(req)
    # the signature really covers the body and the secret
    assert not signing.verify(SECRET, req.body + b" ", req.headers[signing.HEADER])
    assert not signing.verify("another-secret", req.body, req.headers[signing.HEADER])


async def test_receiver_failing_then_recovering_loses_nothing(
    gateway: GatewayProc, app: AppServer, phones: Phonebank
) -> None:
    app.events_status = 500
    await_call = asyncio.create_task(one_call(gateway, phones, app))
    await app.wait_for(lambda: len(app.webhooks()) >= 3, timeout=15)  # retrying
    app.events_status = 204
    call_id = await await_call
    await asyncio.sleep(4.5)  # backoff 1 s, 2 s, ...: the queue drains
    delivered: dict[str, list[str]] = {}
    order: list[str] = []
    for r in app.requests:
        if r.path == "/events":
            delivered.setdefault(r.headers["MiniVoice-Event-Id"], []).append(r.json["event"])
            if not order or order[-1] != r.json["event"]:
                order.append(r.json["event"])
    assert order == ["call.initiated", "call.answered", "call.completed"], order
    # retries of one event carry the same event ID and the same payload
    assert len(delivered) == 3 and all(len(set(v)) == 1 for v in delivered.values())
    assert any(len(v) > 1 for v in delivered.values()), "nothing was retried"
    _status, health = await gateway.get("/healthz")
    assert health["webhooks_pending"] == 0
    assert call_id


async def test_pending_webhooks_survive_sigkill(
    app: AppServer, gateway_factory: Any, phones: Phonebank, tmp_path: Path
) -> None:
    gw = await gateway_factory([app_config(app)])
    app.events_status = 503  # the receiver is down for now
    phones.call("x", gw.uri())
    await phones.wait("media", "x")
    phones.hangup("x")
    await phones.wait("ended", "x")
    await app.wait_for(lambda: any(w["event"] == "call.completed" for w in app.webhooks())
                       or len(app.webhooks()) >= 2)
    await asyncio.sleep(0.3)
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait()
    gw.proc.returncode = 0  # killed on purpose: don't fail the fixture's exit-code check
    app.events_status = 204
    seen_before = len(app.webhooks())
    gw2 = await gateway_factory([app_config(app)])  # same tmp_path: the same SQLite file
    assert gw2.db_path == gw.db_path
    await app.wait_for(
        lambda: [w for w in app.webhooks()[seen_before:] if w["event"] == "call.completed"],
        timeout=15)
    events = {(w["event"]) for w in app.webhooks()}
    assert events == {"call.initiated", "call.answered", "call.completed"}
