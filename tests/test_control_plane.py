"""The control plane without pjsua2 (tests/fakes.py): the interpreter, gather's digit loop,
how a call's end is classified, and the webhooks a session queues. Milliseconds each."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.actions.conference import Conference
from gateway.actions.gather import Gather
from gateway.actions.hangup import Hangup
from gateway.actions.pause import Pause
from gateway.actions.say import Say
from gateway.call.outbound import dial
from gateway.call.record import CallRecord
from gateway.call.session import CallSession
from gateway.interpreter import run_actions
from sip import commands as cmd
from sip import events as ev
from tests.fakes import APP, FakeCall, Fakes

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
def session() -> tuple[CallSession, Fakes]:
    gw = Fakes()
    return gw.session(), gw


def completed(gw: Fakes) -> dict[str, Any]:
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
        s.handle(ev.CallAnswered(s.call_id))
    if preset:
        s.rec.hangup_cause, s.rec.hangup_by = preset
    gw.calls.finish(s, 200 if answered else 487, "", by_gateway, cause)
    data = completed(gw)
    assert (data["call"]["status"], data["data"]["hangup_by"], data["data"]["hangup_cause"]) \
        == (status, hangup_by, hangup_cause)
    assert gw.outbox.names(s.call_id)[-1] == "call.completed"


def test_an_error_makes_the_call_failed_and_is_reported() -> None:
    s, gw = session()
    s.rec.error = {"code": "answer_url_error", "message": "invalid action payload"}
    s.rec.hangup_cause, s.rec.hangup_by = "answer_url_error", "gateway"
    gw.calls.finish(s, 500, "", True, "normal")
    data = completed(gw)
    assert data["call"]["status"] == "failed"
    assert data["data"]["error"]["code"] == "answer_url_error"


def test_webhooks_of_a_call_in_order() -> None:
    s, gw = session()
    s.webhook("call.initiated", s.rec.sip)
    s.handle(ev.CallAnswered(s.call_id))
    gw.calls.finish(s, 200, "", False, "normal")
    assert gw.outbox.names(s.call_id) == ["call.initiated", "call.answered", "call.completed"]
    first = gw.outbox.events[0][2]
    assert first["call"]["from"] == "+1555" and first["call"]["to"] == "1001"
    assert first["data"]["sip_call_id"] == "sip-1"


def test_digits_queue_is_bounded() -> None:
    s, gw = session()
    for _ in range(10_000):
        s.handle(ev.DtmfDigit(s.call_id, "1", "rfc4733"))
    assert s.digits.qsize() <= gw.limits.max_dtmf_queue




async def test_an_action_waits_for_an_engine_event_of_its_call() -> None:
    """The path a new engine capability takes (command out, event back) without a change
    to the session: next_event resolves on the call's own event of that type only."""
    s, gw = session()
    waiting = asyncio.create_task(s.next_event(ev.PlayDone, timeout=5))
    await asyncio.sleep(0)
    s.handle(ev.DtmfDigit(s.call_id, "1", "rfc4733"))  # another type: not it
    assert not waiting.done()
    await s.command(ev_command := cmd.StopPlay(s.call_id, 7))
    assert gw.engine.sent[-1] is ev_command
    s.handle(ev.PlayDone(s.call_id, 7))
    assert await waiting == ev.PlayDone(s.call_id, 7)
    assert await s.next_event(ev.PlayDone, timeout=0.01) is None  # nothing pending: times out
    assert not s._waiters, "a timed-out wait leaves nothing behind"


# -- outbound legs: the same record, the same finish path ---------------------------------
def leg_record(**kw: Any) -> CallRecord:
    return CallRecord(call_id="call_leg", customer_id="cust", application_id="app1",
                      direction="outbound", from_user="+1555", to="bob",
                      sip={"to_uri": "sip:bob@h"}, created_at=0.0, **kw)


@pytest.mark.parametrize("answered,sip_code,by_gateway,status,outcome,hangup_by,cause", [
    (False, 486, False, "busy", "busy", "callee", "busy"),
    (False, 480, False, "no-answer", "no-answer", "callee", "no-answer"),
    (False, 503, False, "failed", "failed", "callee", "failed"),
    (True, 200, False, "completed", "answered", "callee", "normal_clearing"),
    (True, 200, True, "completed", "answered", "gateway", "parent_hangup"),
])
def test_outbound_leg_end_classification(answered: bool, sip_code: int, by_gateway: bool,
                                         status: str, outcome: str, hangup_by: str,
                                         cause: str) -> None:
    rec = leg_record(parent_call_id="call_parent")
    if answered:
        rec.answered(1.0)
    rec.ended(2.0, sip_code=sip_code, by_gateway=by_gateway, cause="normal")
    assert (rec.status, rec.outcome, rec.hangup_by, rec.hangup_cause) == (
        status, outcome, hangup_by, cause)
    data = rec.completed_data()
    assert data["outcome"] == outcome and data["parent_call_id"] == "call_parent"


async def test_a_leg_the_engine_refuses_ends_through_the_ledger() -> None:
    gw = Fakes()
    gw.engine.fail.add(cmd.Dial)
    leg = await dial(gw.services, APP, "sip:bob@192.0.2.1", "+1555", None)
    assert leg.rec.status == "failed" and leg.rec.outcome == "failed"
    assert gw.calls.finished == [leg] and not gw.calls.live
    assert gw.outbox.names(leg.call_id) == ["call.initiated", "call.completed"]
    assert leg.ended.is_set()


async def test_a_placed_call_runs_its_actions_once_answered_whatever_comes_first() -> None:
    """The SIP thread can report a leg's media before its 200 OK's state change: the leg is
    not "answered" (and nothing runs) until both have come, in either order."""
    for first, second in (("media", "answered"), ("answered", "media")):
        gw = Fakes()
        leg = await dial(gw.services, APP, "sip:bob@192.0.2.1", "+1555", None)
        flow = asyncio.create_task(leg.answered_or_ended())
        events: dict[str, ev.MediaReady | ev.CallAnswered] = {
            "media": ev.MediaReady(leg.call_id, "PCMU"), "answered": ev.CallAnswered(leg.call_id)}
        leg.handle(events[first])
        await asyncio.sleep(0.01)
        assert not flow.done(), f"{first} alone counted as answered"
        leg.handle(events[second])
        await asyncio.wait_for(flow, 1)
        assert leg.rec.status == "in-progress"
