"""Issue 12, the HTTP side: how the gateway reads, fetches from and answers to what customers
control. Real aiohttp servers on loopback, the real HookClient and MediaCache; no SIP."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import make_mocked_request

from gateway import api, cli, keys, signing
from gateway.actions.base import RoomFull
from gateway.actions.conference import Conference
from gateway.actions.redirect import Redirect
from gateway.actions.schema import MAX_BODY_BYTES, parse_body, parse_document
from gateway.call.session import CallSession
from gateway.call.table import CallTable
from gateway.conferences import Conferences
from gateway.config import (
    ApiConfig,
    ApiToken,
    Application,
    Config,
    ConfigError,
    HooksConfig,
    LimitsConfig,
    RoomsConfig,
    from_dict,
)
from gateway.hooks import AnswerUrlError, HookClient, HttpPools
from gateway.media_cache import MediaCache, MediaError
from gateway.netguard import AddressPolicy, GuardedResolver, guarded_socket_factory, redact
from gateway.strict import ValidationError
from media.rooms import MemberOptions, RoomKey
from sip.events import DtmfDigit, IncomingCall
from tests.fakes import Fakes
from tests.harness import AppServer, GatewayProc, app_config
from tests.httpkit import Server, in_pieces, serve, wav_bytes, wav_seconds

LOOPBACK = AddressPolicy.from_config(["127.0.0.0/8"])
APP_DICT = {"id": "app_t", "customer_id": "c1", "answer_url": "http://127.0.0.1:9/answer",
            "secret": "s" * 16}
APP = Application(id="app_t", customer_id="c1", answer_url="http://127.0.0.1:9/answer",
                  secret="s" * 16)

ROOT = Path(__file__).resolve().parent.parent


# -- finding 1: bodies read to EOF, with a cap --------------------------------------------
async def test_answer_body_in_two_pieces_is_read_whole(
        server: Server, http: aiohttp.ClientSession) -> None:
    doc = {"actions": [{"say": {"text": "x" * 3000}}, {"conference": {"room": "r1"}}]}
    server.routes["/answer"] = in_pieces(json.dumps(doc).encode())
    hooks = HookClient(http, HooksConfig())
    actions = await hooks.fetch_actions([server.url + "/answer"], "s" * 16, {}, "call_t")
    assert [a.name for a in actions] == ["say", "conference"]


async def test_answer_body_over_the_cap_is_refused_while_streaming(
        server: Server, http: aiohttp.ClientSession) -> None:
    # no Content-Length (chunked): the cap must hold as the bytes arrive
    server.routes["/answer"] = in_pieces(b"[" + b" " * (200 * 1024) + b"]", pieces=8)
    hooks = HookClient(http, HooksConfig())
    with pytest.raises(AnswerUrlError) as err:
        await hooks.fetch_actions([server.url + "/answer"], "s" * 16, {}, "call_t")
    assert err.value.message == "invalid action payload"
    assert "larger than" in err.value.details[0].reason


async def test_content_length_over_the_cap_is_refused_before_reading(
        server: Server, http: aiohttp.ClientSession) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(10**9)})
        await resp.prepare(request)
        await resp.write(b"{")
        for _ in range(200):  # never finishes: only the header may be trusted
            await asyncio.sleep(0.05)
            if request.transport is None or request.transport.is_closing():
                break
        return resp
    server.routes["/answer"] = huge
    hooks = HookClient(http, HooksConfig())
    with pytest.raises(AnswerUrlError) as err:
        await asyncio.wait_for(
            hooks.fetch_actions([server.url + "/answer"], "s" * 16, {}, "call_t"), 3)
    assert "larger than" in err.value.details[0].reason


async def test_media_body_in_pieces_is_cached_whole(
        server: Server, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    server.routes["/m.wav"] = in_pieces(wav_bytes(4.0), pieces=4, headers={"ETag": '"a"'})
    cache = MediaCache(tmp_path, http, 8000, policy=LOOPBACK)
    path = await cache.fetch(server.url + "/m.wav")
    assert wav_seconds(path) == pytest.approx(4.0, abs=0.01)


# -- finding 10: small ones ---------------------------------------------------------------
def test_verify_returns_false_on_a_non_ascii_signature() -> None:
    body = b"{}"
    good = signing.sign("secret-123", body)
    t = good.split(",")[0]
    assert signing.verify("secret-123", body, good)
    assert not signing.verify("secret-123", body, f"{t},v1=\u00e9\u00e9")
    assert not signing.verify("secret-123", body, f"{t},v1=\udcff")


def test_verify_returns_false_on_a_crafted_timestamp() -> None:
    body = b"{}"
    v1 = signing.sign("secret-123", body).split(",")[1]
    now = 1_700_000_000
    # 400 digits overflowed the float subtraction (OverflowError: a 500 in the demo app)
    for t in ("9" * 400, "9" * 4301, "1_700_000_000", "\u0661\u0667" + "0" * 8, "-1", "", "1e9",
              " 1700000000"):
        assert not signing.verify("secret-123", body, f"t={t},{v1}", now=now), t


@pytest.mark.parametrize("body", [b"[" * 60000, b'{"actions": ' + b"[" * 60000])
def test_deep_nesting_is_a_validation_error(body: bytes) -> None:
    assert len(body) < MAX_BODY_BYTES
    with pytest.raises(ValidationError) as err:
        parse_body(body)
    assert "malformed JSON" in err.value.details[0].reason


async def test_logged_urls_carry_no_query_or_credentials(
        server: Server, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    server.routes["/answer"] = in_pieces(b'{"actions": [{"hangup": {}}]}')
    hooks = HookClient(http, HooksConfig())
    url = server.url.replace("http://", "http://user:pw-secret@") + "/answer?token=tok-secret"
    caplog.set_level(logging.INFO)
    await hooks.fetch_actions([url], "s" * 16, {}, "call_t")
    logged = " ".join(str(vars(r)) for r in caplog.records)
    assert "answer_url.request" in logged
    assert "tok-secret" not in logged and "pw-secret" not in logged
    assert redact("https://a:b@h.example/p?x=1#f") == "https://h.example/p?REDACTED"


async def test_internal_error_does_not_leak_exception_text() -> None:
    class Hooks:
        async def fetch_actions(self, *a: Any, **k: Any) -> Any:
            raise RuntimeError("/srv/minivoice/secret-path db=10.1.2.3")
    session = new_session(fake_gateway(Hooks()))
    await session.run()
    assert session.rec.error == {"code": "internal_error", "message": "internal error"}
    assert session.rec.hangup_cause == "internal_error"


async def test_patch_on_a_participant_who_left_meanwhile_is_404() -> None:
    conferences = Conferences(lambda change: None)
    key = RoomKey("c1", "r1")
    joined = asyncio.create_task(conferences.join(key, "call_a", MemberOptions()))
    await asyncio.sleep(0)
    app = web.Application()
    app[keys.CONFIG] = Config(applications=(APP,))
    app[keys.ROOMS] = conferences
    app[keys.CALLS] = CallTable(cast(Any, None))
    api.setup(app)
    runner, port = await serve(app)

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"muted": '
        await asyncio.sleep(0.2)
        conferences.remove("call_a")  # the caller leaves while the body is on its way
        yield b"true}"
    try:
        async with aiohttp.ClientSession() as s, s.patch(
                f"http://127.0.0.1:{port}/v1/conferences/r1/participants/call_a",
                data=slow_body()) as r:
            assert r.status == 404, await r.text()
            assert (await r.json())["error"]["code"] == "not_found"
    finally:
        await runner.cleanup()
        assert await joined == "removed"


# -- finding 6: SSRF ----------------------------------------------------------------------
@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fd00::1",
    "fe80::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "fe80::1%eth0", "not-an-ip"])
def test_non_public_addresses_are_refused_by_default(address: str) -> None:
    assert not AddressPolicy().permits(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert AddressPolicy().permits(address)


def test_allow_private_lists_networks_and_hosts() -> None:
    policy = AddressPolicy.from_config(["127.0.0.0/8", "10.1.2.3", "media.internal"])
    assert policy.permits("127.0.0.1") and policy.permits("::ffff:127.0.0.1")
    assert policy.permits("10.1.2.3") and not policy.permits("10.1.2.4")
    assert not policy.permits("169.254.169.254")
    assert policy.host_allowed("Media.Internal.")
    for bad in (["http://x/"], ["a b"], [""]):
        with pytest.raises(ConfigError, match="allow_private"):
            from_dict({"applications": [APP_DICT], "hooks": {"allow_private": bad}})


class FixedResolver(AbstractResolver):
    """DNS as a test wants it: every name resolves to `address` (a rebinding name does)."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": self.address, "port": port, "family": family,
                 "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


