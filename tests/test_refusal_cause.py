"""A refused INVITE says why, on the wire and in the gateway's log.

Several causes share SIP 500 (docs/api.md, "SIP responses a caller can get"): the gateway
names its cause in a Warning header (`399 minivoice "<hangup_cause>"`), and the
`call.completed` log line carries `sip_code` and `hangup_cause`. The bench's probe leg
(bench/probe.py) and its SIPp error-log reading (bench.sipp.refusals) report both, so a
refusal in a benchmark run can be told apart afterwards (the cluster bench's probe once saw
500s nobody could explain).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench import sipp
from bench.probe import Leg, ProbeUA, Refused, refusal, silence
from sip.calls import warning_value
from tests.harness import AppServer, GatewayProc, app_config
from tests.waiting import eventually


async def refused(gw: GatewayProc, number: str = "1001") -> Refused:
    ua = ProbeUA(("127.0.0.1", gw.sip_port))
    await ua.start()
    try:
        with pytest.raises(Refused) as info:
            await ua.call(Leg("probe", number, silence), timeout_s=30)
        return info.value
    finally:
        await ua.close()


@pytest.mark.sip
async def test_answer_url_timeout_is_a_500_that_names_its_cause(
    app: AppServer, gateway_factory: Any
) -> None:
    """The contract's answer (docs/api.md "When it fails"): SIP 500, now with the cause."""
    gw = await gateway_factory([app_config(app)], hooks={"total_timeout_s": 1.0})

    async def slow(payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(3)
        return {"actions": [{"conference": {"room": "late"}}]}

    app.answer = slow
    exc = await refused(gw)
    assert (exc.code, exc.reason) == (500, "Answer URL Error")
    assert exc.warning == '399 minivoice "answer_url_error"'
    assert "answer_url_error" in str(exc) and "Answer URL Error" in str(exc)
    await eventually(lambda: "sip_code=500 hangup_cause=answer_url_error" in gw.log(),
                     timeout=10)
    assert "answer_url_error call_id=" in gw.log()  # the failure's own line, with its message


@pytest.mark.sip
async def test_invalid_document_and_hangup_action_name_theirs(
    app: AppServer, gateway: GatewayProc
) -> None:
    app.answer = lambda p: (200, b"{not json")
    exc = await refused(gateway)
    assert (exc.code, exc.warning) == (500, '399 minivoice "answer_url_error"')
    app.answer = lambda p: {"actions": [{"hangup": {"reason": "closed"}}]}
    exc = await refused(gateway)
    assert (exc.code, exc.reason) == (603, "closed")
    assert exc.warning == '399 minivoice "hangup_action"'
    await eventually(lambda: "sip_code=603 hangup_cause=hangup_action" in gateway.log(),
                     timeout=10)


@pytest.mark.parametrize("cause", [
    "", "Answer URL Error", 'x"y', "a\r\nVia: evil", "a" * 65, "ü", "a b", "A"])
def test_warning_carries_plain_cause_names_only(cause: str) -> None:
    assert warning_value(cause) == ""


def test_warning_value() -> None:
    assert warning_value("internal_error") == '399 minivoice "internal_error"'
    assert warning_value("a" * 64) == f'399 minivoice "{"a" * 64}"'


def test_probe_refusal_parses_hostile_responses() -> None:
    resp = ("SIP/2.0 500 Answer URL Error\r\nVia: SIP/2.0/UDP x\r\nCall-ID: abc@bench\r\n"
            'Warning: 399 minivoice "answer_url_error"\r\nContent-Length: 0\r\n\r\n')
    exc = refusal("p", resp)
    assert (exc.code, exc.reason, exc.warning) == (500, "Answer URL Error",
                                                   '399 minivoice "answer_url_error"')
    assert str(exc) == ('p: INVITE answered 500 Answer URL Error (Warning: 399 minivoice '
                        '"answer_url_error") [Call-ID abc@bench]')
    bare = refusal("p", "SIP/2.0 500\r\n\r\n")  # no reason phrase, no headers
    assert (bare.code, bare.reason, bare.warning) == (500, "", "")
    assert str(bare) == "p: INVITE answered 500"
    huge = refusal("p", "SIP/2.0 486 " + "\x00\x1b" + "B" * 100_000 + "\r\nWarning: "
                   + "w" * 100_000 + "\r\n\r\n")
    assert huge.reason == "B" * 200 and huge.warning == "w" * 200


def test_sipp_refusals_counts_by_status_and_warning() -> None:
    text = (
        "Aborting call on unexpected message for Call-Id '1-1@x': while expecting '200' "
        "(index 2), received 'SIP/2.0 500 Answer URL Error\r\nVia: v\r\n"
        "Warning: 399 minivoice \"answer_url_error\"\r\nContent-Length: 0\r\n\r\n'.\n"
        "Aborting call on unexpected message for Call-Id '2-1@x': while expecting '200' "
        "(index 2), received 'SIP/2.0 500 Internal Server Error\r\nVia: v\r\n\r\n'.\n"
        "... received 'SIP/2.0 500 Answer URL Error\r\n"
        "Warning: 399 minivoice \"answer_url_error\"\r\n\r\n'.\n"
        "... received 'SIP/2.0 180 Ringing\r\n\r\n'.\n")  # not a refusal
    assert sipp.refusals(text) == {
        '500 Answer URL Error [399 minivoice "answer_url_error"]': 2,
        "500 Internal Server Error": 1}
    flood = "".join(f"received 'SIP/2.0 4{i % 100:02d} R{i}\r\n\r\n'\n" for i in range(5000))
    assert len(sipp.refusals(flood)) == sipp.MAX_REFUSAL_KINDS
    assert sipp.refusals("") == {}
