"""POST /v1/calls on real SIP and RTP: a registered user is dialled (through the edge's
address), answers, runs the inline actions (a room with a caller in it: both hear each
other, measured), with outbound webhooks; answer_url; busy; no-answer; and the refusals.

The edge here is "separate" (`edge.address`), and what listens at its address is the test
phonebank itself: the gateway resolves the registered user against the edge's users table
and sends the INVITE to the edge's address, which is all the gateway's side of the path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.edge.users import UserStore
from tests.audio import levels
from tests.harness import AppServer, GatewayProc, Phonebank, app_config

pytestmark = pytest.mark.sip

TOKEN = "token-cust-test-0123456789"
OTHER = "token-cust-other-0123456789"
HEARD_DB = -25.0
GatewayFactory = Callable[..., Awaitable[GatewayProc]]


async def gateway_with_edge(gateway_factory: GatewayFactory, app: AppServer, phones: Phonebank,
                            tmp: Path, **sections: Any) -> GatewayProc:
    ready = phones.find("ready", None)
    assert ready is not None
    users = tmp / "users.db"
    UserStore(users, "minivoice").add("bob", "a-long-password")
    gw = await gateway_factory(
        [app_config(app, caller_ids=["+1555*", "support"]),
         app_config(app, id="app_other", customer_id="cust_other", caller_ids=["*"])],
        edge={"enabled": True, "address": "127.0.0.1", "udp_port": ready["port"],
              "tcp_port": 0, "tls_port": 0, "users_db": str(users)},
        api={"tokens": [{"token": TOKEN, "customer_id": "cust_test"},
                        {"token": OTHER, "customer_id": "cust_other"}]},
        **sections)
    gw.token = TOKEN
    return gw


def of_call(app: AppServer, call_id: str) -> list[dict[str, Any]]:
    return app.webhooks(call_id)


async def test_dialled_user_joins_the_room_and_both_hear_each_other(
    app: AppServer, gateway_factory: GatewayFactory, phones: Phonebank, tmp_path: Path
) -> None:
    app.answer = lambda p: {"actions": [{"conference": {"room": "r"}}]}
    gw = await gateway_with_edge(gateway_factory, app, phones, tmp_path)
    phones.call("a", gw.uri(), tone_hz=440, record=str(tmp_path / "a.wav"))
    await phones.wait("media", "a", timeout=15)
    phones.send(op="listen", mode="answer", tone_hz=700, record=str(tmp_path / "in"))
    status, call = await gw.request("POST", "/v1/calls", {
        "to": "bob", "from": "+15550009", "actions": [{"conference": {"room": "r"}}]})
    assert status == 201, call
    assert call["id"].startswith("call_") and call["direction"] == "outbound"
    assert call["status"] == "ringing" and call["from"] == "+15550009" and call["to"] == "bob"
    await phones.wait("media", "in1", timeout=15)
    await asyncio.sleep(3.0)
    _, room = await gw.get("/v1/conferences/r")
    assert {p["call_id"] for p in room["participants"]} >= {call["id"]}
    phones.hangup("in1")
    await phones.wait("ended", "in1")
    await app.completed(call["id"])
    phones.hangup("a")
    await phones.wait("ended", "a")
    heard_by_a = levels(tmp_path / "a.wav", 440, 700)
    heard_by_bob = levels(tmp_path / "in-in1.wav", 440, 700)
    print(f"caller hears {heard_by_a}, dialled user hears {heard_by_bob}")
    assert heard_by_a[700] > HEARD_DB and heard_by_bob[440] > HEARD_DB, (heard_by_a,
                                                                         heard_by_bob)
    hooks = of_call(app, call["id"])
    assert [h["event"] for h in hooks] == ["call.initiated", "call.answered", "call.completed"]
    assert all(h["call"]["direction"] == "outbound" for h in hooks)
    assert hooks[0]["data"]["to_uri"].startswith("sip:bob@127.0.0.1:")
    done = hooks[-1]
    assert done["call"]["status"] == "completed" and done["data"]["outcome"] == "answered"
    assert done["data"]["hangup_by"] == "callee" and done["data"]["duration_s"] > 2
    assert "parent_call_id" not in done["data"]
    # the same with answer_url: call.answer (direction outbound) is POSTed once answered
    app.hooks["out"] = lambda p: {"actions": [{"pause": {"length": 1}},
                                              {"hangup": {"reason": "done"}}]}
    ready = phones.find("ready", None)
    assert ready is not None
    status, call2 = await gw.request("POST", "/v1/calls", {
        "to": f"sip:carol@127.0.0.1:{ready['port']}",
        "from": "support", "answer_url": app.url + "/hook/out", "timeout": 10})
    assert status == 201, call2
    done2 = (await app.completed(call2["id"]))[0]
    [answer] = [r.json for r in app.posts("/hook/out")]
    assert answer["event"] == "call.answer" and answer["call"]["id"] == call2["id"]
    assert answer["call"]["direction"] == "outbound" and answer["call"]["status"] == "in-progress"
    assert done2["call"]["status"] == "completed"
    assert done2["data"]["hangup_cause"] == "hangup_action"
    assert done2["data"]["hangup_reason"] == "done"


async def test_busy_and_no_answer(
    app: AppServer, gateway_factory: GatewayFactory, phones: Phonebank, tmp_path: Path
) -> None:
    gw = await gateway_with_edge(gateway_factory, app, phones, tmp_path)
    body = {"to": "bob", "from": "+15550009", "actions": [{"conference": {"room": "r"}}]}
    phones.send(op="listen", mode="busy")
    status, busy = await gw.request("POST", "/v1/calls", body)
    assert status == 201, busy
    [done] = await app.completed(busy["id"])
    assert done["call"]["status"] == "busy" and done["data"]["outcome"] == "busy"
    assert done["data"]["sip_code"] == 486 and done["data"]["duration_s"] == 0
    assert [h["event"] for h in of_call(app, busy["id"])] == ["call.initiated",
                                                              "call.completed"]
    phones.send(op="listen", mode="ring")
    app.hooks["never"] = lambda p: pytest.fail("answer_url asked for a call never answered")
    status, ring = await gw.request("POST", "/v1/calls", {
        "to": "bob", "from": "+15550009", "answer_url": app.url + "/hook/never", "timeout": 2})
    assert status == 201, ring
    [done] = await app.completed(ring["id"], timeout=15)
    assert done["call"]["status"] == "no-answer" and done["data"]["outcome"] == "no-answer"
    assert done["data"]["hangup_by"] == "gateway"
    _, record = await gw.get(f"/v1/calls/{ring['id']}")
    assert record["status"] == "no-answer" and record["direction"] == "outbound"
    assert app.posts("/hook/never") == []


async def test_refusals(
    app: AppServer, gateway_factory: GatewayFactory, phones: Phonebank, tmp_path: Path
) -> None:
    gw = await gateway_with_edge(gateway_factory, app, phones, tmp_path,
                                 limits={"max_calls_per_customer": 1})
    ok = {"to": "bob", "from": "+15550009", "actions": [{"conference": {"room": "r"}}]}

    async def post(body: Any, token: str = TOKEN) -> tuple[int, Any]:
        return await gw.request("POST", "/v1/calls", body, token=token)

    status, err = await post({**ok, "actions": [{"conference": {"room": "bad room!"}}]})
    assert status == 400 and err["error"]["code"] == "invalid_body"
    assert err["error"]["details"] == [{
        "path": "actions[0].conference.room",
        "reason": "must be 1-128 characters of letters, digits, '.', '-' or '_'"}]
    status, err = await post({**ok, "answer_url": "https://x.example/a"})
    assert status == 400 and {"path": "", "reason": "give exactly one of answer_url and "
                              "actions"} in err["error"]["details"]
    status, err = await post({"to": "no spaces allowed", "from": 5, "timeout": 0, "x": 1,
                              "actions": []})
    assert status == 400
    assert {d["path"] for d in err["error"]["details"]} == {"x", "to", "from", "timeout",
                                                           "actions"}
    status, err = await post([1, 2])
    assert status == 400
    status, err = await post({**ok, "to": "nobody"})
    assert status == 404 and "nobody" in err["error"]["message"]
    status, err = await post({**ok, "from": "+44700"})
    assert status == 403 and err["error"]["code"] == "caller_id_not_allowed"
    status, err = await post({**ok, "application_id": "app_other"})
    assert status == 404  # another customer's application
    status, err = await post(ok, token=None)  # type: ignore[arg-type]
    assert status == 401
    # SIP URIs are dialed only to public addresses or what dialing.allow_private lists
    # (127.0.0.0/8 in the tests): no INVITE goes into the operator's networks
    for target in ("sip:x@10.0.0.1", "sip:x@169.254.169.254:80", "sip:x@[fd00::1]"):
        status, err = await post({**ok, "to": target})
        assert status == 403 and err["error"]["code"] == "target_not_allowed", (target, err)
        assert "dialing.allow_private" in err["error"]["message"]
    status, err = await post({**ok, "to": "sip:x@127.1"})  # short forms resolve to loopback
    assert status == 400 and err["error"]["details"][0]["path"] == "to"
    status, err = await post({**ok, "to": "sip:x@name.invalid"})
    assert status == 422 and err["error"]["code"] == "target_unresolvable"
    # the customer's cap counts live calls: with one caller in, a placed call is refused
    app.answer = lambda p: {"actions": [{"conference": {"room": "r"}}]}
    phones.call("a", gw.uri(), tone_hz=440)
    await phones.wait("media", "a", timeout=15)
    status, err = await post(ok)
    assert status == 429 and err["error"]["code"] == "too_many_calls"
    status, _ = await post(ok, token=OTHER)  # another customer's cap is its own
    assert status == 201
    phones.hangup("a")
    await phones.wait("ended", "a")
    assert "Traceback" not in gw.log()


async def test_through_the_real_edge_to_a_registered_phone(
    app: AppServer, tmp_path: Path
) -> None:
    """Kamailio in front: bob registers at the edge, alice calls into room r through it, and
    POST /v1/calls dials bob (a registered user) through the edge into r."""
    from tests.edge_stack import start_stack

    stack = await start_stack(tmp_path, [app_config(app, caller_ids=["*"])])
    UserStore(stack.users_db, "minivoice").add("bob", "bobs-password-7")
    UserStore(stack.users_db, "minivoice").add("alice", "alices-password-7")
    domain = f"127.0.0.1:{stack.edge_port}"
    bob = await Phonebank.start(tmp_path)
    alice = await Phonebank.start(tmp_path)
    try:
        bob.send(op="listen", mode="answer", tone_hz=700, record=str(tmp_path / "bob"))
        for bank, user, pw in ((bob, "bob", "bobs-password-7"),
                               (alice, "alice", "alices-password-7")):
            bank.send(op="register", user=user, password=pw, domain=domain,
                      registrar=f"sip:{domain}")
            assert (await bank.wait("registered", None, user=user))["code"] == 200
        app.answer = lambda p: {"actions": [{"conference": {"room": "r"}}]}
        rec = tmp_path / "alice.wav"
        alice.call("a", stack.uri("1001"), account="alice", tone_hz=440, record=str(rec))
        await alice.wait("media", "a", timeout=15)
        status, call = await stack.gw.request("POST", "/v1/calls", {
            "to": "bob", "from": "alice", "application_id": "app_test",
            "actions": [{"conference": {"room": "r"}}]}, token=None)
        assert status == 201, call
        await bob.wait("media", "in1", timeout=15)
        await asyncio.sleep(3.0)
        bob.hangup("in1")
        await bob.wait("ended", "in1")
        alice.hangup("a")
        await alice.wait("ended", "a")
        heard_by_alice = levels(rec, 440, 700)
        heard_by_bob = levels(tmp_path / "bob-in1.wav", 440, 700)
        print(f"through the edge: alice hears {heard_by_alice}, bob hears {heard_by_bob}")
        assert heard_by_alice[700] > HEARD_DB and heard_by_bob[440] > HEARD_DB
        done = {w["call"]["direction"]: w for w in await app.completed(count=2)}
        assert done["outbound"]["call"]["id"] == call["id"]
        assert done["outbound"]["data"]["outcome"] == "answered"
    finally:
        await alice.close()
        await bob.close()
        code = stack.gw.stop()
        assert "Traceback" not in stack.gw.log()
        assert code == 0
