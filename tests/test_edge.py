"""The SIP edge (Kamailio) in front of the gateway: registration, digest auth with MD5 and
SHA-256, which algorithms are offered, what unauthenticated callers get, bans (and what does
not count towards one), and that the gateway hides on loopback."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench import sipp
from gateway.edge.users import UserStore
from tests.edge_stack import SipClient, Stack, authorization, start_stack
from tests.harness import PYTHON, ROOT, AppServer, app_config, rtp_block

pytestmark = pytest.mark.sip

PASSWORD = "correct-horse-42"


@pytest.fixture
async def stack(tmp_path: Path, app: AppServer) -> AsyncIterator[Stack]:
    s = await start_stack(tmp_path, [app_config(app)], trusted=["127.0.0.5/32"],
                          ban_after_failures=4, ban_s=3, failure_window_s=30,
                          digest_algorithms=["SHA-256", "MD5"])
    UserStore(s.users_db, "minivoice").add("alice", PASSWORD)
    yield s
    code = s.gw.stop()
    log = s.gw.log()
    assert "Traceback" not in log, log[-4000:]
    assert code == 0, f"exit code {code}\n{log[-3000:]}"
    assert "edge.stopped" in log


def client(stack: Stack, source: str = "127.0.0.1") -> SipClient:
    return SipClient(("127.0.0.1", stack.edge_port), source)


async def test_register_md5_and_sha256(stack: Stack) -> None:
    c = client(stack)
    first = c.request("REGISTER", f"sip:127.0.0.1:{stack.edge_port}", "alice")
    assert first is not None and first.code == 401
    # both algorithms offered, SHA-256 first (RFC 8760 order of preference)
    algs = [re.search(r"algorithm=([\w-]+)", h).group(1)  # type: ignore[union-attr]
            for h in first.headers("WWW-Authenticate")]
    assert algs == ["SHA-256", "MD5"], first.text
    for alg in ("MD5", "SHA-256"):
        r = c.register("alice", PASSWORD, algorithm=alg)
        assert r is not None and r.code == 200, (alg, r)
        assert "alice@127.0.0.1" in r.text  # the binding is echoed back
    assert "kamailio" not in first.text.lower()  # no product or version for scanners
    c.close()


async def test_unknown_user_and_wrong_password_look_the_same(stack: Stack) -> None:
    c = client(stack, "127.0.0.21")
    wrong = c.register("alice", "not-the-password")
    unknown = c.register("mallory", "not-the-password")
    assert wrong is not None and unknown is not None
    assert wrong.code == unknown.code == 401

    def shape(r: str) -> list[str]:  # everything but per-request values
        return [re.sub(r'(nonce|tag|branch|rport)=("?)[^";\s,]*', r"\1=X", line)
                for line in r.splitlines()
                if not line.lower().startswith(("call-id", "cseq", "from", "to", "via",
                                                 "content-length"))]
    assert shape(wrong.text) == shape(unknown.text)
    c.close()


async def test_replayed_and_tampered_answers_fail(stack: Stack) -> None:
    c = client(stack, "127.0.0.22")
    ruri = f"sip:127.0.0.1:{stack.edge_port}"
    ch = c.request("REGISTER", ruri, "alice")
    assert ch is not None
    auth = authorization("Authorization", ch, "REGISTER", ruri, "alice", PASSWORD, "SHA-256")
    ok = c.request("REGISTER", ruri, "alice", extra=auth)
    assert ok is not None and ok.code == 200
    again = c.request("REGISTER", ruri, "alice", extra=auth)  # the very same answer
    assert again is not None and again.code == 401
    # a nonce we did not issue
    forged = auth.replace(ch.challenges()["SHA-256"]["nonce"][:12], "1700000000.A")
    bad = c.request("REGISTER", ruri, "alice", extra=forged)
    assert bad is not None and bad.code == 401
    # neither tells anything about the password: refused, logged, not counted towards a ban
    await stack.edge_logged("src=127.0.0.22 ", "reason=nonce")
    log = [x for x in stack.edge_log() if "edge.auth_failed src=127.0.0.22 " in x]
    assert any("reason=replay" in x and "counted=no" in x for x in log), log
    assert any("reason=nonce" in x and "counted=no" in x for x in log), log
    assert not any("failures=" in x for x in log), log
    # someone else's registration with alice's credentials
    other = c.request("REGISTER", ruri, "alice", to_user="bob", extra=authorization(
        "Authorization", ch, "REGISTER", ruri, "alice", PASSWORD, "MD5", nc="00000002"))
    assert other is not None and other.code == 403
    c.close()


async def test_unauthenticated_invites_never_reach_the_gateway(
        stack: Stack, app: AppServer) -> None:
    c = client(stack, "127.0.0.23")
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.23\r\ns=-\r\nc=IN IP4 127.0.0.23\r\nt=0 0\r\n" \
          "m=audio 4000 RTP/AVP 0\r\n"
    r = c.request("INVITE", stack.uri("1001"), "alice", body=sdp)
    assert r is not None and r.code == 407 and "Proxy-Authenticate" in r.text
    wrong = authorization("Proxy-Authorization", r, "INVITE", stack.uri("1001"), "alice",
                          "guess-guess")
    r2 = c.request("INVITE", stack.uri("1001"), "alice", body=sdp, extra=wrong)
    assert r2 is not None and r2.code == 407
    # a forged in-dialog INVITE (To-tag, Route to the edge) is refused as well
    forged = c.request("INVITE", f"sip:1001@127.0.0.1:{stack.gw.sip_port}", "alice", body=sdp,
                       extra=f"Route: <sip:127.0.0.1:{stack.edge_port};lr>\r\n",
                       to_user="1001", to_tag="abc")
    assert forged is not None and forged.code in (403, 404)
    await asyncio.sleep(0.5)
    assert app.answers() == [], "an unauthenticated INVITE reached the gateway"
    c.close()


async def test_trusted_trunk_calls_without_auth(stack: Stack, app: AppServer,
                                                tmp_path: Path) -> None:
    """SIPp from 127.0.0.5 (edge.trusted): no challenge, the calls reach the room, and the
    in-dialog ACK/BYE follow the edge's signed route set."""
    result = await stack.trunk_calls(tmp_path, calls=3, rate=10, hold_ms=1500, timeout_s=60)
    assert result.successful == 3 and result.failed == 0, result.errors
    done = await app.completed(count=3, timeout=15)
    assert all(w["data"]["hangup_by"] == "caller" for w in done), done
    assert app.answers()[0].json["call"]["to"] == "1001"
    # not trusted: the same scenario from another address is challenged and fails
    result = await sipp.run(tmp_path, f"127.0.0.1:{stack.edge_port}", tmp_path / "uac_trunk.xml",
                            service="1001", calls=1, rate=1, hold_ms=100,
                            media_port=rtp_block(), timeout_s=30, extra=("-i", "127.0.0.6"))
    assert result.successful == 0
    assert len(app.answers()) == 3


