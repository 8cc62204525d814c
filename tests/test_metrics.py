"""GET /metrics: the registry per gateway, its bounded labels, and a real gateway scraped
before, during and after real calls (parsed with prometheus_client's own parser)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import MAX_DESTINATIONS, Backlog, Live, Metrics
from media.quality import CallQuality
from tests.harness import AppServer, GatewayProc, Phonebank, app_config
from tests.waiting import eventually

ADMIN = "admin-token-0123456789"
CUSTOMER = "cust-token-0123456789"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _live(**over: Any) -> Live:
    base: dict[str, Any] = dict(
        calls=lambda: (3, 1), sip_legs=lambda: 4, rooms=lambda: 1, participants=lambda: 2,
        webhooks_pending=lambda: 7,
        webhook_backlog=lambda: Backlog(0.0, None, (("http://a:80", 7),)),
        sip_loop_age=lambda: 0.004, accepting=lambda: True)
    return Live(**{**base, **over})


# -- units ----------------------------------------------------------------------------------
def test_registries_are_per_instance_and_the_collector_reads_live_sizes() -> None:
    a, b = Metrics(), Metrics()
    a.watch(_live())
    b.watch(_live(calls=lambda: (0, 0), accepting=lambda: False))
    a.call_ended("inbound", "completed")
    a.sip_final(200, CallQuality("PCMA", 100, 5, 1.0, None))
    a.sip_final(None, None)  # an outbound leg without media: nothing to count
    a.hook_done("answer_url", 0.03, True)
    sa, sb = parse(a.render().decode()), parse(b.render().decode())
    assert value(sa, "minivoice_calls_active", direction="inbound") == 3
    assert value(sa, "minivoice_calls_active", direction="outbound") == 1
    assert value(sb, "minivoice_calls_active", direction="inbound") == 0
    assert value(sa, "minivoice_calls_completed_total", direction="inbound",
                 status="completed") == 1
    assert value(sb, "minivoice_calls_completed_total", direction="inbound",
                 status="completed") == 0
    assert value(sa, "minivoice_sip_responses_sent_total", code="200") == 1
    assert value(sa, "minivoice_rtp_packets_received_total") == 100
    assert value(sa, "minivoice_rtp_packets_lost_total") == 5
    assert value(sa, "minivoice_answer_url_seconds_count", kind="answer_url", outcome="ok") == 1
    assert value(sa, "minivoice_webhooks_pending_by_destination", destination="http://a:80") == 7
    assert value(sa, "minivoice_webhooks_oldest_pending_seconds") == 0
    assert value(sa, "minivoice_accepting_calls") == 1
    assert value(sb, "minivoice_accepting_calls") == 0
    a.watch(_live(rooms=lambda: 9))  # watching again replaces the collector, no duplicate
    assert value(parse(a.render().decode()), "minivoice_rooms") == 9


def test_labels_stay_bounded_against_hostile_values() -> None:
    m = Metrics()
    for i in range(MAX_DESTINATIONS + 50):
        m.webhook_result(f"http://host-{i}.example:80", ok=False)
    m.sip_final(99, None)  # not a SIP status: not a label
    m.sip_final(70000, None)
    m.edge_event("edge.ban", {"reason": "x" * 500})
    m.edge_event("edge.ban", {"reason": "flood"})
    m.edge_event("edge.auth_failed", {"counted": "no"})  # an algorithm mismatch: not a guess
    m.edge_event("edge.auth_failed", {"reason": "credentials"})
    m.edge_event("edge.registered", {})
    s = parse(m.render().decode())
    dests = {dict(k[1])["destination"] for k in s if k[0] == "minivoice_webhook_deliveries_total"}
    assert len(dests) == MAX_DESTINATIONS + 1 and "other" in dests
    assert value(s, "minivoice_webhook_deliveries_total", destination="other",
                 result="failed") == 50
    assert not [k for k in s if k[0] == "minivoice_sip_responses_sent_total"]
    assert value(s, "minivoice_edge_bans_total", reason="other") == 1
    assert value(s, "minivoice_edge_bans_total", reason="flood") == 1
    assert value(s, "minivoice_edge_auth_failures_total") == 1


async def test_loop_lag_probe_observes() -> None:
    m = Metrics()
    task = asyncio.create_task(m.probe_loop_lag(0.01))
    await asyncio.sleep(0.1)
    task.cancel()
    s = parse(m.render().decode())
    assert value(s, "minivoice_event_loop_lag_seconds_count") >= 3


# -- a real gateway -----------------------------------------------------------------------------
async def scrape(gw: GatewayProc, token: str | None = ADMIN) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(gw.http + "/metrics", headers=headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


@pytest.mark.sip
async def test_metrics_of_a_real_gateway_move_with_real_calls(
    app: AppServer, gateway_factory: Callable[..., Awaitable[GatewayProc]],
    phones: Phonebank, tmp_path: Path,
) -> None:
    gw = await gateway_factory(
        [app_config(app, numbers=["1001"])],
        api={"tokens": [{"token": ADMIN}, {"token": CUSTOMER, "customer_id": "cust_test"}]})
    # who may scrape: the admin token only
    assert (await scrape(gw, None))[0] == 401
    assert (await scrape(gw, "wrong-token-0123456789"))[0] == 401
    status, _, body = await scrape(gw, CUSTOMER)
    assert status == 403 and "admin" in body
    status, ctype, text = await scrape(gw)
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    before = parse(text)
    assert value(before, "minivoice_calls_active", direction="inbound") == 0
    assert value(before, "minivoice_rooms") == 0

    app.events_status = 503  # the event_url fails: webhooks pile up for its destination
    app.answer = lambda p: {"actions": [{"conference": {"room": "metrics"}}]}
    phones.call("a", gw.uri("1001"), tone_hz=440)
    phones.call("b", gw.uri("1001"), tone_hz=700)
    for cid in ("a", "b"):
        await phones.wait("media", cid, timeout=15)

    async def during() -> Samples | None:
        s = parse((await scrape(gw))[2])
        return s if value(s, "minivoice_room_participants") == 2 else None

    s = await eventually(during, timeout=10, interval=0.2)
    assert value(s, "minivoice_calls_active", direction="inbound") == 2
    assert value(s, "minivoice_rooms") == 1
    assert value(s, "minivoice_sip_legs") == 2
    assert value(s, "minivoice_answer_url_seconds_count", kind="answer_url", outcome="ok") == 2
    assert 0 <= value(s, "minivoice_sip_loop_lag_seconds") < 2
    await asyncio.sleep(2.0)  # RTP flows both ways for a while
    await phones.hangup_all(("a", "b"))

    dest = f"http://127.0.0.1:{app.port}"

    async def after() -> Samples | None:
        s = parse((await scrape(gw))[2])
        done = value(s, "minivoice_calls_completed_total", direction="inbound",
                     status="completed") == 2
        backlog = value(s, "minivoice_webhooks_pending_by_destination", destination=dest) > 0
        return s if done and backlog else None

    s = await eventually(after, timeout=20, interval=0.5)
    assert value(s, "minivoice_calls_active", direction="inbound") == 0
    assert value(s, "minivoice_room_participants") == 0
    assert value(s, "minivoice_sip_responses_sent_total", code="200") == 2

    # a number no application answers: 404, counted though no call session ever existed
    phones.call("nobody", gw.uri("9999"))
    assert (await phones.wait("ended", "nobody"))["code"] == 404

    async def rejected() -> Samples | None:
        got = parse((await scrape(gw))[2])
        return got if value(got, "minivoice_sip_responses_sent_total", code="404") == 1 else None

    await eventually(rejected, timeout=10, interval=0.2)
    # two callers' RTP for about 2.5 s: 20 ms packets, about 125 each
    assert value(s, "minivoice_rtp_packets_received_total") > 150, s
    assert value(s, "minivoice_rtp_packets_lost_total") <= 5
    assert value(s, "minivoice_webhook_deliveries_total", destination=dest, result="failed") > 0
    assert value(s, "minivoice_webhooks_pending") > 0
    assert value(s, "minivoice_webhooks_oldest_pending_seconds") > 0
    assert value(s, "minivoice_event_loop_lag_seconds_count") > 10
    app.events_status = 204  # let the outbox deliver what it holds before the gateway stops


def test_edge_log_lines_move_the_edge_counters() -> None:
    """The lines the edge's Kamailio script writes, through the reader that relogs them."""
    from gateway.edge import kamailio as edge

    m = Metrics()
    lines = [
        " 5(123) NOTICE: <script>: edge.auth_failed src=10.0.0.9 user=bob method=REGISTER "
        "reason=credentials alg=MD5 failures=1",
        " 5(123) NOTICE: <script>: edge.auth_failed src=10.0.0.9 user=bob method=REGISTER "
        "reason=algorithm detail=x alg=MD5 counted=no",
        " 5(123) WARNING: <script>: edge.ban src=10.0.0.9 reason=auth_failures ban_s=600",
        " 5(123) WARNING: <script>: edge.ban src=10.0.0.7 reason=flood ban_s=600",
        " 5(123) NOTICE: <script>: edge.registered src=10.0.0.8 user=alice proto=udp alg=MD5",
        "not a kamailio line at all",
    ]
    for line in lines:
        event = edge._relog(line)
        if event is not None:
            m.edge_event(*event)
    s = parse(m.render().decode())
    assert value(s, "minivoice_edge_auth_failures_total") == 1
    assert value(s, "minivoice_edge_bans_total", reason="auth_failures") == 1
    assert value(s, "minivoice_edge_bans_total", reason="flood") == 1


