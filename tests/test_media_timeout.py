"""docs/api.md section 5 (hangup causes): a call whose RTP stops is hung up
(`hangup_cause: media_timeout`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bench import sipp
from tests.harness import AppServer, app_config, rtp_block

pytestmark = pytest.mark.sip

SCENARIO = Path(__file__).resolve().parent / "scenarios" / "uac_silent.xml"


async def test_silent_caller_is_hung_up(
    app: AppServer, gateway_factory: Any, tmp_path: Path
) -> None:
    gw = await gateway_factory([app_config(app)], sip={"media_timeout_s": 2})
    started = time.monotonic()
    result = await sipp.run(tmp_path, f"127.0.0.1:{gw.sip_port}", SCENARIO, service="1001",
                            calls=1, rate=1, hold_ms=0, media_port=rtp_block(), timeout_s=40)
    elapsed = time.monotonic() - started
    assert result.successful == 1, result.errors  # the gateway sent the BYE
    assert 2.0 <= elapsed < 10, elapsed
    (done,) = await app.completed()
    assert done["data"]["hangup_cause"] == "media_timeout"
    assert done["data"]["hangup_by"] == "gateway"
    assert done["call"]["status"] == "completed"