def guarded(policy: AddressPolicy, address: str = "127.0.0.1") -> aiohttp.ClientSession:
    """netguard.guarded_session, with DNS answered by FixedResolver."""
    approved: set[str] = set()
    resolver = GuardedResolver(policy, FixedResolver(address), approved)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        resolver=resolver, socket_factory=guarded_socket_factory(policy, approved)))


async def test_the_socket_factory_refuses_what_got_past_the_other_checks(
        server: Server) -> None:
    server.routes["/x"] = in_pieces(ACTIONS)
    connector = aiohttp.TCPConnector(socket_factory=guarded_socket_factory(AddressPolicy()))
    async with aiohttp.ClientSession(connector=connector) as s:
        with pytest.raises(aiohttp.ClientConnectorError):
            await s.get(server.url + "/x")  # a literal, and no check_url before it
    assert server.hits == []


async def test_a_host_allowed_by_name_may_resolve_to_a_private_address(
        server: Server, http: aiohttp.ClientSession) -> None:
    server.routes["/hook"] = in_pieces(ACTIONS)
    policy = AddressPolicy.from_config(["hooks.internal"])
    async with guarded(policy) as customer:
        hooks = HookClient(http, HooksConfig(), customer, policy)
        ok = f"http://hooks.internal:{server.port}/hook"
        assert await hooks.fetch_actions([ok], "s" * 16, {}, "call_t", kind="action_url")
        with pytest.raises(AnswerUrlError, match="refused"):  # another name, same address
            await hooks.fetch_actions([f"http://other.internal:{server.port}/hook"],
                                      "s" * 16, {}, "call_t", kind="action_url")
    assert server.hits == ["/hook"]


