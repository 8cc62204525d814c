"""The CI slice of the project's SIP fuzzer (tests/fuzz/): a few thousand mutated requests at
the gateway over UDP and TCP, and through the edge from a trusted source; afterwards both are
alive, /healthz is 200, and a normal call bridges audio. `make fuzz` runs 100,000+ cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.checks import two_callers_hear_each_other
from tests.edge_stack import start_stack
from tests.fuzz.campaign import fuzz_gateway
from tests.harness import AppServer, GatewayProc, Phonebank, app_config

pytestmark = pytest.mark.sip

SEED = 20261124


async def test_fuzz_slice_at_the_gateway(gateway: GatewayProc, app: AppServer,
                                         phones: Phonebank, tmp_path: Path) -> None:
    report = await fuzz_gateway(gateway, app, range(3000), SEED)
    print(report.summary())
    assert not report.findings, report.findings
    assert report.sent == 3000 and report.sent_tcp > 300
    assert report.dialogs >= 4, "no carrier call for in-dialog cases"
    assert sum(report.responses.values()) > 500, "the gateway answered almost nothing"
    status, _ = await gateway.get("/healthz")
    assert status == 200
    await two_callers_hear_each_other(gateway.uri("1001"), app, phones, tmp_path)
    assert gateway.proc.poll() is None


async def test_fuzz_slice_through_the_edge(tmp_path: Path, app: AppServer,
                                           phones: Phonebank) -> None:
    """From a trusted trunk address, so the edge relays what it accepts to the gateway."""
    stack = await start_stack(tmp_path, [app_config(app)], trusted=["127.0.0.0/8"])
    try:
        report = await fuzz_gateway(stack.gw, app, range(1500), SEED + 1,
                                    target=("127.0.0.1", stack.edge_port),
                                    source_host="127.0.0.5", dialogs=0)
        print(report.summary())
        assert not report.findings, report.findings
        assert sum(report.responses.values()) > 200
        assert stack.gw.proc.poll() is None, "the gateway stops when Kamailio dies"
        assert "edge.stopped" not in stack.gw.log()
        status, _ = await stack.gw.get("/healthz")
        assert status == 200
        await two_callers_hear_each_other(stack.uri("1001"), app, phones, tmp_path)
    finally:
        assert stack.gw.stop() == 0
