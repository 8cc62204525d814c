"""The webhook outbox against real HTTP receivers (healthy, failing, refusing, hanging) and a
real SQLite file: fairness between destinations, secrets looked up at send time, limits,
give-up and restart. Timing targets are the benchmark's (bench/outbox.py); these tests
only wait, generously, for things to happen."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway import signing
from gateway.config import Application, HooksConfig
from gateway.outbox import Outbox
from gateway.store import NewEvent, Store, Synchronous
from tests.httpkit import serve
from tests.waiting import eventually

SECRET = "app-one-signing-secret"
APP1 = Application(id="app_1", customer_id="cust_1", answer_url="http://127.0.0.1:9/a",
                   secret=SECRET)
APP2 = Application(id="app_2", customer_id="cust_2", answer_url="http://127.0.0.1:9/a",
                   secret="app-two-signing-secret")


class Receiver:
    """A real HTTP receiver: records each request; answers `status`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], bytes, dict[str, str]]] = []
        self.status = 204
        self.port = 0

    async def start(self) -> web.AppRunner:
        async def events(request: web.Request) -> web.Response:
            raw = await request.read()
            self.requests.append((request.headers["MiniVoice-Event-Id"], json.loads(raw), raw,
                                  dict(request.headers)))
            return web.Response(status=self.status)

        app = web.Application()
        app.add_routes([web.post("/events", events)])
        runner, self.port = await serve(app)
        return runner

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def events(self) -> list[str]:
        return [r[1]["event"] for r in self.requests]


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    r = Receiver()
    runner = await r.start()
    yield r
    await runner.cleanup()


class Hanging:
    """Accepts connections, reads the request, never answers; counts open connections."""

    def __init__(self) -> None:
        self.open = 0
        self.most = 0

    async def start(self) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.open += 1
            self.most = max(self.most, self.open)
            try:
                while await reader.read(65536):
                    pass
            finally:
                self.open -= 1
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self.server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/events"


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/events"


def payload(app: Application, call_id: str, event: str = "call.completed") -> dict[str, Any]:
    return {"event": event, "call": {"id": call_id, "application_id": app.id,
                                     "customer_id": app.customer_id}, "data": {}}


def queued(eid: str | None) -> str:
    """The ID of an event the outbox took (add() gives None only when it drops one)."""
    assert eid is not None, "the outbox dropped the event"
    return eid


class Running:
    """An Outbox with its worker running, on a real SQLite file."""

    def __init__(self, path: Path, apps: tuple[Application, ...] = (APP1, APP2),
                 cfg: HooksConfig | None = None, **kw: Any) -> None:
        self.path, self.apps, self.cfg, self.kw = path, apps, cfg or HooksConfig(), kw

    async def __aenter__(self) -> Outbox:
        self.store = Store(self.path)
        self.http = aiohttp.ClientSession()
        self.outbox = Outbox(self.store, self.http, self.cfg, self.apps, **self.kw)
        self.task = asyncio.create_task(self.outbox.run())
        return self.outbox

    async def __aexit__(self, *exc: object) -> None:
        await self.outbox.stop()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.http.close()
        self.store.close()


async def test_a_hanging_receiver_does_not_hold_up_another_customer(
    tmp_path: Path, rx: Receiver
) -> None:
    hang = Hanging()
    server = await hang.start()
    dead_refused = refused_url()
    async with Running(tmp_path / "o.db", per_host=3) as outbox:
        for i in range(300):
            outbox.add(f"call_h{i}", hang.url, APP2.id, payload(APP2, f"call_h{i}"))
            outbox.add(f"call_r{i}", dead_refused, APP2.id, payload(APP2, f"call_r{i}"))
        await outbox.flushed()
        await eventually(lambda: hang.open >= 3, timeout=20)
        eid = outbox.add("call_ok", rx.url, APP1.id, payload(APP1, "call_ok"))
        # Before per-destination caps this waited for 600 dead events to time out first.
        await eventually(lambda: any(r[0] == eid for r in rx.requests), timeout=20)
        assert hang.most <= 3  # the hanging receiver never had more than its share
    server.close()


