"""What a call that was live when the gateway process died becomes at the next start: a pure
function from its last stored record to its final record and `call.completed` webhook.

The process can die in ways nothing inside it can catch (kill -9, the OOM killer, an abort
in C). Each live call is kept in SQLite while it lasts (`live_calls`), so the next start owes
it, and sends, exactly one `call.completed` with `status: failed` and
`data.hangup_cause: gateway_restart`.
"""

from __future__ import annotations

from typing import Any

from gateway.store import LiveCall
from gateway.timestamps import iso, parse_iso
from gateway.webhook_events import LifecycleEvent

COMPLETED: LifecycleEvent = "call.completed"
CALL_VIEW_KEYS = ("id", "customer_id", "application_id", "status", "direction", "from", "to")


def _ts(text: str | None) -> float | None:
    return parse_iso(text) if text else None


def lost_call(live: LiveCall, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(final record, call.completed payload) for a call the previous process left behind.
    Its end is taken as the last time that process was seen alive with it."""
    record = dict(live.record)
    answered = _ts(record.get("answered_at"))
    ended = max(live.seen_at, answered or 0.0)
    record.update({
        "status": "failed",
        "ended_at": iso(ended),
        "hangup_cause": "gateway_restart",
        "hangup_by": "gateway",
        "sip_code": None,
        "error": {"code": "gateway_restart",
                  "message": "the gateway process stopped during the call"},
        "timeline": [*record.get("timeline", []),
                     {"at": iso(now), "event": "gateway_restart"}],
    })
    payload = {
        "event": COMPLETED,
        "created_at": iso(now),
        "call": {k: record.get(k) for k in CALL_VIEW_KEYS},
        "variables": {},
        "data": {
            "duration_s": round(ended - answered, 3) if answered else 0,
            "hangup_cause": "gateway_restart",
            "hangup_by": "gateway",
            "sip_code": None,
            "error": record["error"],
        },
    }
    return record, payload
