"""The one way the gateway POSTs to an application: signed JSON, no redirects followed.

answer_url/action_url requests (gateway.hooks) and webhooks (gateway.outbox) both go through
`signed_post`. Each caller keeps its own session, timeouts and body limit. A redirect is
never followed: a 3xx comes back as its status, which every caller treats as a failure
(following it would carry the signed body and signature to wherever the Location points).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from gateway import USER_AGENT, signing
from gateway.netguard import BodyTooLarge, read_capped


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    # The body was over `max_body` (and `body` is empty).
    too_large: bool = False


def signed_headers(
    secret: str, body: bytes, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **(extra or {}),
        signing.HEADER: signing.sign(secret, body),
    }


async def signed_post(
    http: aiohttp.ClientSession, url: str, body: bytes, secret: str, *,
    timeout: aiohttp.ClientTimeout, headers: Mapping[str, str] | None = None,
    max_body: int | None = None,
) -> Reply:
    """POST the JSON `body` to `url`, signed with `secret`; the status and the response body
    (read to EOF, at most `max_body` bytes when given). aiohttp's exceptions (timeouts,
    connection errors) propagate to the caller."""
    sent = signed_headers(secret, body, headers)
    async with http.post(url, data=body, headers=sent, timeout=timeout,
                         allow_redirects=False) as resp:
        if max_body is None:
            return Reply(resp.status, await resp.read())
        try:
            return Reply(resp.status, await read_capped(resp, max_body))
        except BodyTooLarge:
            return Reply(resp.status, b"", too_large=True)