async def test_secret_is_looked_up_at_send_time_and_never_stored(
    tmp_path: Path, rx: Receiver
) -> None:
    path = tmp_path / "s.db"
    async with Running(path) as outbox:
        eid = outbox.add("call_1", rx.url, APP1.id, payload(APP1, "call_1"))
        await eventually(lambda: len(rx.requests) == 1, timeout=20)
    got_id, _, raw, headers = rx.requests[0]
    assert got_id == eid and headers["MiniVoice-Call-Id"] == "call_1"
    assert signing.verify(SECRET, raw, headers[signing.HEADER])
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("s.db"))
    assert b"call_1" in data and SECRET.encode() not in data


async def test_an_unconfigured_application_is_retried_then_sent_when_configured(
    tmp_path: Path, rx: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "u.db"
    caplog.set_level(logging.WARNING, "minivoice.webhook")
    async with Running(path, apps=(APP2,)) as outbox:
        eid = queued(outbox.add("call_1", rx.url, APP1.id, payload(APP1, "call_1")))
        await eventually(
            lambda: any(r.getMessage() == "webhook.failed" for r in caplog.records), timeout=20)
        assert outbox.pending_count() == 1
    assert rx.requests == []  # never sent unsigned, nor signed with another app's secret
    failed = next(r for r in caplog.records if r.getMessage() == "webhook.failed")
    assert "not configured" in failed.__dict__["error"] and not failed.__dict__["given_up"]
    row = Store(path).outbox_row(eid)
    assert row is not None and row["state"] == "pending" and row["attempts"] >= 1
    async with Running(path, apps=(APP1,)) as outbox:  # the application is back
        await eventually(lambda: len(rx.requests) == 1, timeout=30)
    assert rx.requests[0][0] == eid
    assert signing.verify(SECRET, rx.requests[0][2], rx.requests[0][3][signing.HEADER])


async def test_a_redirect_is_a_failed_delivery_and_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hits: dict[str, int] = {"events": 0, "elsewhere": 0}

    async def events(request: web.Request) -> web.Response:
        hits["events"] += 1
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        hits["elsewhere"] += 1
        return web.Response(status=204)

    app = web.Application()
    app.add_routes([web.post("/events", events), web.route("*", "/elsewhere", elsewhere)])
    runner, port = await serve(app)
    url = f"http://127.0.0.1:{port}/events"
    caplog.set_level(logging.WARNING, "minivoice.webhook")
    try:
        async with Running(tmp_path / "x.db") as outbox:
            outbox.add("call_1", url, APP1.id, payload(APP1, "call_1"))
            await eventually(
            lambda: any(r.getMessage() == "webhook.failed" for r in caplog.records), timeout=20)
            assert outbox.pending_count() == 1  # kept, to be retried
    finally:
        await runner.cleanup()
    failed = next(r for r in caplog.records if r.getMessage() == "webhook.failed")
    assert failed.__dict__["error"] == "HTTP 302" and not failed.__dict__["given_up"]
    assert hits["events"] >= 1 and hits["elsewhere"] == 0  # the Location never got it


async def test_per_call_order_and_stable_ids_across_retries_and_restart(
    tmp_path: Path, rx: Receiver
) -> None:
    path = tmp_path / "r.db"
    rx.status = 503
    async with Running(path) as outbox:
        ids = [outbox.add("call_1", rx.url, APP1.id, payload(APP1, "call_1", e))
               for e in ("call.initiated", "call.answered", "call.completed")]
        other = outbox.add("call_2", rx.url, APP1.id, payload(APP1, "call_2"))
        await eventually(lambda: len(rx.requests) >= 3, timeout=20)
    # only each call's first event was ever tried: order holds while failing
    assert {r[0] for r in rx.requests} <= {ids[0], other}
    rx.status = 204
    rx.requests.clear()
    async with Running(path) as outbox:  # a restart: the same file, a new worker
        await eventually(lambda: len(rx.requests) == 4, timeout=30)
        # the receiver has the 4th request a moment before the outbox records its 204
        await eventually(lambda: outbox.pending_count() == 0, timeout=10)
    mine = [r[0] for r in rx.requests if r[1]["call"]["id"] == "call_1"]
    assert mine == ids


async def test_give_up_marks_dead_and_the_call_moves_on(tmp_path: Path, rx: Receiver) -> None:
    path = tmp_path / "g.db"
    store = Store(path)
    old = time.time() - 7200  # older than the give-up age below
    body = json.dumps(payload(APP1, "call_1", "call.initiated")).encode()
    store.outbox_apply([NewEvent("evt_old", "call_1", rx.url, APP1.id, body, old)], [])
    store.close()
    rx.status = 500
    cfg = HooksConfig(webhook_give_up_after_s=3600)
    async with Running(path, cfg=cfg, dead_keep_s=60.0) as outbox:
        await eventually(lambda: len(rx.requests) == 1, timeout=20)
        await eventually(lambda: outbox.pending_count() == 0, timeout=20)
        rx.status = 204
        nxt = outbox.add("call_1", rx.url, APP1.id, payload(APP1, "call_1"))
        await eventually(lambda: len(rx.requests) == 2, timeout=20)
        assert rx.requests[1][0] == nxt
        await outbox.flushed()
        assert await outbox.prune(now=time.time() + 30) == 0  # dead kept dead_keep_s
        assert await outbox.prune(now=time.time() + 120) == 1
        assert await outbox.prune(now=time.time() + 86400 + 120) == 1  # delivered: a day
    check = Store(path)
    assert check.outbox_row("evt_old") is None and check.outbox_row(nxt) is None
    check.close()


async def test_the_table_and_the_write_buffer_have_limits(
    tmp_path: Path, rx: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "minivoice.webhook")
    rx.status = 503
    async with Running(tmp_path / "lim.db", max_pending=5, max_unsaved=3) as outbox:
        for i in range(4):  # one loop tick: nothing is written yet
            outbox.add(f"call_{i}", rx.url, APP1.id, payload(APP1, f"call_{i}"))
        await outbox.flushed()
        assert outbox.pending_count() == 3
        for i in range(4, 8):
            outbox.add(f"call_{i}", rx.url, APP1.id, payload(APP1, f"call_{i}"))
            await outbox.flushed()
        assert outbox.pending_count() == 5
    dropped = [r for r in caplog.records if r.getMessage() == "webhook.dropped"]
    assert [r.__dict__["call_id"] for r in dropped] == ["call_3", "call_6", "call_7"]
    store = Store(tmp_path / "lim.db")
    assert store.outbox_pending_count() == 5
    store.close()


async def test_sqlite_never_runs_on_the_event_loop_thread(tmp_path: Path, rx: Receiver) -> None:
    """The outbox's queries and commits all happen on its own thread and connection."""
    threads: set[str] = set()

    class Watched(Store):
        def reopen(self, synchronous: Synchronous | None = None) -> Store:
            inner = super().reopen(synchronous)
            real = inner.db

            class Conn:
                def execute(self, sql: str, *a: Any) -> Any:
                    threads.add(threading.current_thread().name)
                    return real.execute(sql, *a)

                def __getattr__(self, name: str) -> Any:
                    return getattr(real, name)

            inner.db = Conn()  # type: ignore[assignment]
            return inner

    store = Watched(tmp_path / "t.db")
    http = aiohttp.ClientSession()
    outbox = Outbox(store, http, HooksConfig(), (APP1,))
    # checkpoints (a copy and an fsync) are the outbox thread's too, not the loop's
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    task = asyncio.create_task(outbox.run())
    for i in range(20):
        outbox.add(f"call_{i}", rx.url, APP1.id, payload(APP1, f"call_{i}"))
    await eventually(lambda: len(rx.requests) == 20, timeout=20)
    await outbox.prune()
    await outbox._in_db(outbox._checkpoint)
    await outbox.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await http.close()
    store.close()
    assert threads and all(t.startswith("outbox-db") for t in threads), threads


async def test_a_busy_receiver_gets_more_slots_and_a_dead_one_fewer(tmp_path: Path) -> None:
    active = {"now": 0, "most": 0}
    done: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        active["now"] += 1
        active["most"] = max(active["most"], active["now"])
        await asyncio.sleep(0.1)
        active["now"] -= 1
        done.append(request.headers["MiniVoice-Event-Id"])
        return web.Response(status=204)

    app = web.Application()
    app.add_routes([web.post("/events", slow)])
    runner, port = await serve(app)
    url = f"http://127.0.0.1:{port}/events"
    hang = Hanging()
    server = await hang.start()
    cfg = HooksConfig(total_timeout_s=0.3, connect_timeout_s=0.3)
    async with Running(tmp_path / "b.db", cfg=cfg, per_host=16) as outbox:
        for i in range(300):
            outbox.add(f"call_s{i}", url, APP1.id, payload(APP1, f"call_s{i}"))
            outbox.add(f"call_h{i}", hang.url, APP2.id, payload(APP2, f"call_h{i}"))
        await eventually(lambda: len(done) == 300, timeout=20)
        late = hang.most
        hang.most = hang.open
        await asyncio.sleep(1.0)  # the hanging receiver, after its first timeouts
    assert active["most"] == 16, active  # grew from 4 to the cap
    assert late <= 4 and hang.most <= 2, (late, hang.most)
    server.close()
    await runner.cleanup()


async def test_a_call_whose_events_go_to_two_receivers_keeps_order_and_loses_none(
    tmp_path: Path, rx: Receiver
) -> None:
    """The second receiver has nothing to send until the first delivers: it must still be
    looked at again when the call's head passes to its event."""
    other = Receiver()
    runner = await other.start()
    rx.status = 503
    async with Running(tmp_path / "two.db") as outbox:
        first = outbox.add("call_1", rx.url, APP1.id, payload(APP1, "call_1", "call.answered"))
        second = outbox.add("call_1", other.url, APP1.id, payload(APP1, "call_1"))
        await eventually(lambda: len(rx.requests) >= 1, timeout=20)
        await asyncio.sleep(0.3)  # rounds that find nothing due at `other`
        assert other.requests == []
        rx.status = 204
        await eventually(lambda: [r[0] for r in other.requests] == [second], timeout=30)
        assert rx.requests[-1][0] == first
    await runner.cleanup()


async def test_commits_are_shared_under_load_and_a_burst_is_not_held_back(
        tmp_path: Path, rx: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events enqueued a few at a time (calls at a steady rate) share commits, spaced
    COALESCE_S apart; a burst of a thousand is committed and delivered in big batches, and
    every event arrives exactly once, in order per call. Counted, not timed: the commits
    (transactions on the outbox's thread) per event; the burst must merely finish within a
    generous timeout that commits spaced 5 s apart could not meet."""
    from gateway import outbox as outbox_mod

    monkeypatch.setattr(outbox_mod, "COALESCE_S", 0.05)  # wide: a loaded box still batches
    batches: list[tuple[int, int]] = []  # (events, results) per commit
    real_apply = Outbox._apply

    def counting(self: Outbox, adds: list[NewEvent], outcomes: list[Any]) -> set[str]:
        batches.append((len(adds), len(outcomes)))
        return real_apply(self, adds, outcomes)

    monkeypatch.setattr(Outbox, "_apply", counting)
    async with Running(tmp_path / "o.db") as ob:
        paced = []
        for i in range(60):  # 3 events every 5 ms: well inside one 50 ms interval each
            for event in ("call.initiated", "call.answered", "call.completed"):
                paced.append(queued(ob.add(f"call_p{i}", rx.url, APP1.id,
                                           payload(APP1, f"call_p{i}", event))))
            await asyncio.sleep(0.005)
        await eventually(lambda: len(rx.requests) == 180, timeout=60)
        paced_commits = len(batches)
        # 180 events and 180 results: one commit each without the spacing (360)
        assert paced_commits < 180 / 2, batches
        batches.clear()
        # Spaced 5 s apart, a thousand events at PER_HOST per commit would take minutes:
        # they arrive within the wait below only because a burst does not wait.
        monkeypatch.setattr(outbox_mod, "COALESCE_S", 5.0)
        burst = [queued(ob.add(f"call_b{i}", rx.url, APP1.id, payload(APP1, f"call_b{i}")))
                 for i in range(1000)]
        await eventually(lambda: len(rx.requests) == 1180, timeout=60)
        assert sum(a for a, _ in batches) == 1000
    ids = [r[0] for r in rx.requests]
    assert sorted(ids) == sorted(paced + burst) and len(set(ids)) == 1180
    for i in range(60):
        assert [r[1]["event"] for r in rx.requests if r[1]["call"]["id"] == f"call_p{i}"] == [
            "call.initiated", "call.answered", "call.completed"]
