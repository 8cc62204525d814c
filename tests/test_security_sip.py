"""Issue 12 end to end: a real gateway process, real SIP callers, a real application."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import AppServer, GatewayProc, Phonebank, app_config
from tests.httpkit import crafted_wav

pytestmark = pytest.mark.sip


async def test_redirect_to_the_gateways_own_api_is_refused(
    app: AppServer, gateway_factory: Any, phones: Phonebank
) -> None:
    # the default policy: no loopback for URLs that come from responses
    gw: GatewayProc = await gateway_factory([app_config(app)], hooks={"allow_private": []})
    app.answer = lambda p: {"actions": [
        {"pause": {"length": 0.2}},
        {"redirect": {"url": f"{gw.http}/v1/calls"}}]}
    phones.call("x", gw.uri())
    await phones.wait("media", "x")
    await phones.wait("ended", "x", timeout=15)
    (done,) = await app.completed()
    error = done["data"]["error"]
    assert error == {"code": "action_url_error",
                     "message": "action_url refused: address not allowed"}, error
    assert done["data"]["hangup_cause"] == "action_url_error"
    assert "action_url.refused" in gw.log()


async def test_a_call_is_hung_up_at_max_call_duration(
    app: AppServer, gateway_factory: Any, phones: Phonebank
) -> None:
    gw: GatewayProc = await gateway_factory([app_config(app)],
                                            limits={"max_call_duration_s": 2})
    phones.call("x", gw.uri())
    await phones.wait("media", "x")
    ended = await phones.wait("ended", "x", timeout=10)
    (done,) = await app.completed()
    assert done["data"]["hangup_cause"] == "max_call_duration", done
    assert done["data"]["hangup_by"] == "gateway"
    assert 1.0 < done["data"]["duration_s"] < 4.0, done
    assert ended is not None


async def test_calls_over_the_customer_limit_get_486_and_no_webhooks(
    app: AppServer, gateway_factory: Any, phones: Phonebank
) -> None:
    gw: GatewayProc = await gateway_factory([app_config(app)],
                                            limits={"max_calls_per_customer": 1})
    phones.call("a", gw.uri())
    await phones.wait("media", "a")
    phones.call("b", gw.uri())
    refused = await phones.wait("ended", "b", timeout=10)
    assert refused["code"] == 486, refused
    assert "call.rejected" in gw.log() and "reason=customer_call_limit" in gw.log()
    assert len(app.answers()) == 1, "the refused call reached answer_url"
    phones.hangup("a")
    await app.completed()
    calls = {w["call"]["id"] for w in app.webhooks()}
    assert len(calls) == 1, "the refused call sent webhooks"


async def test_a_redirect_loop_is_cut_at_the_document_limit(
    app: AppServer, gateway_factory: Any, phones: Phonebank
) -> None:
    gw: GatewayProc = await gateway_factory([app_config(app)],
                                            limits={"max_documents_per_call": 5})
    loop = {"actions": [{"pause": {"length": 0}}, {"redirect": {"url": app.url + "/hook/loop"}}]}
    app.answer = lambda p: loop
    app.hooks["loop"] = lambda p: loop
    phones.call("x", gw.uri())
    await phones.wait("ended", "x", timeout=15)
    (done,) = await app.completed()
    assert done["data"]["error"]["code"] == "action_url_error"
    assert "more than 5 action documents" in done["data"]["error"]["message"]
    assert len(app.answers()) + len(app.posts("/hook/loop")) == 5


async def test_a_media_bomb_fails_the_call_with_a_clear_error(
    app: AppServer, gateway: GatewayProc, phones: Phonebank
) -> None:
    # 2 KB declaring 1 Hz: 32 MB once converted, hundreds of GB at the download cap
    app.media["bomb.wav"] = (crafted_wav(1, bytes(range(256)) * 8), {})
    app.answer = lambda p: {"actions": [{"play": {"url": app.url + "/media/bomb.wav?k=tok"}}]}
    phones.call("x", gateway.uri())
    await phones.wait("ended", "x", timeout=15)
    (done,) = await app.completed()
    error = done["data"]["error"]
    assert error["code"] == "media_error"
    assert error["message"].endswith("/media/bomb.wav?REDACTED: WAV: sample rate 1 Hz "
                                     "(8000 to 192000)"), error
    cache = gateway.db_path.parent / "media-cache"
    assert sum(p.stat().st_size for p in cache.iterdir()) < 1_000_000
