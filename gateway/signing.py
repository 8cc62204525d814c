"""Request signing (docs/api.md, section 6). Pure; applications may import `verify`.

    MiniVoice-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "MiniVoice-Signature"
TOLERANCE_S = 300


def signature(secret: str, body: bytes, t: int) -> str:
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


def sign(secret: str, body: bytes, now: float | None = None) -> str:
    return signature(secret, body, int(time.time() if now is None else now))


def verify(
    secret: str, body: bytes, header: str | None, *, now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> bool:
    """True if `header` is a valid, fresh signature of `body` (the raw bytes received)."""
    if not header:
        return False
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    stamp = parts.get("t", "")
    # Unix seconds, ASCII digits: int() would also take "1_7", "٣" or 4,000 digits, and a
    # number that large overflows the float subtraction below.
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        return False
    t = int(stamp)
    current = time.time() if now is None else now
    if abs(current - t) > tolerance_s:
        return False
    expected = signature(secret, body, t).split("v1=", 1)[1]
    # Bytes, not str: compare_digest raises TypeError on a non-ASCII str, and a header is
    # whatever the sender put in it.
    presented = parts.get("v1", "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(expected.encode(), presented)