ACTIONS = b'{"actions": [{"hangup": {}}]}'


async def test_action_url_to_loopback_is_refused(
        server: Server, http: aiohttp.ClientSession) -> None:
    server.routes["/hook"] = in_pieces(ACTIONS)
    policy = AddressPolicy()
    async with guarded(policy) as customer:
        hooks = HookClient(http, HooksConfig(), customer, policy)
        for url in (server.url + "/hook",                                   # IP literal
                    f"http://rebind.example:{server.port}/hook",            # name -> 127.0.0.1
                    f"http://[::ffff:127.0.0.1]:{server.port}/hook"):
            with pytest.raises(AnswerUrlError) as err:
                await hooks.fetch_actions([url], "s" * 16, {}, "call_t", kind="action_url",
                                          error_code="action_url_error")
            assert err.value.message == "action_url refused: address not allowed", url
            assert err.value.code == "action_url_error"
    assert server.hits == [], "a refused URL must not be requested"


async def test_the_check_is_made_at_connect_time_and_allow_private_opens_it(
        server: Server, http: aiohttp.ClientSession) -> None:
    server.routes["/hook"] = in_pieces(ACTIONS)
    policy = AddressPolicy.from_config(["127.0.0.0/8"])
    async with guarded(policy) as customer:
        hooks = HookClient(http, HooksConfig(), customer, policy)
        url = f"http://rebind.example:{server.port}/hook"
        assert await hooks.fetch_actions([url], "s" * 16, {}, "call_t", kind="action_url")
    assert server.hits == ["/hook"]
    # the same name, now resolving elsewhere, is judged on what it resolves to now
    strict = AddressPolicy.from_config(["10.0.0.0/8"])
    async with guarded(strict) as customer:
        hooks = HookClient(http, HooksConfig(), customer, strict)
        with pytest.raises(AnswerUrlError, match="refused"):
            await hooks.fetch_actions([url], "s" * 16, {}, "call_t", kind="action_url")


