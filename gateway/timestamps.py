"""The one timestamp format of the API, webhooks and stored records: ISO 8601, UTC, seconds.

    2026-11-24T05:13:17Z
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso(ts: float | None = None) -> str:
    """`ts` (Unix seconds; now if None) as 'YYYY-MM-DDTHH:MM:SSZ'."""
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime(FORMAT)


def parse_iso(text: str) -> float:
    """The Unix seconds of an `iso()` string."""
    return datetime.strptime(text, FORMAT).replace(tzinfo=UTC).timestamp()
