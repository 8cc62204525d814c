"""The CI slice of the HTTP fuzzer (tests/fuzz_http/): 20,000 mutated inputs at the pure
parsers, then 1,500 mutated REST requests and 50 real SIP calls whose answer_url documents,
action_url/redirect documents and prompt media are mutated, against one live gateway (with
API tokens, the console and the demo application on). Afterwards /healthz is 200, a normal
call bridges audio and the gateway's log holds no Traceback. `make fuzz-http` runs it at
length."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.checks import two_callers_hear_each_other
from tests.fuzz_http import pure
from tests.fuzz_http.live import ADMIN, campaign, gateway_sections
from tests.harness import AppServer, Phonebank, app_config, start_gateway

SEED = 20261124


def test_fuzz_http_pure_parsers() -> None:
    report = pure.run(range(20_000), SEED)
    print(report.summary())
    assert not report.findings, "\n".join(report.findings.values())
    assert report.refused > 10_000, "almost every case passed: the mutations do nothing"
    assert len(report.by_target) == len(pure.TARGETS)


@pytest.mark.sip
async def test_fuzz_http_slice_at_a_live_gateway(app: AppServer, phones: Phonebank,
                                                 tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, [app_config(app)], **gateway_sections())
    try:
        report = await campaign(gw, app, range(1500), range(50), SEED)
        print(report.summary())
        assert not report.findings, "\n".join(report.findings)
        assert report.requests >= 1400
        assert report.statuses.get(200, 0) > 100 and report.statuses.get(400, 0) > 100
        assert report.calls == 50 and report.completed == 50
        assert any(r.path == "/hook/g" or r.path == "/hook/r" for r in app.requests), \
            "no fuzzed document ran far enough to fetch an action_url"
        gw.token = ADMIN
        status, _ = await gw.get("/healthz")
        assert status == 200
        await two_callers_hear_each_other(gw.uri("1001"), app, phones, tmp_path)
        assert "Traceback" not in gw.log()
    finally:
        assert gw.stop() == 0