async def test_redirects_are_not_followed(server: Server, http: aiohttp.ClientSession) -> None:
    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(server.url + "/elsewhere")
    server.routes["/answer"] = server.routes["/hook"] = server.routes["/m.wav"] = moved
    server.routes["/elsewhere"] = in_pieces(ACTIONS)
    policy = AddressPolicy.from_config(["127.0.0.0/8"])
    async with guarded(policy) as customer:
        hooks = HookClient(http, HooksConfig(), customer, policy)
        with pytest.raises(AnswerUrlError, match="returned HTTP 302"):
            await hooks.fetch_actions([server.url + "/answer"], "s" * 16, {}, "call_t")
        with pytest.raises(AnswerUrlError, match="returned HTTP 302"):
            await hooks.fetch_actions([server.url + "/hook"], "s" * 16, {}, "call_t",
                                      kind="action_url")
    assert "/elsewhere" not in server.hits


async def test_play_url_to_loopback_is_refused(server: Server, tmp_path: Path) -> None:
    server.routes["/m.wav"] = in_pieces(wav_bytes(0.5))
    policy = AddressPolicy()
    async with guarded(policy) as customer:
        cache = MediaCache(tmp_path, customer, 8000, policy=policy)
        for url in (server.url + "/m.wav", f"http://rebind.example:{server.port}/m.wav"):
            with pytest.raises(MediaError, match="address not allowed"):
                await cache.fetch(url)
    assert server.hits == []


def test_keys_of_a_document_that_is_not_an_action_list_are_not_echoed() -> None:
    for doc in ({"calls": [{"id": "call_secret"}], "webhooks_pending": 3},
                {"actions": {"x": 1}, "token": "t"}):
        with pytest.raises(ValidationError) as err:
            parse_document(doc)
        assert [d.path for d in err.value.details] == ["actions"]
        assert "call_secret" not in str(err.value) and "webhooks" not in str(err.value)


# -- finding 7: unsafe defaults -----------------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "gateway.example"])
def test_no_tokens_on_a_non_loopback_http_host_is_refused(host: str, tmp_path: Path) -> None:
    path = tmp_path / "open.yaml"
    path.write_text(json.dumps({"applications": [APP_DICT], "http": {"host": host}}))
    with pytest.raises(ConfigError, match=r"api\.tokens: required when http\.host"):
        cli.build_config(cli._parser().parse_args(["serve", "--config", str(path)]))
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "api.tokens" in run.stderr
    # command-line overrides are judged too
    args = ["serve", "--answer-url", "http://127.0.0.1:3000/a", "--secret", "s" * 16,
            "--http-host", host]
    with pytest.raises(ConfigError, match=r"api\.tokens"):
        cli.build_config(cli._parser().parse_args(args))
    # with a token it starts; on loopback it starts without
    tokens = {"tokens": [{"token": "t" * 20}]}
    path.write_text(json.dumps({"applications": [APP_DICT], "http": {"host": host},
                                "api": tokens}))
    cli.build_config(cli._parser().parse_args(["serve", "--config", str(path)]))
    for local in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        path.write_text(json.dumps({"applications": [APP_DICT], "http": {"host": local}}))
        cli.build_config(cli._parser().parse_args(["serve", "--config", str(path)]))


