"""`python -m bench.outbox`: the webhook outbox under a dead receiver, in one process.

    .venv/bin/python -m bench.outbox                      # 200k pending events, refused
    .venv/bin/python -m bench.outbox --dead hang          # the dead receiver accepts, never answers
    .venv/bin/python -m bench.outbox --only sync          # synchronous=FULL vs NORMAL

Phases:
1. dead: `--events` events (one per call) are queued for a receiver that refuses connections
   (or accepts and never answers), then the outbox runs for `--window` seconds while another
   customer gets an event every 100 ms on a healthy receiver. Measured: event-loop lag (a
   5 ms sleep's overshoot, p50/p99/max) and the healthy events' enqueue -> arrival latency.
2. records: `--records` finished calls over 100 customers; `calls_recent(50, customer)` (the
   query behind `GET /v1/calls?state=ended`) timed.
3. sync: `--sync-events` events queued at once and delivered to a healthy receiver, with
   SQLite synchronous=NORMAL and FULL: time until all arrived, and the loop time enqueue took;
   then `--sync-seconds` at `--sync-rate` events/s: enqueue -> arrival latency.

Receivers run on their own thread and event loop, so a stalled gateway loop never delays the
moment an arrival is stamped. Prints one JSON document (and writes it with --json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.config import Application, HooksConfig
from gateway.logs import KeyValueFormatter
from gateway.outbox import Outbox
from gateway.store import Store, Synchronous
from gateway.timestamps import iso

SECRET = "bench-secret-0123456789"
DEAD_APP = Application(id="app_dead", customer_id="cust_dead", answer_url="http://127.0.0.1:9/a",
                       secret=SECRET)
LIVE_APP = Application(id="app_live", customer_id="cust_live", answer_url="http://127.0.0.1:9/a",
                       secret=SECRET)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def payload(app: Application, call_id: str, event: str = "call.completed") -> dict[str, Any]:
    return {"event": event, "created_at": "2026-11-24T00:00:00Z",
            "call": {"id": call_id, "customer_id": app.customer_id, "application_id": app.id,
                     "status": "completed", "direction": "inbound", "from": "+15550000001",
                     "to": "1001"},
            "variables": {}, "data": {"duration_s": 1.0}}


class Receivers:
    """A healthy receiver and a hanging one, on a thread with its own loop."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.loop = asyncio.new_event_loop()
        self.live_port = 0
        self.hang_port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="receivers", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.run_forever()

    async def _serve(self) -> None:
        async def events(request: web.Request) -> web.Response:
            await request.read()
            self.arrivals.setdefault(request.headers["MiniVoice-Event-Id"], time.time())
            return web.Response(status=204)

        app = web.Application()
        app.add_routes([web.post("/events", events)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.live_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(65536):
                pass  # read the request, never answer
            writer.close()

        self._hang = await asyncio.start_server(hang, "127.0.0.1", 0, backlog=4096)
        self.hang_port = self._hang.sockets[0].getsockname()[1]
        self._ready.set()

    def stop(self) -> None:
        async def down() -> None:
            self._hang.close()
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def refused_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class LagMonitor:
    """Overshoot of a 5 ms sleep: how long the loop was busy with something else."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(0.005)
            self.samples.append(time.monotonic() - t0 - 0.005)

    def start(self) -> None:
        self.samples.clear()
        self._task = asyncio.create_task(self._run())

    def stop(self) -> dict[str, Any]:
        if self._task:
            self._task.cancel()
        s = self.samples
        return {"samples": len(s), "p50_ms": ms(pct(s, 0.5)), "p99_ms": ms(pct(s, 0.99)),
                "max_ms": ms(max(s, default=None))}


def make_outbox(store: Store, http: aiohttp.ClientSession, apps: tuple[Application, ...],
                synchronous: Synchronous = "FULL") -> Outbox:
    return Outbox(store, http, HooksConfig(), apps, synchronous=synchronous)


def enqueue(outbox: Outbox, app: Application, url: str, call_id: str) -> str:
    event_id = outbox.add(call_id, url, app.id, payload(app, call_id))
    assert event_id is not None, "the outbox dropped an event: raise its limits"
    return event_id


async def settle(outbox: Outbox) -> None:
    """Wait until everything enqueued so far is in SQLite."""
    await outbox.flushed()


async def phase_dead(args: argparse.Namespace, work: Path, rx: Receivers) -> dict[str, Any]:
    dead_port = rx.hang_port if args.dead == "hang" else refused_port()
    dead_url = f"http://127.0.0.1:{dead_port}/events"
    live_url = f"http://127.0.0.1:{rx.live_port}/events"
    store = Store(work / "dead.db")
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    outbox = make_outbox(store, http, (DEAD_APP, LIVE_APP))
    t0 = time.monotonic()
    for i in range(args.events):
        enqueue(outbox, DEAD_APP, dead_url, f"call_dead_{i:07d}")
        if i % 5000 == 4999:
            await settle(outbox)
    await settle(outbox)
    fill_s = time.monotonic() - t0

    lag = LagMonitor()
    lag.start()
    runner = asyncio.create_task(outbox.run())
    sent: dict[str, float] = {}
    deadline = time.monotonic() + args.window
    i = 0
    while time.monotonic() < deadline:
        sent[enqueue(outbox, LIVE_APP, live_url, f"call_live_{i:05d}")] = time.time()
        i += 1
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)  # the last ones get the same 2 s
    lag_stats = lag.stop()
    await outbox.stop()
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await http.close()
    tried, attempts = store.db.execute(
        "SELECT count(*), coalesce(sum(attempts), 0) FROM outbox WHERE url = ? AND attempts > 0",
        (dead_url,)).fetchone()
    store.close()
    latencies = [rx.arrivals[e] - t for e, t in sent.items() if e in rx.arrivals]
    return {
        "dead": args.dead, "pending_dead_events": args.events, "fill_s": round(fill_s, 1),
        "window_s": args.window, "loop_lag": lag_stats,
        "dead_receiver": {"events_tried": tried, "attempts": attempts},
        "live": {"sent": len(sent), "arrived": len(latencies),
                 "p50_ms": ms(pct(latencies, 0.5)), "p99_ms": ms(pct(latencies, 0.99)),
                 "max_ms": ms(max(latencies, default=None)),
                 "within_2s": sum(1 for v in latencies if v <= 2.0)},
    }


def phase_records(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    store = Store(work / "records.db")
    timeline = [{"at": "2026-11-24T00:00:00Z", "event": f"step{i}"} for i in range(8)]
    t0 = time.monotonic()
    for i in range(args.records):
        cid = f"call_rec_{i:07d}"
        store.call_save(cid, {"id": cid, "customer_id": f"cust_{i % 100:03d}",
                              "status": "completed", "timeline": timeline})
    fill_s = time.monotonic() - t0
    times: list[float] = []
    for j in range(20):
        t = time.perf_counter()
        rows = store.calls_recent(50, f"cust_{j % 100:03d}")
        times.append(time.perf_counter() - t)
        assert len(rows) == min(50, args.records // 100 + (1 if j < args.records % 100 else 0))
    admin: list[float] = []
    for _ in range(5):
        t = time.perf_counter()
        store.calls_recent(50)
        admin.append(time.perf_counter() - t)
    store.close()
    return {"records": args.records, "fill_s": round(fill_s, 1),
            "customer_query_p50_ms": ms(statistics.median(times)),
            "customer_query_max_ms": ms(max(times)),
            "admin_query_p50_ms": ms(statistics.median(admin))}


async def phase_sync(args: argparse.Namespace, work: Path, rx: Receivers) -> dict[str, Any]:
    live_url = f"http://127.0.0.1:{rx.live_port}/events"
    out: dict[str, Any] = {"events": args.sync_events}
    modes: tuple[Synchronous, ...] = ("NORMAL", "FULL")
    for mode in modes:
        store = open_store(work / f"sync-{mode}.db", mode)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        outbox = make_outbox(store, http, (LIVE_APP,), mode)
        runner = asyncio.create_task(outbox.run())
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        loop_s = 0.0
        ids: list[str] = []
        for i in range(args.sync_events):
            t = time.perf_counter()
            ids.append(enqueue(outbox, LIVE_APP, live_url, f"call_sync_{mode}_{i:06d}"))
            loop_s += time.perf_counter() - t
            if i % 20 == 19:
                await asyncio.sleep(0)  # calls end a few at a time, not all in one tick
        while not all(e in rx.arrivals for e in ids):
            if time.monotonic() - t0 > 120:
                break
            await asyncio.sleep(0.01)
        total = time.monotonic() - t0
        # Paced: the same path at a steady rate, where a commit's fsync shows as latency.
        paced: dict[str, float] = {}
        lag = LagMonitor()
        lag.start()
        for i in range(int(args.sync_rate * args.sync_seconds)):
            paced[enqueue(outbox, LIVE_APP, live_url, f"call_paced_{mode}_{i:06d}")] = \
                time.time()
            await asyncio.sleep(1 / args.sync_rate)
        await asyncio.sleep(1.0)
        paced_lag = lag.stop()
        waits = [rx.arrivals[e] - t for e, t in paced.items() if e in rx.arrivals]
        await outbox.stop()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await http.close()
        store.close()
        out[mode] = {"all_delivered_s": round(total, 2),
                     "delivered": sum(1 for e in ids if e in rx.arrivals),
                     "events_per_s": round(len(ids) / total),
                     "enqueue_loop_us_per_event": round(loop_s / len(ids) * 1e6, 1),
                     "paced": {"rate_per_s": args.sync_rate, "sent": len(paced),
                               "arrived": len(waits), "p50_ms": ms(pct(waits, 0.5)),
                               "p99_ms": ms(pct(waits, 0.99)),
                               "loop_lag_p99_ms": paced_lag["p99_ms"]}}
    return out


def open_store(path: Path, synchronous: Synchronous) -> Store:
    return Store(path, synchronous=synchronous)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.outbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000, help="dead receiver's events (200000)")
    p.add_argument("--dead", choices=["refused", "hang"], default="refused")
    p.add_argument("--window", type=float, default=15.0, help="seconds measured (15)")
    p.add_argument("--records", type=int, default=200_000, help="finished calls (200000)")
    p.add_argument("--sync-events", type=int, default=2000, help="events per sync mode (2000)")
    p.add_argument("--sync-rate", type=float, default=200.0,
                   help="events per second in the paced part of the sync phase (200)")
    p.add_argument("--sync-seconds", type=float, default=5.0,
                   help="seconds of the paced part (5)")
    p.add_argument("--only", choices=["dead", "records", "sync"], action="append")
    p.add_argument("--dir", type=Path, help="where the SQLite files go (a temporary directory)")
    p.add_argument("--json", type=Path, help="also write the result here")
    return p


async def _main(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    phases: set[str] = set(args.only or ["dead", "records", "sync"])
    result: dict[str, Any] = {"started": iso()}
    rx = Receivers()
    rx.start()
    try:
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("dead", lambda: phase_dead(args, work, rx)),
            ("records", lambda: asyncio.to_thread(phase_records, args, work)),
            ("sync", lambda: phase_sync(args, work, rx)),
        ]
        for name, step in steps:
            if name in phases:
                result[name] = await step()
                print(json.dumps({name: result[name]}), flush=True)
    finally:
        rx.stop()
    return result


def main() -> None:
    args = _parser().parse_args()
    # The gateway logs every webhook at INFO; keep that cost, send the text nowhere.
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    handler.setFormatter(KeyValueFormatter())
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="bench-outbox-",
                                     dir=args.dir) as tmp:
        result = asyncio.run(_main(args, Path(tmp)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
