"""Small pure pieces: signing, SIP text helpers, application matching, config, audio maths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import applications, signing
from gateway.config import Application, ConfigError, from_dict, load
from gateway.logs import KeyValueFormatter, fields
from gateway.outbox import backoff_s
from media.analysis import delay_s, onset_s, rms_dbfs, tone_level_dbfs
from media.tones import read_wav, silence, sine, write_wav
from sip.sipmsg import request_uri, uri_user

ROOT = Path(__file__).resolve().parent.parent


# -- signing ---------------------------------------------------------------------------
def test_signature_roundtrip_and_expiry() -> None:
    body = b'{"a":1}'
    header = signing.sign("s3cret", body, now=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert signing.verify("s3cret", body, header, now=1_700_000_100)
    assert not signing.verify("s3cret", body, header, now=1_700_000_000 + 301)
    assert not signing.verify("other", body, header, now=1_700_000_000)
    assert not signing.verify("s3cret", body + b"x", header, now=1_700_000_000)
    for bad in (None, "", "t=x,v1=00", "v1=00", "garbage"):
        assert not signing.verify("s3cret", body, bad, now=1_700_000_000)


def test_signature_is_documented_hmac() -> None:
    import hashlib
    import hmac
    mac = hmac.new(b"k", b"42." + b"body", hashlib.sha256).hexdigest()
    assert signing.signature("k", b"body", 42) == f"t=42,v1={mac}"


# -- SIP text --------------------------------------------------------------------------
@pytest.mark.parametrize("msg,uri", [
    ("INVITE sip:1001@10.0.0.1 SIP/2.0\r\nVia: x\r\n", "sip:1001@10.0.0.1"),
    ("INVITE tel:+15551234 SIP/2.0\r\n", "tel:+15551234"),
    ("SIP/2.0 200 OK\r\n", ""),
    ("", ""),
])
def test_request_uri(msg: str, uri: str) -> None:
    assert request_uri(msg) == uri


@pytest.mark.parametrize("uri,user", [
    ("sip:1001@host", "1001"), ("<sip:+1555@h;transport=tcp>", "+1555"),
    ('"Bob" <sip:bob@example.com>;tag=1', "bob"), ("sip:host.only", ""),
    ("sips:alice;x=y@h", "alice"), ("tel:+15551234;phone-context=x", "+15551234"),
    ("junk", ""),
])
def test_uri_user(uri: str, user: str) -> None:
    assert uri_user(uri) == user


# -- applications and config -----------------------------------------------------------
def _app(id: str, numbers: tuple[str, ...]) -> Application:
    return Application(id=id, customer_id="c", answer_url="http://x/a", numbers=numbers)


def test_application_matching_prefers_exact_number() -> None:
    apps = [_app("wild", ("*",)), _app("sales", ("2000", "2001"))]
    assert applications.match(apps, "2001").id == "sales"  # type: ignore[union-attr]
    assert applications.match(apps, "9").id == "wild"  # type: ignore[union-attr]
    assert applications.match([_app("only", ("1",))], "2") is None


def test_config_errors_are_all_listed_with_paths() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"sip": {"port": 70000, "transports": ["udp", "sctp"], "bogus": 1},
                   "applications": [{"id": "a", "customer_id": "c", "answer_url": "ftp://x"}]},
                  "test.yaml")
    text = str(err.value)
    for expected in ("sip.port: must be <= 65535", "sip.transports[1]", "sip.bogus: unknown field",
                     "applications[0].answer_url: must be an http"):
        assert expected in text, text
    with pytest.raises(ConfigError, match="at least one application"):
        from_dict({"applications": []})
    with pytest.raises(ConfigError, match="duplicate id"):
        from_dict({"applications": [
            {"id": "a", "customer_id": "c", "answer_url": "http://x", "secret": "s" * 8}] * 2})


def test_shipped_configs_are_valid(tmp_path: Path) -> None:
    # configs/bench.yaml is a template: the bench fills in {sip_port}, {http_port}, {database}
    values = {"sip_port": "5060", "http_port": "8080", "database": str(tmp_path / "b.db")}
    for path in (ROOT / "configs").glob("*.yaml"):
        if path.name == "cluster.yaml":  # a stack file (gateway.cluster.stack), checked there
            continue
        text = path.read_text()
        for name, value in values.items():
            text = text.replace('"{' + name + '}"', value).replace("{" + name + "}", value)
        rendered = tmp_path / path.name
        rendered.write_text(text)
        load(rendered)


def test_check_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sip: {port: -1}\napplications: []\n")
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(bad)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "sip.port: must be >= 0" in run.stderr
    bad.write_text("sip: [unclosed\n")
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(bad)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "not valid YAML" in run.stderr
    run = subprocess.run([sys.executable, "-m", "gateway", "serve"], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 2 and "--answer-url" in run.stderr


# -- logs, outbox maths ----------------------------------------------------------------
def test_log_lines_are_key_value_and_reserved_keys_survive() -> None:
    import logging
    rec = logging.LogRecord("minivoice.call", logging.INFO, "f", 1, "call.answered", None, None)
    for k, v in fields(call_id="call_x", message="hi there", room="r").items():
        setattr(rec, k, v)
    line = KeyValueFormatter().format(rec)
    assert "INFO call.answered call_id=call_x" in line
    assert 'message_="hi there"' in line and "room=r" in line and "\n" not in line


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_s(n, 300) for n in range(1, 12)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


# -- audio maths -----------------------------------------------------------------------
def test_tone_level_and_rms() -> None:
    x = sine(1000, 1.0, 8000, level_dbfs=-20)
    assert tone_level_dbfs(x, 8000, 1000) == pytest.approx(-20, abs=0.1)
    assert tone_level_dbfs(x, 8000, 440) < -80
    assert rms_dbfs(x) == pytest.approx(-20, abs=0.1)
    assert tone_level_dbfs(silence(1.0), 8000, 1000) < -100


def test_delay_and_onset() -> None:
    burst = sine(1000, 0.1, 8000, -6)
    received = silence(0.5)
    received[1200:1200 + len(burst)] += burst  # 150 ms later
    assert delay_s(burst, received, 8000) == pytest.approx(0.15, abs=0.001)
    assert onset_s(received, 8000) == pytest.approx(0.15, abs=0.006)


def test_wav_roundtrip(tmp_path: Path) -> None:
    x = sine(440, 0.5, 16000, -6)
    write_wav(tmp_path / "t.wav", x, 16000)
    y, rate = read_wav(tmp_path / "t.wav")
    assert rate == 16000 and len(y) == len(x)
    assert float(abs(x - y).max()) < 1e-3


# -- SQLite store ------------------------------------------------------------------------
def test_store_records_scope_and_retention(tmp_path: Path) -> None:
    import time as _time

    from gateway.store import Store

    store = Store(tmp_path / "s.db")
    store.call_save("call_a", {"id": "call_a", "customer_id": "c1"})
    store.call_save("call_b", {"id": "call_b", "customer_id": "c2"})
    assert [r["id"] for r in store.calls_recent(10)] == ["call_b", "call_a"]
    assert [r["id"] for r in store.calls_recent(10, "c1")] == ["call_a"]
    assert store.calls_prune(_time.time() - 60) == 0
    assert store.calls_prune(_time.time() + 1) == 2 and store.call_get("call_a") is None
    store.close()


def test_outbox_rows_keep_per_call_order(tmp_path: Path) -> None:
    from gateway.store import Store

    store = Store(tmp_path / "o.db")
    for i, call in enumerate(("c1", "c1", "c2", "c1")):
        store.outbox_add(f"evt_{i}", call, "http://x", "s", b"{}", now=float(i))
    heads = {r.call_id: r.event_id for r in store.outbox_heads()}
    assert heads == {"c1": "evt_0", "c2": "evt_2"}
    store.outbox_failed(1, "HTTP 500", next_at=99.0, dead=False)  # seq 1 = evt_0
    assert {r.event_id for r in store.outbox_heads()} == {"evt_0", "evt_2"}  # still first
    store.outbox_delivered(1)
    assert {r.call_id: r.event_id for r in store.outbox_heads()}["c1"] == "evt_1"
    assert store.outbox_pending_count() == 3
    store.close()


def test_rtp_can_bind_apart_from_sip() -> None:
    from sip.config import SipConfig
    from sip.pjconfig import account_config

    behind_edge = account_config(SipConfig(host="127.0.0.1", rtp_host="0.0.0.0"), 5070)
    assert behind_edge.mediaConfig.transportConfig.boundAddress == "0.0.0.0"
    alone = account_config(SipConfig(host="127.0.0.1"), 5060)
    assert alone.mediaConfig.transportConfig.boundAddress == "127.0.0.1"


def test_check_config_applies_edge_rules(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("sip: {host: 0.0.0.0, port: 5070}\nedge: {enabled: true}\n"
                   "applications: [{id: a, customer_id: c, answer_url: 'http://x/a',"
                   " secret: s3cret-s3cret}]\n")
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(cfg)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "loopback" in run.stderr, run.stderr


def test_every_event_name_in_the_catalogue_is_documented() -> None:
    from gateway.webhook_events import EVENT_NAMES

    doc = (ROOT / "docs" / "api.md").read_text()
    assert len(set(EVENT_NAMES)) == 18
    assert all(f"`{name}`" in doc for name in EVENT_NAMES)


def test_sip_and_gateway_agree_on_the_version_and_user_agent() -> None:
    import gateway
    import sip

    assert (sip.__version__, sip.USER_AGENT) == (gateway.__version__, gateway.USER_AGENT)


async def test_demo_app_takes_room_events_without_a_call() -> None:
    """recording.completed and the conference events carry `"call": null`: the embedded demo
    app (make run's event_url) must answer 204, not fail and have the outbox retry forever."""
    import json as _json

    from aiohttp import ClientSession, web

    from gateway import demo, signing
    from tests.httpkit import serve

    app = web.Application()
    demo.setup(app, "demo-secret-0123456789")
    runner, port = await serve(app)
    try:
        async with ClientSession() as http:
            for doc in ({"event": "recording.completed", "call": None, "data": {"room": "r"},
                         "conference": {"room": "r", "customer_id": "c", "participants": 0}},
                        ["not", "an", "object"]):
                body = _json.dumps(doc).encode()
                headers = {signing.HEADER: signing.sign("demo-secret-0123456789", body)}
                async with http.post(f"http://127.0.0.1:{port}/demo/events", data=body,
                                     headers=headers) as r:
                    assert r.status == (204 if isinstance(doc, dict) else 401)
    finally:
        await runner.cleanup()


async def test_demo_app_answers_a_signed_body_that_is_no_envelope_without_a_500() -> None:
    """Found by the HTTP fuzzer (tests/fuzz_http): a correctly signed body that was not an
    envelope (malformed JSON, a 5,000-digit number, no `call`) made /demo/answer and
    /demo/events answer 500 with a Traceback (json.loads, `doc["call"]`, an assert)."""
    from aiohttp import ClientSession, web

    from gateway import demo, signing
    from tests.httpkit import serve

    secret = "demo-secret-0123456789"
    app = web.Application()
    demo.setup(app, secret)
    runner, port = await serve(app)
    try:
        async with ClientSession() as http:
            for path, body, status in (
                    ("answer", b"{", 401), ("events", b"{", 401),
                    ("answer", b'{"call": 1' + b"0" * 5000 + b"}", 401),
                    ("events", b'{"a": 1, "a": 2}', 401),
                    ("answer", b"{}", 400), ("answer", b'{"call": "x"}', 400),
                    ("answer", b'{"call": {}}', 200)):
                headers = {signing.HEADER: signing.sign(secret, body)}
                async with http.post(f"http://127.0.0.1:{port}/demo/{path}", data=body,
                                     headers=headers) as r:
                    assert r.status == status, (path, body[:20], r.status)
    finally:
        await runner.cleanup()
