"""Requests to the application that return actions: answer_url (and action_url/redirect).

docs/api.md sections 2-3: signed POST, connect/total timeouts, one retry on
connection error or 5xx, then `fallback_url`. Any failure becomes an
`AnswerUrlError` whose message and details go into `call.completed`.

answer_url and fallback_url come from the operator's config and are trusted. action_url and
redirect URLs come from application responses: they go through their own connection pool,
whose resolver refuses non-public addresses (`hooks.allow_private`). No request follows a
redirect: a 3xx is an error like any other non-2xx (following one would carry the signature
to wherever the Location points).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.actions.base import Action
from gateway.actions.schema import INVALID, MAX_BODY_BYTES, parse_body
from gateway.config import Config, HooksConfig
from gateway.http import signed_post
from gateway.netguard import (
    AddressPolicy,
    BlockedAddress,
    blocked_cause,
    check_url,
    guarded_session,
    redact,
)
from gateway.strict import Detail, ValidationError

log = logging.getLogger("minivoice.hooks")

LOGGED_BODY_CHARS = 2000


@dataclass
class AnswerUrlError(Exception):
    message: str
    details: tuple[Detail, ...] = ()
    retryable: bool = False
    code: str = "answer_url_error"

    def as_error(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            err["details"] = [d.as_dict() for d in self.details]
        return err


@dataclass
class HttpPools:
    """One client session per kind of traffic, each with its own connection limit: a slow
    webhook receiver or a burst of prompt downloads cannot take the connections answer_url
    needs. The two that fetch customer-supplied URLs resolve through the address guard."""

    answer: aiohttp.ClientSession    # answer_url, fallback_url (operator-configured)
    action: aiohttp.ClientSession    # action_url, redirect (from responses): guarded
    webhook: aiohttp.ClientSession   # event_url (operator-configured)
    media: aiohttp.ClientSession     # play URLs (from responses): guarded
    policy: AddressPolicy

    @classmethod
    def open(cls, cfg: Config) -> HttpPools:
        lim = cfg.limits
        policy = AddressPolicy.from_config(cfg.hooks.allow_private)
        return cls(
            answer=aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=lim.answer_connections)),
            action=guarded_session(policy, lim.action_connections),
            webhook=aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=lim.webhook_connections)),
            media=guarded_session(policy, lim.media_connections),
            policy=policy)

    async def close(self) -> None:
        for s in (self.answer, self.action, self.webhook, self.media):
            await s.close()


class HookClient:
    def __init__(self, http: aiohttp.ClientSession, cfg: HooksConfig,
                 customer_http: aiohttp.ClientSession | None = None,
                 policy: AddressPolicy | None = None) -> None:
        self.http = http  # answer_url, fallback_url
        # action_url, redirect: a session built with netguard.guarded_session(policy)
        self.customer_http = customer_http or http
        self.policy = policy or AddressPolicy.from_config(cfg.allow_private)
        self.cfg = cfg
        # (kind, seconds, ok) of every request, for /metrics
        self.observer: Callable[[str, float, bool], None] | None = None

    async def fetch_actions(
        self, urls: list[str], secret: str, payload: dict[str, Any], call_id: str,
        kind: str = "answer_url", error_code: str = "answer_url_error",
        guarded: bool | None = None,
    ) -> tuple[Action, ...]:
        """POST `payload` to urls[0] (retried once), then to each fallback in turn. URLs other
        than the configured answer_url are `guarded` (the address rules) unless told."""
        if guarded is None:
            guarded = kind != "answer_url"
        body = json.dumps(payload, separators=(",", ":")).encode()
        last: AnswerUrlError | None = None
        for url in urls:
            for attempt in (1, 2):
                started = time.monotonic()
                try:
                    actions = await self._once(url, secret, body, call_id, kind, attempt,
                                               guarded)
                    self._observe(kind, started, True)
                    return actions
                except AnswerUrlError as exc:
                    self._observe(kind, started, False)
                    exc.code = error_code
                    last = exc
                    log.warning(f"{kind}.failed", extra={
                        "call_id": call_id, "url": redact(url), "attempt": attempt,
                        "error": exc.message})
                    if not exc.retryable:
                        break
        assert last is not None
        raise last

    def _observe(self, kind: str, started: float, ok: bool) -> None:
        if self.observer is not None:
            try:
                self.observer(kind, time.monotonic() - started, ok)
            except Exception:  # metrics must never fail a call
                log.exception("hooks.observer_failed")

    async def _once(
        self, url: str, secret: str, body: bytes, call_id: str, kind: str, attempt: int,
        guarded: bool = False,
    ) -> tuple[Action, ...]:
        timeout = aiohttp.ClientTimeout(
            total=self.cfg.total_timeout_s, sock_connect=self.cfg.connect_timeout_s)
        log.info(f"{kind}.request", extra={"call_id": call_id, "url": redact(url),
                                             "attempt": attempt})
        trusted = not guarded
        http = self.http if trusted else self.customer_http
        try:
            if not trusted:
                check_url(url, self.policy)
            reply = await signed_post(http, url, body, secret, timeout=timeout,
                                      headers={"MiniVoice-Call-Id": call_id},
                                      max_body=MAX_BODY_BYTES)
        except TimeoutError:
            raise AnswerUrlError(f"{kind} timeout") from None
        except (BlockedAddress, aiohttp.ClientConnectorError) as exc:
            if blocked_cause(exc) is None:
                raise AnswerUrlError(f"{kind} connection failed", retryable=True) from None
            log.warning(f"{kind}.refused", extra={"call_id": call_id, "url": redact(url),
                                                  "reason": str(blocked_cause(exc))})
            raise AnswerUrlError(f"{kind} refused: address not allowed") from None
        except aiohttp.ClientConnectionError:
            raise AnswerUrlError(f"{kind} connection failed") from None
        except aiohttp.ClientError as exc:
            raise AnswerUrlError(f"{kind} request failed: {type(exc).__name__}") from None
        status, raw, too_large = reply.status, reply.body, reply.too_large
        shown = raw[:LOGGED_BODY_CHARS].decode("utf-8", "replace")
        log.info(f"{kind}.response", extra={
            "call_id": call_id, "status": status, "bytes": len(raw), "body": shown})
        if not 200 <= status < 300:
            raise AnswerUrlError(f"{kind} returned HTTP {status}", retryable=status >= 500)
        if too_large:
            raise AnswerUrlError(INVALID, (Detail("", f"body larger than {MAX_BODY_BYTES} bytes"),))
        try:
            return parse_body(raw)
        except ValidationError as exc:
            raise AnswerUrlError(INVALID, tuple(exc.details)) from None


