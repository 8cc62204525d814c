"""A call's record as plain data: state, timeline, the JSON views the application sees, and
how an ended call is classified. No asyncio, no I/O: every rule here is a unit test away.

Inbound calls and outbound legs share this shape; they differ only in `direction`, in what
their SIP data says, and in how their end is classified (an outbound leg that was never
answered has an outcome: busy, no-answer, failed or canceled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.timestamps import iso
from gateway.webhook_events import EventName

Direction = Literal["inbound", "outbound"]


def dial_outcome(sip_code: int) -> str:
    """What a failed outbound attempt means to an application."""
    if sip_code in (486, 600, 603):
        return "busy"
    if sip_code in (408, 480, 487):
        return "no-answer"
    return "failed"


@dataclass
class CallRecord:
    call_id: str
    customer_id: str
    application_id: str
    direction: Direction
    from_user: str
    to: str
    # What call.initiated and call.answer carry in `data` (SIP identifiers, parent call).
    sip: dict[str, Any]
    created_at: float
    max_timeline: int = 1000
    parent_call_id: str | None = None
    status: str = "ringing"
    answered_at: float | None = None
    ended_at: float | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    timeline_dropped: int = 0
    error: dict[str, Any] | None = None
    hangup_by: str | None = None  # set when the gateway or the API ends the call
    hangup_cause: str | None = None
    hangup_reason: str | None = None
    sip_code: int | None = None
    room: str | None = None
    codec: str | None = None
    # pjmedia's statistics of the call's audio, set when it ends (media.quality.CallQuality)
    quality: dict[str, Any] | None = None
    outcome: str | None = None  # outbound legs: answered | busy | no-answer | failed | canceled

    # -- views -------------------------------------------------------------------------
    def call_view(self) -> dict[str, Any]:
        return {
            "id": self.call_id,
            "customer_id": self.customer_id,
            "application_id": self.application_id,
            "status": self.status,
            "direction": self.direction,
            "from": self.from_user,
            "to": self.to,
        }

    def envelope(self, event: EventName, now: float,
                 data: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "event": event,
            "created_at": iso(now),
            "call": self.call_view(),
            "variables": {},
            "data": data if data is not None else {},
        }

    def view(self) -> dict[str, Any]:
        """The call's full public record (REST API, SQLite)."""
        return {
            **self.call_view(),
            "created_at": iso(self.created_at),
            "answered_at": iso(self.answered_at) if self.answered_at else None,
            "ended_at": iso(self.ended_at) if self.ended_at else None,
            "room": self.room,
            "codec": self.codec,
            "quality": self.quality,
            "hangup_cause": self.hangup_cause,
            "hangup_by": self.hangup_by,
            "sip_code": self.sip_code,
            "error": self.error,
            "timeline": self.timeline,
            **({"timeline_dropped": self.timeline_dropped} if self.timeline_dropped else {}),
        }

    def add_note(self, event: str, now: float, **fields: Any) -> None:
        if len(self.timeline) < self.max_timeline:
            self.timeline.append({"at": iso(now), "event": event, **fields})
        else:  # a DTMF flood (RFC 4733 over RTP) must not grow the record without end
            self.timeline_dropped += 1

    @property
    def ending(self) -> bool:
        """Ended, or its end already asked for (a second hang-up is a no-op)."""
        return self.ended_at is not None or self.hangup_cause is not None

    # -- the end -----------------------------------------------------------------------
    def answered(self, now: float) -> None:
        self.answered_at = now
        self.status = "in-progress"

    def ended(self, now: float, *, sip_code: int, by_gateway: bool, cause: str) -> None:
        """Classify the end (status, hangup_by, hangup_cause) from what the SIP side said
        and what the gateway had asked for."""
        self.ended_at = now
        self.sip_code = sip_code
        if self.direction == "outbound":
            self._outbound_end(sip_code, by_gateway)
        else:
            self._inbound_end(by_gateway, cause)

    def _inbound_end(self, by_gateway: bool, cause: str) -> None:
        if not by_gateway:
            self.hangup_by = "caller"
            self.hangup_cause = "normal_clearing" if self.answered_at else "originator_cancel"
        elif cause != "normal":
            self.hangup_by, self.hangup_cause = "gateway", cause
        elif self.hangup_by is None:
            self.hangup_by, self.hangup_cause = "gateway", "shutdown"
        if self.error:
            self.status = "failed"
        elif self.answered_at:
            self.status = "completed"
        elif self.hangup_by == "caller":
            self.status = "canceled"
        elif self.hangup_cause == "hangup_action":
            self.status = "completed"
        else:
            self.status = "canceled" if self.hangup_by == "api" else "failed"

    def _outbound_end(self, sip_code: int, by_gateway: bool) -> None:
        if self.answered_at:
            self.outcome = "answered"
            self.status = "completed"
            if by_gateway:
                self.hangup_by = self.hangup_by or "gateway"
                self.hangup_cause = self.hangup_cause or (
                    "parent_hangup" if self.parent_call_id else "shutdown")
            else:
                self.hangup_by, self.hangup_cause = "callee", "normal_clearing"
            return
        if self.outcome is None:
            self.outcome = "canceled" if self.hangup_by else dial_outcome(sip_code)
        self.status = {"busy": "busy", "no-answer": "no-answer",
                       "canceled": "canceled"}.get(self.outcome, "failed")
        self.hangup_by = self.hangup_by or "callee"
        self.hangup_cause = self.hangup_cause or self.outcome

    def completed_data(self) -> dict[str, Any]:
        """`data` of call.completed."""
        data: dict[str, Any] = {
            "duration_s": round(self.ended_at - self.answered_at, 3)
            if self.ended_at and self.answered_at else 0,
            "hangup_cause": self.hangup_cause,
            "hangup_by": self.hangup_by,
            "sip_code": self.sip_code,
        }
        if self.hangup_reason:
            data["hangup_reason"] = self.hangup_reason
        if self.direction == "outbound":
            data["outcome"] = self.outcome
            if self.parent_call_id:
                data["parent_call_id"] = self.parent_call_id
        if self.quality is not None:
            data["quality"] = self.quality
        if self.error:
            data["error"] = self.error
        return data
