"""Durable, ordered, at-least-once webhook delivery (CONTRACT section 5).

Every event is written to SQLite before any attempt. The worker sends only the
oldest pending event of each call, so one call's events arrive in order while
different calls proceed in parallel. Failures back off exponentially (1 s
doubling, capped); an event is given up only after `give_up_after_s`.
Pending events survive a crash: the worker picks them up on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import Any

import aiohttp

from gateway import USER_AGENT, signing
from gateway.config import HooksConfig
from gateway.store import OutboxRow, Store

log = logging.getLogger("minivoice.webhook")

MAX_IN_FLIGHT = 64


def backoff_s(attempts: int, cap_s: float) -> float:
    """Delay before retry number `attempts` (1-based): 1, 2, 4, ... capped."""
    return float(min(cap_s, 2 ** max(0, attempts - 1)))


class Outbox:
    def __init__(self, store: Store, http: aiohttp.ClientSession, cfg: HooksConfig) -> None:
        self.store = store
        self.http = http
        self.cfg = cfg
        self._wake = asyncio.Event()
        self._in_flight: set[str] = set()  # call IDs with a delivery under way
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def enqueue(self, call_id: str, url: str, secret: str, payload: dict[str, Any]) -> str:
        event_id = "evt_" + secrets.token_urlsafe(16)
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.store.outbox_add(event_id, call_id, url, secret, body, time.time())
        log.info(payload["event"], extra={"call_id": call_id, "event_id": event_id,
                                          "url": url, "queued": True})
        self._wake.set()
        return event_id

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            delay = self._dispatch_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def _dispatch_due(self) -> float:
        """Start deliveries that are due; return seconds until the next one is."""
        now = time.time()
        next_due = 60.0
        for row in self.store.outbox_heads():
            if row.call_id in self._in_flight:
                continue
            if row.next_at > now:
                next_due = min(next_due, row.next_at - now)
                continue
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                break
            self._in_flight.add(row.call_id)
            task = asyncio.create_task(self._deliver(row))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return max(0.01, next_due)

    async def _deliver(self, row: OutboxRow) -> None:
        error = ""
        try:
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "MiniVoice-Event-Id": row.event_id,
                "MiniVoice-Call-Id": row.call_id,
                signing.HEADER: signing.sign(row.secret, row.body),
            }
            timeout = aiohttp.ClientTimeout(
                total=self.cfg.total_timeout_s, connect=self.cfg.connect_timeout_s)
            async with self.http.post(row.url, data=row.body, headers=headers,
                                      timeout=timeout) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    self.store.outbox_delivered(row.seq)
                    log.info("webhook.delivered", extra={
                        "call_id": row.call_id, "event_id": row.event_id,
                        "attempt": row.attempts + 1, "status": resp.status})
                    return
                error = f"HTTP {resp.status}"
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # never let one event kill the worker
            error = f"{type(exc).__name__}: {exc}"
            log.exception("webhook.error", extra={"call_id": row.call_id})
        finally:
            self._in_flight.discard(row.call_id)
            self._wake.set()
        attempts = row.attempts + 1
        now = time.time()
        dead = now - row.created_at >= self.cfg.webhook_give_up_after_s
        retry_in = backoff_s(attempts, self.cfg.webhook_max_backoff_s)
        self.store.outbox_failed(row.seq, error, now + retry_in, dead)
        log.warning("webhook.failed", extra={
            "call_id": row.call_id, "event_id": row.event_id, "attempt": attempts,
            "error": error, "retry_in_s": None if dead else retry_in, "given_up": dead})

    async def drain(self, timeout: float) -> None:
        """Give pending deliveries up to `timeout` seconds (on shutdown)."""
        deadline = time.monotonic() + timeout
        while self.store.outbox_pending_count() and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
