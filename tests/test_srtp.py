"""SRTP (SDES): a phone that insists on SRTP talks to the room in the clear of nobody; with
`sip.srtp: off` the same phone is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.checks import two_callers_hear_each_other
from tests.harness import AppServer, Phonebank, app_config

pytestmark = pytest.mark.sip


async def test_srtp_only_phones_hear_each_other(app: AppServer, gateway_factory: Any,
                                                tmp_path: Path) -> None:
    gw = await gateway_factory([app_config(app)])  # sip.srtp defaults to optional
    phones = await Phonebank.start(tmp_path, "--srtp", "mandatory")
    try:
        await two_callers_hear_each_other(gw.uri("1001"), app, phones, tmp_path, room="srtp")
    finally:
        await phones.close()


async def test_srtp_off_refuses_an_srtp_only_phone(app: AppServer, gateway_factory: Any,
                                                   tmp_path: Path) -> None:
    gw = await gateway_factory([app_config(app)], sip={"srtp": "off"})
    phones = await Phonebank.start(tmp_path, "--srtp", "mandatory")
    try:
        phones.call("s", gw.uri("1001"))
        ended = await phones.wait("ended", "s", timeout=15)
        assert phones.find("media", "s") is None
        assert ended["code"] >= 400, ended
    finally:
        await phones.close()
