"""Tools the project did not write, against the whole stack on loopback: a real Linphone
(`linphonec`, driven by tests/clients.py) registers with a password and joins a room, and the
sipvicious scanners (svmap, svwar, svcrack) find the edge but no extension and no password.
The other softphones (baresip, pjsua, SIPp as a user) are in tests/test_edge_clients.py."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.edge.users import UserStore
from tests.clients import Linphonec, tool
from tests.edge_stack import SipClient, Stack, start_stack
from tests.harness import AppServer, app_config

pytestmark = pytest.mark.sip

PASSWORD = "linphone-pass-77"


@pytest.fixture
async def stack(tmp_path: Path, app: AppServer) -> AsyncIterator[Stack]:
    app.answer = lambda p: {"actions": [{"conference": {"room": "linphone-room"}}]}
    # SHA-256 offered too (not the default): Linphone must pick it
    s = await start_stack(tmp_path, [app_config(app)], ban_after_failures=5, ban_s=60,
                          digest_algorithms=["SHA-256", "MD5"])
    UserStore(s.users_db, "minivoice").add("alice", PASSWORD)
    yield s
    assert s.gw.stop() == 0, s.gw.log()[-3000:]


async def test_linphone_registers_and_joins_a_room(stack: Stack, app: AppServer,
                                                   tmp_path: Path) -> None:
    edge = f"127.0.0.1:{stack.edge_port}"
    bad = await Linphonec.start(tmp_path / "bad")
    try:
        bad.send(f"register sip:alice@{edge} sip:{edge} wrong-password")
        await asyncio.sleep(2)
        line = await bad.ask("status register", "registered")
        assert not line.startswith("registered,"), line
    finally:
        await bad.close()
    assert any("edge.auth_failed" in x and "user=alice" in x for x in stack.edge_log())

    phone = await Linphonec.start(tmp_path / "good")
    try:
        phone.send(f"register sip:alice@{edge} sip:{edge} {PASSWORD}")
        await phone.ask("status register", "registered, identity=sip:alice@")
        phone.send(f"call sip:1001@{edge}")
        await app.wait_for(lambda: [w for w in app.webhooks() if w["event"] == "call.answered"],
                           timeout=15)

        async def in_room() -> int:
            _, body = await stack.gw.get("/v1/conferences")
            return sum(len(c["participants"]) for c in body["conferences"]
                       if c["room"] == "linphone-room")
        for _ in range(50):
            if await in_room() == 1:
                break
            await asyncio.sleep(0.1)
        assert await in_room() == 1
        call = app.answers()[0].json["call"]
        assert call["to"] == "1001" and call["from"] == "alice", call
        phone.send("terminate")
        done = await app.completed(timeout=15)
        assert done[0]["data"]["hangup_by"] == "caller", done
    finally:
        await phone.close()
    log = stack.edge_log()
    # Linphone picks SHA-256 from the two challenges (MD5: test_edge.py, test_edge_clients.py)
    assert any("edge.registered" in x and "user=alice" in x and "alg=SHA-256" in x
               for x in log), log
    assert any("edge.invite" in x and "user=alice" in x and "to=1001" in x for x in log), log


def run_tool(*args: str, timeout: float = 60) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    return out.stdout + out.stderr


async def test_sipvicious_finds_the_edge_but_no_user_and_no_password(
        stack: Stack, tmp_path: Path) -> None:
    port = str(stack.edge_port)
    # svmap: the edge is there (it answers OPTIONS) but does not say what it is
    found = await asyncio.to_thread(run_tool, tool("sipvicious_svmap"), "127.0.0.1", "-p", port)
    assert f"127.0.0.1:{port}" in found and "kamailio" not in found.lower(), found
    # svwar: alice exists, the others do not, and it cannot tell
    names = tmp_path / "names.txt"
    names.write_text("alice\nbob\nadmin\n1001\n100\nroot\n")
    for method in ("REGISTER", "INVITE", "OPTIONS"):
        out = await asyncio.to_thread(run_tool, tool("sipvicious_svwar"), "127.0.0.1", "-p",
                                      port, "-d", str(names), "-m", method, "--force")
        assert "found nothing" in out, (method, out)
        assert "| alice" not in out, (method, out)
    # svcrack: five wrong guesses, then silence; the right password (last) is never reached
    words = tmp_path / "passwords.txt"
    words.write_text("".join(f"guess{i}\n" for i in range(40)) + PASSWORD + "\n")
    out = await asyncio.to_thread(run_tool, tool("sipvicious_svcrack"), "127.0.0.1", "-p", port,
                                  "-u", "alice", "-d", str(words), timeout=90)
    assert PASSWORD not in out, out
    assert "found nothing" in out and "since we last received a response" in out, out
    log = stack.edge_log()
    assert sum(1 for x in log if "edge.auth_failed" in x and "src=127.0.0.1 " in x
               and "reason=credentials" in x) == 5, log
    assert any("edge.ban src=127.0.0.1 reason=auth_failures" in x for x in log), log
    # the guesser is still banned; someone else is not
    assert SipClient(("127.0.0.1", stack.edge_port)).request(
        "OPTIONS", stack.uri("x"), "probe", timeout=0.5) is None
    other = SipClient(("127.0.0.1", stack.edge_port), "127.0.0.71").register("alice", PASSWORD)
    assert other is not None and other.code == 200
