"""Prometheus metrics: `GET /metrics` in the text format, from the prometheus-client library.

One `Metrics` per gateway, with its own registry (never the library's global one), so a test
process can run several gateways. Two kinds of numbers:

- counters and histograms, moved where things happen: a call ends (outcome, RTP packets from
  its quality), an answer_url request returns, a webhook delivery fails, a final response to
  an INVITE goes out, a line from the SIP edge says it refused a password or banned a source;
- gauges of current sizes, read at scrape time by a collector from callables the gateway
  hands in (`Live`). Each is a len() or an attribute: nothing iterates over calls, rooms or
  events on a scrape. The webhook backlog by destination is the one number that needs a
  query; the outbox refreshes it on its own thread every few seconds and the scrape reads the
  copy (gateway/outbox.py, `backlog`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from media.quality import CallQuality

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LOOP_PROBE_S = 0.25  # how often the event-loop lag probe wakes up
# Bounded label sets: a status code or a destination is not free text from the network.
MAX_DESTINATIONS = 200  # webhook destinations (scheme://host:port) with their own series
OTHER = "other"


@dataclass(frozen=True)
class Backlog:
    """The outbox's pending events, as of `at` (time.time())."""

    at: float = 0.0
    oldest_created_at: float | None = None
    by_destination: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Live:
    """Where the collector reads current sizes. Every callable must be O(1)."""

    calls: Callable[[], tuple[int, int]]  # (inbound, outbound) sessions
    sip_legs: Callable[[], int]  # call objects alive on the SIP thread
    rooms: Callable[[], int]
    participants: Callable[[], int]
    webhooks_pending: Callable[[], int]
    webhook_backlog: Callable[[], Backlog]
    sip_loop_age: Callable[[], float]  # seconds since the SIP thread's loop last turned
    accepting: Callable[[], bool]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls_completed = Counter(
            "minivoice_calls_completed", "Calls that ended, by direction and final status "
            "(completed, failed, busy, no-answer, canceled).", ["direction", "status"],
            registry=r)
        self.sip_responses = Counter(
            "minivoice_sip_responses_sent", "Final responses the gateway sent to INVITEs, by "
            "SIP status code.", ["code"], registry=r)
        self.rtp_received = Counter(
            "minivoice_rtp_packets_received", "RTP packets received from callers, summed "
            "when each call ends.", registry=r)
        self.rtp_lost = Counter(
            "minivoice_rtp_packets_lost", "RTP packets lost on the way from callers "
            "(sequence gaps), summed when each call ends.", registry=r)
        self.answer_url = Histogram(
            "minivoice_answer_url_seconds", "Time of one request for actions (answer_url, "
            "fallback_url, action_url, redirect) until its answer or failure.",
            ["kind", "outcome"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.webhook_results = Counter(
            "minivoice_webhook_deliveries", "Webhook delivery attempts by destination "
            "(scheme://host:port) and result (delivered, failed).",
            ["destination", "result"], registry=r)
        self.loop_lag = Histogram(
            "minivoice_event_loop_lag_seconds", "How late the asyncio loop ran a timer "
            f"(probed every {LOOP_PROBE_S} s).", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0))
        self.edge_auth_failures = Counter(
            "minivoice_edge_auth_failures", "Digest answers the SIP edge checked and "
            "refused (wrong user or password).", registry=r)
        self.edge_bans = Counter(
            "minivoice_edge_bans", "Sources the SIP edge banned, by reason (flood, "
            "auth_failures).", ["reason"], registry=r)
        self._destinations: set[str] = set()
        self._live: _LiveCollector | None = None

    def watch(self, live: Live) -> None:
        """Read current sizes from `live` at every scrape."""
        if self._live is not None:
            self.registry.unregister(self._live)
        self._live = _LiveCollector(live)
        self.registry.register(self._live)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- events -------------------------------------------------------------------------
    def call_ended(self, direction: str, status: str) -> None:
        self.calls_completed.labels(direction, status).inc()

    def sip_final(self, code: int | None, quality: CallQuality | None) -> None:
        """A call's SIP leg ended: the response its INVITE got from us, its RTP counts."""
        if code is not None and 100 <= code <= 699:
            self.sip_responses.labels(str(code)).inc()
        if quality is not None:
            self.rtp_received.inc(quality.packets_received)
            self.rtp_lost.inc(quality.packets_lost)

    def hook_done(self, kind: str, seconds: float, ok: bool) -> None:
        self.answer_url.labels(kind, "ok" if ok else "error").observe(max(seconds, 0.0))

    def webhook_result(self, destination: str, ok: bool) -> None:
        self.webhook_results.labels(self._destination(destination),
                                    "delivered" if ok else "failed").inc()

    def edge_event(self, event: str, fields: dict[str, str]) -> None:
        """A line of the SIP edge's log (gateway/edge.py reads them all)."""
        if event == "edge.auth_failed" and fields.get("counted") != "no":
            self.edge_auth_failures.inc()
        elif event == "edge.ban":
            reason = fields.get("reason", "")
            self.edge_bans.labels(reason if reason in ("flood", "auth_failures")
                                  else OTHER).inc()

    def _destination(self, name: str) -> str:
        if name in self._destinations:
            return name
        if len(self._destinations) >= MAX_DESTINATIONS:
            return OTHER
        self._destinations.add(name)
        return name

    async def probe_loop_lag(self, period: float = LOOP_PROBE_S) -> None:
        """Forever: sleep `period` and record how much later than asked the loop woke us."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(period)
            self.loop_lag.observe(max(0.0, loop.time() - start - period))


class _LiveCollector(Collector):
    def __init__(self, live: Live) -> None:
        self.live = live

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: the collector's names are its own, and it reads live state

    def collect(self) -> Iterator[Metric]:
        lv = self.live
        inbound, outbound = lv.calls()
        calls = GaugeMetricFamily("minivoice_calls_active", "Calls in progress (inbound "
                                  "calls and outbound legs), by direction.",
                                  labels=["direction"])
        calls.add_metric(["inbound"], inbound)
        calls.add_metric(["outbound"], outbound)
        yield calls
        yield GaugeMetricFamily("minivoice_sip_legs", "SIP call legs alive in the SIP stack "
                                "(includes calls being rejected).", value=lv.sip_legs())
        yield GaugeMetricFamily("minivoice_rooms", "Conference rooms with at least one "
                                "participant.", value=lv.rooms())
        yield GaugeMetricFamily("minivoice_room_participants", "Callers in conference rooms.",
                                value=lv.participants())
        yield GaugeMetricFamily("minivoice_webhooks_pending", "Webhook events not yet "
                                "delivered or given up.", value=lv.webhooks_pending())
        backlog = lv.webhook_backlog()
        oldest = (max(0.0, time.time() - backlog.oldest_created_at)
                  if backlog.oldest_created_at is not None else 0.0)
        yield GaugeMetricFamily("minivoice_webhooks_oldest_pending_seconds", "Age of the "
                                "oldest pending webhook event (0 with none; refreshed every "
                                "few seconds).", value=oldest)
        by_dest = GaugeMetricFamily("minivoice_webhooks_pending_by_destination", "Pending "
                                    "webhook events by destination (refreshed every few "
                                    "seconds).", labels=["destination"])
        for dest, count in backlog.by_destination:
            by_dest.add_metric([dest], count)
        yield by_dest
        yield GaugeMetricFamily("minivoice_sip_loop_lag_seconds", "Seconds since the SIP "
                                "thread's event loop last turned (it turns every few ms; "
                                "the watchdog exits at sip.watchdog_s).",
                                value=max(0.0, lv.sip_loop_age()))
        yield GaugeMetricFamily("minivoice_accepting_calls", "1 while new calls are "
                                "accepted, 0 while shutting down.",
                                value=1.0 if lv.accepting() else 0.0)
