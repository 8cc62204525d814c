"""Issue 12 item 5, the SIP edge findings: forked branches and contacts outside
relay_networks, contacts per user, trusted sources' flood limit, idle TCP connections, forged
log fields, a locked users.db, and the digest uri. Each test runs the real Kamailio on
loopback, as tests/test_edge.py does."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from bench.gateway import free_port
from gateway.edge import kamailio as edge_module
from gateway.edge.config import EdgeConfig
from gateway.edge.users import UserStore
from tests.edge_stack import SipClient, Stack, authorization, start_stack
from tests.harness import AppServer, Phonebank, app_config

pytestmark = pytest.mark.sip

PASSWORD = "correct-horse-42"


def client(stack: Stack, source: str = "127.0.0.1", tcp: bool = False) -> SipClient:
    return SipClient(("127.0.0.1", stack.edge_port), source, tcp=tcp)


async def stopped(s: Stack) -> None:
    code = s.gw.stop()
    log = s.gw.log()
    assert "Traceback" not in log, log[-4000:]
    assert code == 0, f"exit code {code}\n{log[-3000:]}"


# ------------------------------------------------------------------ 1. relay, contacts ---
async def test_no_branch_goes_outside_relay_networks(tmp_path: Path, app: AppServer) -> None:
    """bob has a phone inside relay_networks and tries to add a contact outside them
    (127.0.0.77 is not in 127.0.0.0/29). A transfer to bob rings the phone; the outside
    address never receives a request."""
    s = await start_stack(tmp_path, [app_config(app)], relay_networks=["127.0.0.0/29"])
    outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outside.bind(("127.0.0.77", 0))
    outside.setblocking(False)
    out_port = outside.getsockname()[1]
    bob = alice = None
    try:
        store = UserStore(s.users_db, "minivoice")
        store.add("alice", PASSWORD)
        store.add("bob", "bobs-password-7")
        domain = f"127.0.0.1:{s.edge_port}"
        bob = await Phonebank.start(tmp_path)
        alice = await Phonebank.start(tmp_path)
        bob.send(op="listen", mode="answer", tone_hz=700)
        bob.send(op="register", user="bob", password="bobs-password-7", domain=domain,
                 registrar=f"sip:{domain}")
        alice.send(op="register", user="alice", password=PASSWORD, domain=domain,
                   registrar=f"sip:{domain}")
        assert (await bob.wait("registered", None, user="bob"))["code"] == 200
        assert (await alice.wait("registered", None, user="alice"))["code"] == 200
        # After bob's phone: usrloc lists contacts of equal q in the order they came, so before
        # the fix this one became an appended branch that nothing checked.
        rogue = client(s, "127.0.0.2")
        r = rogue.register("bob", "bobs-password-7",
                           contact=f"<sip:bob@127.0.0.77:{out_port}>")
        assert r is not None and r.code == 403, r
        await s.edge_logged("edge.register_refused", "user=bob", "reason=contact")
        # a name is refused too (never resolved), and so is a second contact hidden in one
        # header
        r = rogue.register("bob", "bobs-password-7", contact="<sip:bob@phone.example.com>")
        assert r is not None and r.code == 403, r
        r = rogue.register("bob", "bobs-password-7", contact=(
            f'<sip:bob@127.0.0.2:{rogue.port}>;x="a,b", <sip:bob@127.0.0.77:{out_port}>'))
        assert r is not None and r.code == 403, r
        # a comma inside a quoted parameter is not a second contact (Linphone sends those);
        # removed again at once, so that bob's phone stays his only contact
        quoted = f'<sip:bob@127.0.0.2:{rogue.port}>;x="a,b"'
        for expires, code in ((60, 200), (0, 200)):
            r = rogue.register("bob", "bobs-password-7", contact=quoted, expires=expires)
            assert r is not None and r.code == code, r
        assert not [c for c in r.headers("Contact") if "127.0.0.2" in c], r.text  # gone
        rogue.close()
        app.answer = lambda p: {"actions": [{"transfer": {"to": "bob", "timeout": 10}}]}
        alice.call("a", s.uri("1001"), account="alice", tone_hz=440)
        await bob.wait("media", "in1", timeout=15)  # the good contact rang and answered
        alice.hangup("a")
        await alice.wait("ended", "a")
        with pytest.raises(BlockingIOError):
            outside.recv(65535)  # nothing ever reached the outside address
    finally:
        outside.close()
        for bank in (alice, bob):
            if bank:
                await bank.close()
        await stopped(s)


async def test_every_forked_branch_is_checked(tmp_path: Path) -> None:
    """The branch check on its own: Kamailio alone, with the REGISTER-time Contact check cut
    out of the rendered config, so that an outside contact gets into usrloc (as one could if
    relay_networks had been wider when it registered). The gateway (a plain socket at the
    gateway's address) calls bob: his good phone gets the INVITE, the outside one nothing."""
    e = EdgeConfig(enabled=True, listen="127.0.0.1", udp_port=free_port(), tcp_port=0,
                   tls_port=0, users_db=str(tmp_path / "users.db"),
                   runtime_dir=str(tmp_path / "edge"), relay_networks=("127.0.0.0/29",),
                   children=1)
    UserStore(e.users_db, "minivoice").add("bob", "bobs-password-7")
    gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gw.bind(("127.0.0.1", 0))
    runtime = tmp_path / "edge"
    runtime.mkdir()
    kamailio = shutil.which("kamailio")
    assert kamailio
    plan = edge_module.EdgePlan(e, "127.0.0.1", gw.getsockname()[1], runtime,
                                runtime / "kamailio.cfg", None, None, kamailio)
    text = edge_module.render(plan, "0" * 64)
    assert "\troute(CHECK_CONTACTS);\n" in text
    plan.config_path.write_text(text.replace("\troute(CHECK_CONTACTS);\n", ""))
    kam = edge_module.Edge(plan)
    await kam.start()
    outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outside.bind(("127.0.0.77", 0))
    target = ("127.0.0.1", e.udp_port)
    rogue, phone = SipClient(target, "127.0.0.2"), SipClient(target, "127.0.0.3")
    try:
        # The good phone first: usrloc lists contacts of equal q in the order they came, so
        # the outside one is an appended branch, which nothing checked before the fix.
        r = phone.register("bob", "bobs-password-7")
        assert r is not None and r.code == 200, r
        r = rogue.register("bob", "bobs-password-7",
                           contact=f"<sip:bob@127.0.0.77:{outside.getsockname()[1]}>")
        assert r is not None and r.code == 200, r  # got in: no Contact check in this config
        me = f"127.0.0.1:{gw.getsockname()[1]}"
        gw.sendto((f"INVITE sip:bob@127.0.0.1:{e.udp_port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {me};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                   "Max-Forwards: 70\r\nFrom: <sip:gateway@127.0.0.1>;tag=g1\r\n"
                   "To: <sip:bob@127.0.0.1>\r\n"
                   f"Call-ID: {secrets.token_hex(8)}\r\nCSeq: 1 INVITE\r\n"
                   f"Contact: <sip:gateway@{me}>\r\nContent-Length: 0\r\n\r\n").encode(),
                  target)
        phone.sock.settimeout(3)
        assert phone.sock.recv(65535).startswith(b"INVITE sip:bob@127.0.0.3:")
        outside.settimeout(1.5)
        with pytest.raises(TimeoutError):
            outside.recv(65535)
    finally:
        for sock in (gw, outside):
            sock.close()
        rogue.close()
        phone.close()
        await kam.stop()


def test_branch_route_checks_every_branch(tmp_path: Path) -> None:
    """The branch check is rendered for every forked branch (t_on_branch before t_relay),
    so a contact that got into usrloc any other way is still never sent to."""
    e = EdgeConfig(tls_port=0, relay_networks=("127.0.0.0/29",))
    plan = edge_module.EdgePlan(e, "127.0.0.1", 5070, tmp_path, tmp_path / "k.cfg", None,
                                None, "kamailio")
    text = edge_module.render(plan, "0" * 64)
    invite = text.split("route[INVITE] {", 1)[1].split("\n}", 1)[0]
    assert invite.index('t_on_branch("BRANCH_CHECK")') < invite.index("route(RELAY)")
    branch = text.split("branch_route[BRANCH_CHECK] {", 1)[1].split("\n}", 1)[0]
    assert "route(RELAY_ALLOWED)" in branch and "drop;" in branch
    assert 'modparam("registrar", "max_contacts", 5)' in text


def test_default_relay_networks_are_private_and_loopback() -> None:
    nets = EdgeConfig().relay_networks
    assert "0.0.0.0/0" not in nets
    assert {"127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(nets)


async def test_contacts_per_user_are_capped(tmp_path: Path, app: AppServer) -> None:
    s = await start_stack(tmp_path, [app_config(app)], max_contacts=3)
    try:
        UserStore(s.users_db, "minivoice").add("alice", PASSWORD)
        phones = [client(s, f"127.0.0.{n}") for n in range(2, 6)]
        codes = []
        for c in phones:
            r = c.register("alice", PASSWORD)
            codes.append(r.code if r else None)
        assert codes == [200, 200, 200, 503], codes
        await s.edge_logged("edge.register_refused", "src=127.0.0.5 ", "reason=registrar")
        # refreshing an existing contact is still fine
        r = phones[0].register("alice", PASSWORD)
        assert r is not None and r.code == 200
        for c in phones:
            c.close()
    finally:
        await stopped(s)


# ---------------------------------------------------------------- 2. trusted flood ---
async def test_trusted_sources_have_a_higher_limit_not_none(
        tmp_path: Path, app: AppServer) -> None:
    s = await start_stack(tmp_path, [app_config(app)], trusted=["127.0.0.5/32"],
                          flood_requests=10, flood_window_s=2, trusted_flood_requests=40)
    try:
        trunk = client(s, "127.0.0.5")
        # Start at the beginning of a window so that all of them fall into one.
        await asyncio.sleep(2 - time.time() % 2 + 0.05)
        for _ in range(100):
            trunk.request("OPTIONS", s.uri("x"), "trunk", wait=False)
        answered = 0
        trunk.sock.settimeout(0.7)
        try:
            while True:
                if trunk.sock.recv(65535).startswith(b"SIP/2.0 200"):
                    answered += 1
        except TimeoutError:
            pass
        assert 10 < answered <= 40, answered  # over the normal limit, capped at its own
        await s.edge_logged("edge.trusted_flood", "src=127.0.0.5 ", "limit=40")
        # dropped, not banned: the next window is answered
        await asyncio.sleep(2.2)
        r = trunk.request("OPTIONS", s.uri("x"), "trunk")
        assert r is not None and r.code == 200
        assert not any("edge.ban src=127.0.0.5 " in x for x in s.edge_log())
        trunk.close()
    finally:
        await stopped(s)


# ------------------------------------------------------------------- 3. idle TCP ---
def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the peer closed `sock` (it sends nothing), or None."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return None
    except ConnectionResetError:
        data = b""
    return time.monotonic() - start if data == b"" else None


async def test_idle_tcp_connections_are_closed_registered_ones_kept(
        tmp_path: Path, app: AppServer) -> None:
    s = await start_stack(tmp_path, [app_config(app)], tcp_idle_s=3)
    try:
        UserStore(s.users_db, "minivoice").add("alice", PASSWORD)
        silent = socket.create_connection(("127.0.0.1", s.edge_port))
        phone = client(s, "127.0.0.3", tcp=True)
        r = phone.register("alice", PASSWORD)
        assert r is not None and r.code == 200, r
        # the silent one is closed after tcp_idle_s (Kamailio's timer is coarse: allow slack)
        after = await asyncio.to_thread(closed_within, silent, 15)
        assert after is not None, "an idle TCP connection was kept open"
        # the registered one outlives it
        assert await asyncio.to_thread(closed_within, phone.sock, 2) is None
        r = phone.request("OPTIONS", s.uri("x"), "alice")
        assert r is not None and r.code == 200
        silent.close()
        phone.close()
    finally:
        await stopped(s)


# --------------------------------------------------------------- 4. log forging ---
async def test_a_username_cannot_forge_log_fields(tmp_path: Path, app: AppServer) -> None:
    s = await start_stack(tmp_path, [app_config(app)])
    try:
        c = client(s, "127.0.0.9")
        ruri = f"sip:127.0.0.1:{s.edge_port}"
        ch = c.request("REGISTER", ruri, "alice")
        assert ch is not None and ch.code == 401
        # the username only in the digest answer: From/To must stay valid SIP
        auth = authorization("Authorization", ch, "REGISTER", ruri, "alice", "whatever")
        auth = auth.replace('username="alice"', 'username="x src=10.9.9.9"')
        r = c.request("REGISTER", ruri, "alice", extra=auth)
        assert r is not None and r.code == 401
        line = await s.edge_logged("edge.auth_failed", "src=127.0.0.9 ")
        assert "user=- " in line, line
        assert "10.9.9.9" not in s.gw.log()
        c.close()
    finally:
        await stopped(s)


def test_relogging_keeps_the_first_occurrence_of_a_key(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edge"):
        edge_module._relog(" 5(123) NOTICE: <script>: edge.auth_failed src=127.0.0.9 "
                           "user=x src=10.9.9.9 method=REGISTER reason=credentials\n")
    record = caplog.records[-1]
    assert record.getMessage() == "edge.auth_failed"
    assert record.__dict__["src"] == "127.0.0.9"
    assert record.__dict__["user"] == "x"


# --------------------------------------------------------------- 5. locked users.db ---
async def test_a_locked_users_db_is_not_a_wrong_password(
        tmp_path: Path, app: AppServer) -> None:
    s = await start_stack(tmp_path, [app_config(app)], ban_after_failures=2, ban_s=30)
    UserStore(s.users_db, "minivoice").add("alice", PASSWORD)
    lock = sqlite3.connect(s.users_db, isolation_level=None)
    try:
        c = client(s, "127.0.0.10")
        lock.execute("BEGIN EXCLUSIVE")
        for _ in range(4):  # twice ban_after_failures
            r = c.register("alice", PASSWORD)
            assert r is not None and r.code == 503, r
            assert r.headers("Retry-After") == ["5"]
        line = await s.edge_logged("edge.auth_error", "src=127.0.0.10 ", "reason=db_error")
        assert "counted=no" in line
        lock.execute("ROLLBACK")
        r = c.register("alice", PASSWORD)  # not banned, and the database works again
        assert r is not None and r.code == 200, r
        log = s.edge_log()
        assert not any("src=127.0.0.10 " in x and "reason=credentials" in x for x in log), log
        assert not any("edge.ban" in x for x in log), log
        c.close()
    finally:
        lock.close()
        await stopped(s)


# ------------------------------------------------------------------ 6. digest uri ---
async def test_digest_uri_must_be_the_request_uri(tmp_path: Path, app: AppServer) -> None:
    s = await start_stack(tmp_path, [app_config(app)], ban_after_failures=3, ban_s=30)
    try:
        UserStore(s.users_db, "minivoice").add("alice", PASSWORD)
        c = client(s, "127.0.0.11")
        ruri = f"sip:127.0.0.1:{s.edge_port}"
        other = "sip:127.0.0.1:9"
        # the right password, for another uri: malformed, not counted
        for uri in [other, f"sip:bob@127.0.0.1:{s.edge_port}", other, other]:
            ch = c.request("REGISTER", ruri, "alice")
            assert ch is not None and ch.code == 401
            auth = authorization("Authorization", ch, "REGISTER", uri, "alice", PASSWORD)
            r = c.request("REGISTER", ruri, "alice", extra=auth)
            assert r is not None and r.code == 401, (uri, r)
        line = await s.edge_logged("edge.auth_failed", "src=127.0.0.11 ", "detail=uri")
        assert "reason=malformed" in line and "counted=no" in line, line
        # a wrong password with a wrong uri is still a wrong password
        ch = c.request("REGISTER", ruri, "alice")
        assert ch is not None
        auth = authorization("Authorization", ch, "REGISTER", other, "alice", "wrong-one-1")
        r = c.request("REGISTER", ruri, "alice", extra=auth)
        assert r is not None and r.code == 401
        await s.edge_logged("edge.auth_failed", "src=127.0.0.11 ", "failures=1")
        ok = c.register("alice", PASSWORD)  # the same uri: fine, and not banned
        assert ok is not None and ok.code == 200, ok
        c.close()
    finally:
        await stopped(s)