def test_answer_url_without_secret_gets_a_generated_one(
        capsys: pytest.CaptureFixture[str]) -> None:
    cfgs = [cli.build_config(cli._parser().parse_args(
        ["serve", "--answer-url", "http://127.0.0.1:3000/a"])) for _ in range(2)]
    secrets_used = [c.applications[0].secret for c in cfgs]
    assert "change-me-please" not in secrets_used
    assert len(secrets_used[0]) >= 24 and secrets_used[0] != secrets_used[1]
    assert secrets_used[0] in capsys.readouterr().err  # shown, or nobody could verify


def test_a_config_file_application_needs_a_secret() -> None:
    app = {k: v for k, v in APP_DICT.items() if k != "secret"}
    with pytest.raises(ConfigError, match=r"applications\[0\].secret: is required"):
        from_dict({"applications": [app]})


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    tokens = (ApiToken("admin-token-0123456789"), ApiToken("cust-token-0123456789", "c1"),
              ApiToken("other-token-0123456789", "c2"))
    cfg = Config(applications=(APP,), api=ApiConfig(tokens=tokens))
    app = web.Application()
    app[keys.CONFIG] = cfg

    def authorize(header: str) -> tuple[bool, str | None]:
        request = make_mocked_request("GET", "/v1/calls", headers={"Authorization": header},
                                      app=app)
        return api._authorize(request)
    assert authorize("Bearer admin-token-0123456789") == (True, None)
    assert len(compared) == 3, "stopped at the first match"
    assert authorize("Bearer cust-token-0123456789") == (False, "c1")
    with pytest.raises(api.ApiError):
        authorize("Bearer \u00e9t\u00e9-token-0123456789")  # non-ASCII: 401, not a crash
    assert len(compared) == 9


# -- finding 8: limits --------------------------------------------------------------------
def fake_gateway(hooks: Any, **limits: Any) -> Fakes:
    return Fakes(hooks=hooks, limits=LimitsConfig(**limits))


def new_session(gw: Fakes) -> CallSession:
    leg = IncomingCall("call_x", "sip-id", "sip:a@h", "sip:b@h", "a", "b", "127.0.0.1:5")
    return gw.session(leg, APP)


async def test_a_redirect_loop_stops_at_the_document_limit() -> None:
    class Loop:
        posts = 0

        async def fetch_actions(self, *a: Any, **k: Any) -> Any:
            self.posts += 1
            return (Redirect(url="http://app.example/again"),)
    hooks = Loop()
    session = new_session(fake_gateway(hooks, max_documents_per_call=7))
    await asyncio.wait_for(session.run(), 5)
    assert hooks.posts == 7
    assert session.rec.error is not None and session.rec.error["code"] == "action_url_error"
    assert "more than 7 action documents" in session.rec.error["message"]
    assert session.rec.hangup_cause == "action_url_error"


async def test_dtmf_queue_and_timeline_are_bounded() -> None:
    session = new_session(fake_gateway(None, max_dtmf_queue=16, max_timeline_entries=100))
    for _ in range(5000):
        session.on_dtmf(DtmfDigit("call_x", "5", "rfc4733"))
    assert session.digits.qsize() == 16 and session.dtmf_dropped == 5000 - 16
    assert [e["event"] for e in session.rec.timeline].count("dtmf.dropped") == 1
    for i in range(500):
        session.note("progress", n=i)
    assert len(session.rec.timeline) == 100
    record = session.record()
    assert record["timeline_dropped"] == 16 + 1 + 500 - 100 and len(record["timeline"]) == 100


