"""The control plane without pjsua2 (tests/fakes.py): the interpreter, gather's digit loop,
how a call's end is classified, and the webhooks a session queues. Milliseconds each."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from gateway.actions.conference import Conference
from gateway.actions.gather import Gather
from gateway.actions.hangup import Hangup
from gateway.actions.pause import Pause
from gateway.actions.say import Say
from gateway.interpreter import run_actions
from gateway.session import CallSession
from sip import events as ev
from tests.fakes import APP, FakeCall, FakeGateway, incoming

HOOK = "http://app.test/hook"


# -- the interpreter ----------------------------------------------------------------------
async def test_actions_run_in_order_and_hangup_stops_the_list() -> None:
    call = FakeCall()
    await run_actions([Conference(room="r1"), Hangup(reason="done"), Conference(room="r2")],
                      call)
    assert call.rooms == ["r1"] and call.hung_up == "done"
    assert call.events() == ["action.start", "action.end", "action.start", "action.end"]


async def test_gather_replaces_the_rest_of_the_list() -> None:
    call = FakeCall(documents=[(Conference(room="sales"),)])
    call.press("1", after_s=0.02)
    await run_actions([Gather(action_url=HOOK, num_digits=1), Conference(room="never")], call)
    assert call.rooms == ["sales"]
    assert call.posts == [(HOOK, "call.gather", {"digits": "1", "reason": "num_digits"})]


async def test_cancelling_the_flow_stops_the_running_action() -> None:
    call = FakeCall()
    task = asyncio.create_task(run_actions([Pause(length=30), Conference(room="x")], call))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.rooms == [] and call.events() == ["action.start"]


# -- gather ---------------------------------------------------------------------------------
@pytest.mark.parametrize("keys,spec,expected", [
    ("42#", {}, {"digits": "42", "reason": "finish_on_key"}),
    ("123", {"num_digits": 2}, {"digits": "12", "reason": "num_digits"}),
    ("#", {}, {"digits": "", "reason": "finish_on_key"}),
    ("5*9", {"finish_on_key": "*"}, {"digits": "5", "reason": "finish_on_key"}),
])
async def test_gather_digit_rules(keys: str, spec: dict[str, Any],
                                  expected: dict[str, str]) -> None:
    call = FakeCall()
    call.press(keys, after_s=0.02)
    await Gather(action_url=HOOK, **spec).run(call)
    assert call.posts[-1][2] == expected


async def test_gather_times_out_with_no_input() -> None:
    call = FakeCall()
    await Gather(action_url=HOOK, timeout=1).run(call)
    assert call.posts[-1][2] == {"digits": "", "reason": "timeout"}


async def test_first_digit_stops_the_prompt_and_counts() -> None:
    call = FakeCall(prompt_s=5.0)
    gather = Gather(action_url=HOOK, num_digits=2, say=Say(text="Choose"))
    task = asyncio.create_task(gather.run(call))
    await asyncio.sleep(0.05)
    call.press("7")
    call.press("8")
    await asyncio.wait_for(task, 1.0)  # the 5 s prompt did not have to finish
    assert call.posts[-1][2] == {"digits": "78", "reason": "num_digits"}


async def test_digits_pressed_before_gather_are_dropped() -> None:
    call = FakeCall()
    call.press("9")
    gather = Gather(action_url=HOOK, num_digits=1, timeout=1)
    task = asyncio.create_task(gather.run(call))
    await asyncio.sleep(0.01)
    call.press("3")
    await task
    assert call.posts[-1][2]["digits"] == "3"


# -- end of call: classification and webhooks ----------------------------------------------
def session() -> tuple[CallSession, FakeGateway]:
    gw = FakeGateway()
    return CallSession(cast(Any, gw), incoming(), APP), gw


def completed(gw: FakeGateway) -> dict[str, Any]:
    [payload] = [p for _, _, p in gw.outbox.events if p["event"] == "call.completed"]
    return payload


@pytest.mark.parametrize("answered,by_gateway,cause,preset,status,hangup_by,hangup_cause", [
    (True, False, "normal", None, "completed", "caller", "normal_clearing"),
    (False, False, "normal", None, "canceled", "caller", "originator_cancel"),
    (True, True, "media_timeout", None, "completed", "gateway", "media_timeout"),
    (True, True, "normal", ("hangup_action", "gateway"), "completed", "gateway", "hangup_action"),
    (False, True, "normal", ("hangup_action", "gateway"), "completed", "gateway",
     "hangup_action"),
    (True, True, "normal", ("api", "api"), "completed", "api", "api"),
    (False, True, "normal", ("api", "api"), "canceled", "api", "api"),
    (True, True, "normal", None, "completed", "gateway", "shutdown"),
])
def test_end_classification(answered: bool, by_gateway: bool, cause: str,
                            preset: tuple[str, str] | None, status: str, hangup_by: str,
                            hangup_cause: str) -> None:
    s, gw = session()
    if answered:
        s.on_answered()
    if preset:
        s.hangup_cause, s.hangup_by = preset
    s.on_ended(ev.CallEnded(s.call_id, 200 if answered else 487, "", by_gateway, cause))
    data = completed(gw)
    assert (data["call"]["status"], data["data"]["hangup_by"], data["data"]["hangup_cause"]) \
        == (status, hangup_by, hangup_cause)
    assert gw.outbox.names(s.call_id)[-1] == "call.completed"


def test_an_error_makes_the_call_failed_and_is_reported() -> None:
    s, gw = session()
    s.error = {"code": "answer_url_error", "message": "invalid action payload"}
    s.hangup_cause, s.hangup_by = "answer_url_error", "gateway"
    s.on_ended(ev.CallEnded(s.call_id, 500, "", True, "normal"))
    data = completed(gw)
    assert data["call"]["status"] == "failed"
    assert data["data"]["error"]["code"] == "answer_url_error"


def test_webhooks_of_a_call_in_order() -> None:
    s, gw = session()
    s._webhook("call.initiated", s.sip_data())
    s.on_answered()
    s.on_ended(ev.CallEnded(s.call_id, 200, "", False, "normal"))
    assert gw.outbox.names(s.call_id) == ["call.initiated", "call.answered", "call.completed"]
    first = gw.outbox.events[0][2]
    assert first["call"]["from"] == "+1555" and first["call"]["to"] == "1001"
    assert first["data"]["sip_call_id"] == "sip-1"


def test_digits_queue_is_bounded() -> None:
    s, _ = session()
    for _ in range(10_000):
        s.on_dtmf(ev.DtmfDigit(s.call_id, "1", "rfc4733"))
    assert s.digits.qsize() <= s.gw.cfg.limits.max_dtmf_queue


