"""docs/api.md section 2 ("When it fails") on real SIP: every way an answer_url can fail,
and what the caller and the application see."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.harness import AppServer, GatewayProc, Phonebank, app_config, free_port

pytestmark = pytest.mark.sip


async def call_rejected(phones: Phonebank, gw: GatewayProc, app: AppServer) -> dict[str, Any]:
    """Place a call, expect SIP 500 before answer; return its call.completed webhook."""
    phones.call("x", gw.uri())
    ended = await phones.wait("ended", "x", timeout=20)
    assert ended["code"] == 500, ended
    assert phones.find("media", "x") is None, "the call was answered"
    (done,) = await app.completed()
    assert done["call"]["status"] == "failed"
    assert done["data"]["error"]["code"] == "answer_url_error"
    assert done["data"]["hangup_by"] == "gateway"
    assert done["data"]["duration_s"] == 0
    return done


BAD_PAYLOADS = [
    # (answer_url body, the path the error must point at)
    (b"{not json", ""),
    # json.loads takes these (or fails outside its documented errors); the gateway must not
    (b'{"actions": [{"pause": {"length": ' + b"9" * 5000 + b'}}]}', ""),
    (b'{"actions": [{"hangup": {}}], "actions": [{"conference": {"room": "a"}}]}', ""),
    (b'{"actions": [{"pause": {"length": NaN}}]}', ""),
    (b'{"actions": [{"conference": {"room": "bad room!"}}]}', "actions[0].conference.room"),
    (b'{"actions": [{"conference": {"room": ""}}]}', "actions[0].conference.room"),
    (b'{"actions": [{"conference": {"room": "' + b"r" * 129 + b'"}}]}',
     "actions[0].conference.room"),
    (b'{"actions": [{"conference": {"room": "ok", "color": "red"}}]}',
     "actions[0].conference.color"),
    (b'{"actions": [{"conference": {"room": "ok", "mute": "yes"}}]}',
     "actions[0].conference.mute"),
    (b'{"actions": [{"type": "conference", "room": "ok", "end_on_exit": 1}]}',
     "actions[0].end_on_exit"),
    (b'{"actions": [{"type": "conference"}]}', "actions[0].room"),
    (b'{"actions": [{"conference": {"room": "a"}, "hangup": {}}]}', "actions[0]"),
    (b'{"actions": [{"teleport": {"to": "mars"}}]}', "actions[0].teleport"),
    (b'{"actions": []}', "actions"),
    (b'{"actions": {"conference": {"room": "a"}}}', "actions"),
    (b"[]", ""),
]


@pytest.mark.parametrize("body,path", BAD_PAYLOADS, ids=[p or "root" for _, p in BAD_PAYLOADS])
async def test_invalid_payload_rejects_call_with_500(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, body: bytes, path: str
) -> None:
    app.answer = lambda p: (200, body)
    done = await call_rejected(phones, gateway, app)
    error = done["data"]["error"]
    assert error["message"] == "invalid action payload"
    assert path in [d["path"] for d in error["details"]], error
    assert len(app.answers()) == 1, "an invalid payload must not be retried"
    # the exact body is logged for the developer
    logged = body.decode()[:40].replace('"', '\\"')
    assert f"body={logged}" in gateway.log() or f'body="{logged}' in gateway.log()


async def test_oversized_payload_is_invalid(
    gateway: GatewayProc, app: AppServer, phones: Phonebank
) -> None:
    big = {"actions": [{"conference": {"room": "r" * 100}}] * 10, "pad": "x" * 70000}
    app.answer = lambda p: (200, json.dumps(big).encode())
    done = await call_rejected(phones, gateway, app)
    assert done["data"]["error"]["message"] == "invalid action payload"


@pytest.mark.parametrize("status,attempts", [(503, 2), (404, 1)])
async def test_http_error_status(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, status: int, attempts: int
) -> None:
    """5xx is retried once, 4xx is not; either way the call fails with the status named."""
    app.answer = lambda p: (status, b"no")
    done = await call_rejected(phones, gateway, app)
    assert done["data"]["error"]["message"] == f"answer_url returned HTTP {status}"
    assert len(app.answers()) == attempts


async def test_answer_url_down(
    app: AppServer, gateway_factory: Any, phones: Phonebank
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/answer"
    gw = await gateway_factory([app_config(app, answer_url=dead)])
    done = await call_rejected(phones, gw, app)
    assert done["data"]["error"]["message"] == "answer_url connection failed"


async def test_answer_url_too_slow(
    app: AppServer, gateway_factory: Any, phones: Phonebank
) -> None:
    gw = await gateway_factory([app_config(app)], hooks={"total_timeout_s": 1.0})

    async def slow(payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(3)
        return {"actions": [{"conference": {"room": "late"}}]}

    app.answer = slow
    done = await call_rejected(phones, gw, app)
    assert done["data"]["error"]["message"] == "answer_url timeout"


async def test_fallback_url_takes_over(
    app: AppServer, gateway_factory: Any, phones: Phonebank
) -> None:
    gw = await gateway_factory([app_config(app, fallback_url=app.url + "/fallback")])
    seen: list[str] = []

    def answer(payload: dict[str, Any]) -> Any:
        seen.append(payload["call"]["id"])
        if len(seen) <= 2:  # primary, and its one retry
            return (500, b"boom")
        return {"actions": [{"conference": {"room": "fallback-room"}}]}

    app.answer = answer
    phones.call("x", gw.uri())
    await phones.wait("media", "x")
    assert [r.path for r in app.answers()] == ["/answer", "/answer"]
    assert [r.path for r in app.requests if r.path == "/fallback"] == ["/fallback"]
    # the caller has media as soon as it is answered; the join follows on the gateway's loop
    names: list[str] = []
    for _ in range(50):
        _status, rooms = await gw.get("/v1/conferences")
        names = [c["room"] for c in rooms["conferences"]]
        if names:
            break
        await asyncio.sleep(0.1)
    assert names == ["fallback-room"]
    phones.hangup("x")
    (done,) = await app.completed()
    assert done["call"]["status"] == "completed" and "error" not in done["data"]


async def test_no_application_gets_404_and_no_webhooks(
    app: AppServer, gateway_factory: Any, phones: Phonebank
) -> None:
    gw = await gateway_factory([app_config(app, numbers=["1001"])])
    phones.call("x", gw.uri("9999"))
    ended = await phones.wait("ended", "x")
    assert ended["code"] == 404
    await asyncio.sleep(0.5)
    assert app.requests == []


async def test_caller_hangs_up_while_answer_url_is_slow(
    gateway: GatewayProc, app: AppServer, phones: Phonebank
) -> None:
    release = asyncio.Event()

    async def slow(payload: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {"actions": [{"conference": {"room": "r"}}]}

    app.answer = slow
    phones.call("x", gateway.uri())
    await app.wait_for(app.answers)
    phones.hangup("x")  # CANCEL before answer
    ended = await phones.wait("ended", "x")
    assert ended["code"] == 487
    release.set()
    (done,) = await app.completed()
    assert done["call"]["status"] == "canceled"
    assert done["data"]["hangup_by"] == "caller"
    await asyncio.sleep(0.5)
    events = [w["event"] for w in app.webhooks()]
    assert events == ["call.initiated", "call.completed"], events
    _, calls = await gateway.get("/v1/calls")
    assert calls["calls"] == []
    _status, rooms = await gateway.get("/v1/conferences")
    assert rooms["conferences"] == []