async def test_a_full_room_is_not_joined_and_the_next_action_runs() -> None:
    conferences = Conferences(lambda change: None, RoomsConfig(max_participants=2))
    key = RoomKey("c1", "r1")
    waiting = [asyncio.create_task(conferences.join(key, f"call_{i}", MemberOptions()))
               for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(RoomFull):
        await conferences.join(key, "call_2", MemberOptions())
    assert set(conferences.book.rooms[key].members) == {"call_0", "call_1"}
    assert "call_2" not in conferences.book.room_of
    notes: list[str] = []

    class Call:
        async def answer(self) -> None:
            pass

        async def conference(self, room: str, options: MemberOptions) -> None:
            await conferences.join(key, "call_3", options)

        def note(self, event: str, **fields: Any) -> None:
            notes.append(event)
    assert await Conference(room="r1").run(Call()) is None  # type: ignore[arg-type]
    assert notes == ["conference.full"]
    conferences.end(key)
    assert await asyncio.gather(*waiting) == ["room_ended", "room_ended"]
    assert RoomsConfig().max_participants == 500  # the documented default


async def test_each_kind_of_traffic_has_its_own_pool() -> None:
    cfg = Config(applications=(APP,), limits=LimitsConfig(
        answer_connections=11, action_connections=12, webhook_connections=13,
        media_connections=14))
    pools = HttpPools.open(cfg)
    try:
        sessions = [pools.answer, pools.action, pools.webhook, pools.media]
        assert len({id(s.connector) for s in sessions}) == 4
        assert [s.connector.limit for s in sessions] == [11, 12, 13, 14]  # type: ignore[union-attr]
        guarded_ones = [s for s in sessions
                        if isinstance(getattr(s.connector, "_resolver", None), GuardedResolver)]
        assert guarded_ones == [pools.action, pools.media]
    finally:
        await pools.close()


async def test_get_room_while_a_participant_leaves_is_not_a_500() -> None:
    conferences = Conferences(lambda change: None)
    key = RoomKey("c1", "r1")
    joined = [asyncio.create_task(conferences.join(key, cid, MemberOptions()))
              for cid in ("call_a", "call_b")]
    await asyncio.sleep(0)

    async def levels(ids: tuple[str, ...]) -> dict[str, int]:
        conferences.remove("call_a")  # leaves while the bridge is being asked
        return dict.fromkeys(ids, 0)
    app = web.Application()
    app[keys.CONFIG] = Config(applications=(APP,))
    app[keys.ROOMS] = conferences
    app[keys.CALLS] = CallTable(cast(Any, None))
    app[keys.ENGINE] = cast(Any, SimpleNamespace(levels=levels))
    api.setup(app)
    runner, port = await serve(app)
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/v1/conferences/r1") as r:
            assert r.status == 200, await r.text()
            body = await r.json()
            assert [p["call_id"] for p in body["participants"]] == ["call_b"]
    finally:
        await runner.cleanup()
        conferences.end(key)
        await asyncio.gather(*joined)


def test_allow_private_on_the_command_line() -> None:
    base = ["serve", "--answer-url", "http://127.0.0.1:3000/a", "--secret", "s" * 16]
    cfg = cli.build_config(cli._parser().parse_args(
        [*base, "--allow-private", "127.0.0.0/8", "--allow-private", "::1"]))
    assert cfg.hooks.allow_private == ("127.0.0.0/8", "::1")
    assert cli.build_config(cli._parser().parse_args(base)).hooks.allow_private == ()
    with pytest.raises(ConfigError, match="--allow-private"):
        cli.build_config(cli._parser().parse_args([*base, "--allow-private", "http://x/"]))


@pytest.mark.sip
async def test_requests_the_http_parser_refuses_get_400_and_one_log_line(
    app: AppServer, gateway_factory: Callable[..., Awaitable[GatewayProc]]
) -> None:
    """A request line or header past aiohttp's limits (8190 bytes) and a malformed request
    line get 400; the gateway logs one `http.bad_request` line each, no traceback (the
    conftest fails the test on one), and keeps serving."""
    gw = await gateway_factory([app_config(app)])
    hostile = [b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
               b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
               b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\x00: 1\r\n\r\n",
               b"GET /healthz HTTP/9.9.9\r\n\r\n"]
    for raw in hostile:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
        writer.write(raw)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert re.match(rb"HTTP/1\.[01] 400 ", status_line), (raw[:40], status_line)
    async with aiohttp.ClientSession() as s, s.get(gw.http + "/healthz") as r:
        assert r.status == 200
    log = gw.log()
    assert log.count("http.bad_request") >= 3, log[-3000:]