async def test_gateway_listens_on_loopback_only(stack: Stack) -> None:
    out = subprocess.run(["ss", "-Hlnpu"], capture_output=True, text=True).stdout + \
        subprocess.run(["ss", "-Hlnpt"], capture_output=True, text=True).stdout
    mine = [line for line in out.splitlines()
            if f":{stack.gw.sip_port} " in line and f"pid={stack.gw.proc.pid}," in line]
    assert mine, out
    for line in mine:
        local = line.split()[3]
        assert local.startswith("127.0.0.1:"), line


async def test_auth_failures_ban_the_source_for_a_while(stack: Stack) -> None:
    attacker, bystander = client(stack, "127.0.0.31"), client(stack, "127.0.0.32")
    for _ in range(4):  # ban_after_failures
        attacker.register("alice", "wrong-password-1")
    assert attacker.request("OPTIONS", stack.uri("x"), "probe", timeout=0.5) is None
    ok = bystander.register("alice", PASSWORD)
    assert ok is not None and ok.code == 200, "a bystander was affected by the ban"
    await asyncio.sleep(3.2)  # ban_s
    back = attacker.request("OPTIONS", stack.uri("x"), "probe")
    assert back is not None and back.code == 200, "the ban did not expire"
    assert any("edge.ban src=127.0.0.31 reason=auth_failures" in line
               for line in stack.edge_log())
    attacker.close()
    bystander.close()


async def test_flood_bans_the_source(tmp_path: Path, app: AppServer) -> None:
    s = await start_stack(tmp_path, [app_config(app)], flood_requests=20, flood_window_s=2,
                          ban_s=2)
    try:
        c = client(s, "127.0.0.41")
        for _ in range(100):  # as fast as we can: 100 requests in well under 2 s
            c.request("OPTIONS", s.uri("x"), "flood", wait=False)
        await asyncio.sleep(0.3)
        assert c.request("OPTIONS", s.uri("x"), "flood", timeout=0.5) is None
        other = client(s, "127.0.0.42").request("OPTIONS", s.uri("x"), "me")
        assert other is not None and other.code == 200
        assert any("reason=flood" in line for line in s.edge_log())
    finally:
        assert s.gw.stop() == 0