@pytest.mark.sip
async def test_edge_auth_failures_and_bans_in_a_real_stacks_metrics(
    tmp_path: Path, app: AppServer
) -> None:
    """The whole stack as `make run` runs it: Kamailio's log lines reach the gateway's
    metrics."""
    from gateway.edge.users import UserStore
    from tests.edge_stack import SipClient, start_stack

    s = await start_stack(tmp_path, [app_config(app)], ban_after_failures=3, ban_s=30,
                          failure_window_s=30)
    try:
        UserStore(s.users_db, "minivoice").add("alice", "correct-horse-42")
        attacker = SipClient(("127.0.0.1", s.edge_port), "127.0.0.61")
        for _ in range(3):
            attacker.register("alice", "wrong-password-1")
        attacker.close()
        await s.edge_logged("edge.ban src=127.0.0.61 ")

        async def moved() -> Samples | None:
            got = parse((await scrape(s.gw, None))[2])  # no tokens: open on loopback
            return got if value(got, "minivoice_edge_bans_total",
                                reason="auth_failures") == 1 else None

        got = await eventually(moved, timeout=10, interval=0.2)
        assert value(got, "minivoice_edge_auth_failures_total") == 3
    finally:
        code = s.gw.stop()
        log = s.gw.log()
        assert "Traceback" not in log, log[-4000:]
        assert code == 0, log[-3000:]
