"""The calls of a node that died, as plain data: what each node publishes about its live
calls, what a surviving node makes of it, and who sends each lost call's `call.completed`.

Each node keeps, in Redis, one small record per live inbound call and outbound leg (cascade
legs are internal: they have no webhooks). When a node's liveness record expires while it
still has records, one surviving node takes them (gateway.cluster.redis_store, a Lua script)
and sends each call its `call.completed` (cause `gateway_lost`) through its own outbox.

Exactly once: whoever sends a lost call's `call.completed` first sets `mv:done:{call id}`
with SET NX, in the same Lua script that takes the record (a survivor) or before it
recovers the call from its own SQLite (the dead node, restarted). Whoever finds the marker
set sends nothing.

No I/O here: encoding and validating the records, and the decisions, each a unit test away.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.store import LiveCall
from gateway.timestamps import parse_iso

VERSION = 1
MAX_RECORD_BYTES = 2048  # a record as stored; larger ones are refused when read back
MAX_TEXT = 256  # from / to / room are cut to this many characters when written
MAX_ID = 128  # call, application and customer ids (ours are far shorter)
BATCH = 100  # records taken from Redis by one script call
PER_TICK = 300  # records reconciled per tick, all dead nodes together
MAX_DEAD = 32  # dead nodes looked at per tick
NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # as cluster.node_id
CALL_ID = re.compile(r"[A-Za-z0-9_.:@+-]{1,128}")
_TEXT_KEYS = ("from", "to")
_ID_KEYS = ("customer_id", "application_id")
# Calls older than this, or stamped in the future beyond it, are not ours: refused.
MAX_AGE_S = 30 * 86400.0
SKEW_S = 300.0


class BadRecord(ValueError):
    """A record read back from Redis that is not one we wrote."""


@dataclass(frozen=True)
class Entry:
    """What another node needs to end one of our calls as recover_lost would."""

    call_id: str
    app_id: str
    record: dict[str, Any]  # the call's public record, trimmed (see `encode`)


def encode(call_id: str, app_id: str, view: Mapping[str, Any], now: float) -> str:
    """A live call's record for Redis, from its full public record (CallRecord.view):
    only what `call.completed` carries, text fields cut to MAX_TEXT, at most MAX_RECORD_BYTES.
    BadRecord if even that would not be read back (an id longer than ours ever are)."""
    rec: dict[str, Any] = {
        "id": call_id,
        "customer_id": view.get("customer_id"),
        "application_id": view.get("application_id"),
        "status": view.get("status"),
        "direction": view.get("direction"),
        "created_at": view.get("created_at"),
        "answered_at": view.get("answered_at"),
    }
    for k in _TEXT_KEYS:
        rec[k] = str(view.get(k) or "")[:MAX_TEXT]
    room = view.get("room")
    rec["room"] = None if room is None else str(room)[:MAX_TEXT]
    raw = json.dumps({"v": VERSION, "app": app_id, "rec": rec}, separators=(",", ":"))
    decode(call_id, raw.encode(), now)  # what we publish must be readable: else not at all
    return raw


def rec_time(text: Any) -> float | None:
    if not isinstance(text, str) or len(text) != 20:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        return None


def _short(v: Any, limit: int) -> bool:
    return isinstance(v, str) and 0 < len(v) <= limit


def decode(call_id: Any, raw: Any, now: float) -> Entry:
    """A record read back from Redis, checked field by field; BadRecord says what is wrong.
    `now`: timestamps must be within MAX_AGE_S before it and SKEW_S after it."""
    if not isinstance(call_id, str) or not CALL_ID.fullmatch(call_id):
        raise BadRecord("bad call id")
    if not isinstance(raw, bytes | str):
        raise BadRecord("not a string")
    if len(raw) > MAX_RECORD_BYTES:
        raise BadRecord(f"{len(raw)} bytes (at most {MAX_RECORD_BYTES})")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRecord("not JSON") from exc
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise BadRecord("not a version 1 record")
    app, rec = doc.get("app"), doc.get("rec")
    if not _short(app, MAX_ID) or not isinstance(rec, dict):
        raise BadRecord("no app / rec")
    if rec.get("id") != call_id:
        raise BadRecord("call id differs from its key")
    for k in _ID_KEYS:
        if not _short(rec.get(k), MAX_ID):
            raise BadRecord(f"bad {k}")
    for k in _TEXT_KEYS:
        if not isinstance(rec.get(k), str) or len(rec[k]) > MAX_TEXT:
            raise BadRecord(f"bad {k}")
    if rec.get("room") is not None and not _short(rec.get("room"), MAX_TEXT):
        raise BadRecord("bad room")
    if rec.get("direction") not in ("inbound", "outbound"):
        raise BadRecord("bad direction")
    if not _short(rec.get("status"), 32):
        raise BadRecord("bad status")
    created = rec_time(rec.get("created_at"))
    if created is None or not now - MAX_AGE_S <= created <= now + SKEW_S:
        raise BadRecord("bad created_at")
    if rec.get("answered_at") is not None:
        answered = rec_time(rec.get("answered_at"))
        if answered is None or not created <= answered <= now + SKEW_S:
            raise BadRecord("bad answered_at")
    extra = set(rec) - {"id", "status", "direction", "created_at", "answered_at", "room",
                        *_ID_KEYS, *_TEXT_KEYS}
    if extra:
        raise BadRecord(f"unknown fields {sorted(extra)[:3]}")
    return Entry(call_id, str(app), {**rec, "ended_at": None, "timeline": []})


def seen_time(raw: Any, now: float) -> float:
    """When the dead node was last seen with its calls (its `mv:seen:{node}`); `now` when
    that is missing or makes no sense (the call's end is then reported a little late)."""
    try:
        seen = float(raw.decode() if isinstance(raw, bytes) else raw)
    except (TypeError, ValueError, AttributeError, UnicodeDecodeError):
        return now
    return seen if math.isfinite(seen) and now - MAX_AGE_S <= seen <= now else now


# -- decisions ------------------------------------------------------------------------------
def due(me: str, with_records: Iterable[str], alive: Mapping[str, bool]) -> list[str]:
    """The nodes whose calls this node should take now: they have records, their liveness
    record is gone, and they are not us (our own records are taken once, at start). Names
    that are no node id (not written by a node) are skipped; at most MAX_DEAD a tick."""
    return sorted(n for n in set(with_records) if n != me and NODE_ID.fullmatch(n)
                  and not alive.get(n, False))[:MAX_DEAD]


@dataclass(frozen=True)
class Taken:
    """What a survivor does with one script call's worth of a dead node's records."""

    send: list[LiveCall]  # each gets call.completed (gateway_lost) and a call record
    dropped: list[tuple[str, str]]  # (call id, why): garbage, logged and forgotten


def settle(pairs: Iterable[tuple[Any, Any]], seen_raw: Any, now: float) -> Taken:
    """The records a take script gave us (we won each one's done marker) -> what to send.
    Every call ends at the dead node's last sign of life (seen), never before it answered."""
    seen = seen_time(seen_raw, now)
    send, dropped = [], []
    for cid, raw in pairs:
        name = cid.decode(errors="replace") if isinstance(cid, bytes) else str(cid)
        try:
            entry = decode(name, raw, now)
        except BadRecord as exc:
            dropped.append((name[:MAX_ID], str(exc)))
            continue
        send.append(LiveCall(entry.call_id, entry.app_id, entry.record, seen))
    return Taken(send, dropped)


@dataclass(frozen=True)
class AtStart:
    """A restarted node's own calls left live in its SQLite: which it ends itself."""

    recover: set[str]  # its `call.completed` is ours to send (gateway_restart)
    elsewhere: dict[str, str]  # call id -> the node that already sent it


def at_start(live_ids: Iterable[str], marks: Mapping[str, str | None], me: str) -> AtStart:
    """`marks`: for each live call id, the done marker after our SET NX (our node id if we
    set it, another's if a survivor had; None if Redis did not answer for it: we cannot
    know, and a call.completed twice is better than none)."""
    recover, elsewhere = set(), {}
    for cid in live_ids:
        owner = marks.get(cid)
        if owner is None or owner == me:
            recover.add(cid)
        else:
            elsewhere[cid] = owner
    return AtStart(recover, elsewhere)