def test_edge_refuses_a_gateway_reachable_from_the_network(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sip: {host: 0.0.0.0, port: 5070}\n"
                   "applications: [{id: a, customer_id: c, answer_url: 'http://127.0.0.1:1/',"
                   " secret: s3cret-s3cret}]\n"
                   f"edge: {{enabled: true, runtime_dir: {tmp_path / 'e'}}}\n")
    out = subprocess.run([PYTHON, "-m", "gateway", "serve", "--config", str(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "sip.host is '0.0.0.0': with edge.enabled the gateway must listen on loopback" \
        in out.stderr


async def test_transfer_reaches_a_registered_user(
    stack: Stack, app: AppServer, tmp_path: Path
) -> None:
    """Both ends authenticate at the edge: alice calls in, the answer_url transfers her to
    `bob`, which the gateway dials through the edge to bob's registration."""
    from tests.audio import levels
    from tests.harness import Phonebank

    UserStore(stack.users_db, "minivoice").add("bob", "bobs-password-7")
    domain = f"127.0.0.1:{stack.edge_port}"
    registrar = f"sip:{domain}"
    bob = await Phonebank.start(tmp_path)
    alice = await Phonebank.start(tmp_path)
    try:
        bob.send(op="listen", mode="answer", tone_hz=700, record=str(tmp_path / "bob"))
        bob.send(op="register", user="bob", password="bobs-password-7", domain=domain,
                 registrar=registrar)
        alice.send(op="register", user="alice", password=PASSWORD, domain=domain,
                   registrar=registrar)
        assert (await bob.wait("registered", None, user="bob"))["code"] == 200
        assert (await alice.wait("registered", None, user="alice"))["code"] == 200
        app.answer = lambda p: {"actions": [{"transfer": {"to": "bob", "timeout": 10}}]}
        rec = tmp_path / "alice.wav"
        alice.call("a", stack.uri("1001"), account="alice", tone_hz=440, record=str(rec))
        await alice.wait("media", "a", timeout=15)
        await bob.wait("media", "in1", timeout=15)
        await asyncio.sleep(2.0)
        alice.hangup("a")
        await alice.wait("ended", "a")
        await bob.wait("ended", "in1")
        heard = levels(rec, 440, 700, skip_s=1.0)
        assert heard[700] > -25 and heard[440] < -45, heard
        done = {w["call"]["direction"]: w for w in await app.completed(count=2)}
        assert done["outbound"]["data"]["outcome"] == "answered"
        assert done["outbound"]["call"]["to"] == "bob"
        assert done["inbound"]["call"]["from"] == "alice"
    finally:
        await alice.close()
        await bob.close()


async def test_default_offers_md5_only(tmp_path: Path, app: AppServer) -> None:
    """Without `digest_algorithms` the edge offers MD5 alone: some phones (baresip 1.0.0) give
    up on a 401 that offers anything else (tests/test_edge_clients.py)."""
    s = await start_stack(tmp_path, [app_config(app)])
    try:
        UserStore(s.users_db, "minivoice").add("alice", PASSWORD)
        c = client(s)
        first = c.request("REGISTER", f"sip:127.0.0.1:{s.edge_port}", "alice")
        assert first is not None and first.code == 401
        assert [h.split("algorithm=")[1] for h in first.headers("WWW-Authenticate")] == ["MD5"]
        invite = c.request("INVITE", s.uri("1001"), "alice")
        assert invite is not None and invite.code == 407
        assert list(invite.challenges()) == ["MD5"]
        ok = c.register("alice", PASSWORD)
        assert ok is not None and ok.code == 200
        await s.edge_logged("edge.registered", "user=alice", "alg=MD5")
        c.close()
    finally:
        assert s.gw.stop() == 0


async def test_an_algorithm_not_offered_is_refused_but_never_banned(
        tmp_path: Path, app: AppServer) -> None:
    """A phone answering with an algorithm the edge did not offer (or cannot compute) gets a
    fresh challenge, a log line saying so, and no strike: however fast it retries, it is not
    a password guess. Wrong passwords from the same source still are."""
    s = await start_stack(tmp_path, [app_config(app)], digest_algorithms=["MD5"],
                          ban_after_failures=3, ban_s=30)
    try:
        UserStore(s.users_db, "minivoice").add("alice", PASSWORD)
        c = client(s, "127.0.0.51")
        # the right password each time, hashed with an algorithm the edge did not offer
        for alg in ["SHA-256"] * 4 + ["SHA-512-256", "MD5-sess", 'x" injected=1']:
            r = c.register("alice", PASSWORD, algorithm=alg, offered="MD5")
            assert r is not None and r.code == 401, (alg, r)
            assert list(r.challenges()) == ["MD5"]
        ok = c.register("alice", PASSWORD)  # not banned: MD5 goes through at once
        assert ok is not None and ok.code == 200
        await s.edge_logged("edge.registered", "src=127.0.0.51 ")
        log = [x for x in s.edge_log() if "edge.auth_failed src=127.0.0.51 " in x]
        assert len(log) == 7, log
        assert all("reason=algorithm" in x and "counted=no" in x for x in log), log
        assert sum("alg=SHA-256" in x for x in log) == 4, log
        assert any("alg=SHA-512-256" in x for x in log) and any("alg=MD5-SESS" in x for x in log)
        # the value is logged only if it is a plain token; nothing else gets into the line
        assert not any("injected" in x for x in log), log
        assert not any("edge.ban" in x for x in s.edge_log())
        # wrong passwords still count, and ban at the third
        for _ in range(3):
            r = c.register("alice", "wrong-password-9")
        assert c.request("OPTIONS", s.uri("x"), "probe", timeout=0.5) is None
        await s.edge_logged("edge.ban src=127.0.0.51 ")
        fails = [x for x in s.edge_log() if "edge.auth_failed src=127.0.0.51 " in x
                 and "reason=credentials" in x]
        assert [x.split("failures=")[1] for x in fails] == ["1", "2", "3"], fails
        assert any("edge.ban src=127.0.0.51 reason=auth_failures" in x for x in s.edge_log())
        c.close()
    finally:
        assert s.gw.stop() == 0
