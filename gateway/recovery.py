"""What a call that was live when the gateway process died becomes at the next start: a pure
function from its last stored record to its final record and `call.completed` webhook.

The process can die in ways nothing inside it can catch (kill -9, the OOM killer, an abort
in C). Each live call is kept in SQLite while it lasts (`live_calls`), so the next start owes
it, and sends, exactly one `call.completed` with `status: failed` and
`data.hangup_cause: gateway_restart`.

In a cluster, a node that never comes back leaves its calls to a surviving node instead
(gateway.cluster.lost): the same function builds their end, with the cause `gateway_lost`.
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


RESTART = ("gateway_restart", "the gateway process stopped during the call")
LOST = ("gateway_lost", "the gateway node of the call stopped; reported by another node")


def lost_call(live: LiveCall, now: float, cause: tuple[str, str] = RESTART
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(final record, call.completed payload) for a call the previous process left behind.
    Its end is taken as the last time that process was seen alive with it. `cause`: (code,
    message): RESTART when the call's own database is recovered, LOST when another node of
    a cluster reports it."""
    code, message = cause
    record = dict(live.record)
    answered = _ts(record.get("answered_at"))
    ended = max(live.seen_at, answered or 0.0)
    record.update({
        "status": "failed",
        "ended_at": iso(ended),
        "hangup_cause": code,
        "hangup_by": "gateway",
        "sip_code": None,
        "error": {"code": code, "message": message},
        "timeline": [*record.get("timeline", []), {"at": iso(now), "event": code}],
    })
    payload = {
        "event": COMPLETED,
        "created_at": iso(now),
        "call": {k: record.get(k) for k in CALL_VIEW_KEYS},
        "variables": {},
        "data": {
            "duration_s": round(ended - answered, 3) if answered else 0,
            "hangup_cause": code,
            "hangup_by": "gateway",
            "sip_code": None,
            "error": record["error"],
        },
    }
    return record, payload
