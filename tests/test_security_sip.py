"""Issue 12 end to end: a real gateway process, real SIP callers, a real application."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import AppServer, GatewayProc, Phonebank, app_config

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
