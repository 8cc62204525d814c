"""Crash-only recovery without a SIP stack: the lost-call record, the live-calls table, the
transaction that keeps call.completed exactly once, the watchdog, and the systemd unit."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gateway.recovery import lost_call
from gateway.store import LiveCall, NewEvent, Store
from gateway.watchdog import EXIT_CODE, watch
from sip.config import SipConfig

ROOT = Path(__file__).resolve().parent.parent

RECORD = {"id": "call_x", "customer_id": "c1", "application_id": "app1", "status": "in-progress",
          "direction": "inbound", "from": "+1555", "to": "1001",
          "created_at": "2026-11-24T10:00:00Z", "answered_at": "2026-11-24T10:00:02Z",
          "timeline": [{"at": "2026-11-24T10:00:00Z", "event": "call.initiated"}]}
T_ANSWER = 1795514402.0  # 2026-11-24T10:00:02Z


def test_lost_call_is_failed_with_gateway_restart() -> None:
    record, payload = lost_call(LiveCall("call_x", "app1", RECORD, T_ANSWER + 40), T_ANSWER + 99)
    assert payload["event"] == "call.completed"
    assert payload["call"] == {**{k: RECORD[k] for k in ("id", "customer_id", "application_id",
                                                          "direction", "from", "to")},
                               "status": "failed"}
    assert payload["data"]["hangup_cause"] == "gateway_restart"
    assert payload["data"]["duration_s"] == 40.0
    assert record["status"] == "failed" and record["ended_at"] == "2026-11-24T10:00:42Z"
    assert record["timeline"][-1]["event"] == "gateway_restart"


def test_lost_call_never_answered_has_no_duration() -> None:
    unanswered = {**RECORD, "answered_at": None, "status": "ringing"}
    _, payload = lost_call(LiveCall("call_x", "app1", unanswered, T_ANSWER), T_ANSWER + 5)
    assert payload["data"]["duration_s"] == 0


def test_live_calls_table_and_the_completion_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    store.live_put("call_x", "app1", RECORD)
    store.live_put("call_x", "app1", {**RECORD, "status": "completed"})  # upsert
    store.live_touch(123.0)
    [live] = store.live_all()
    assert live.record["status"] == "completed" and live.seen_at == 123.0
    # call.completed takes the live row with it, in one transaction ...
    done = NewEvent("evt_1", "call_x", "http://x", "app1", b"{}", 1.0, ends_call=True)
    store.outbox_apply([done], [])
    assert store.live_all() == [] and store.outbox_pending_count() == 1
    # ... and when that transaction fails, neither happens: the next start still owes it.
    store.live_put("call_y", "app1", RECORD)
    clash = NewEvent("evt_1", "call_y", "http://x", "app1", b"{}", 2.0, ends_call=True)
    with pytest.raises(sqlite3.IntegrityError):  # the same event ID again
        store.outbox_apply([clash], [])
    assert [lc.call_id for lc in store.live_all()] == ["call_y"]
    assert store.outbox_pending_count() == 1
    store.close()


class FakeEngine:
    def __init__(self) -> None:
        self.state: str | None = None

    def problem(self, stall_s: float) -> str | None:
        return self.state


async def test_watchdog_exits_when_the_sip_thread_dies() -> None:
    engine = FakeEngine()
    exits: list[int] = []
    task = asyncio.create_task(watch(engine, 10, poll_s=0.01, exit_fn=exits.append))
    await asyncio.sleep(0.05)
    assert exits == [] and not task.done()
    engine.state = "sip thread died"
    await asyncio.wait_for(task, 1)
    assert exits == [EXIT_CODE]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """The shipped unit, with its paths pointed at this checkout, passes systemd-analyze."""
    unit = (ROOT / "configs" / "minivoice.service").read_text()
    assert "Restart=always" in unit
    unit = unit.replace("/opt/minivoice", str(ROOT)).replace("User=minivoice\n", "") \
        .replace("Group=minivoice\n", "")
    path = tmp_path / "minivoice.service"
    path.write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    problems = [ln for ln in (result.stdout + result.stderr).splitlines()
                if "minivoice.service" in ln]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


class Unhangable:
    """A call pjsua cannot hang up (its hangup raises, as pjsua2.Error does)."""

    call_id = "call_z"
    audio = object()

    def hangup_call(self, code: int, reason: str, cause: str = "") -> None:
        raise RuntimeError("cannot build the response")


def test_a_call_that_cannot_be_hung_up_is_finished_anyway() -> None:
    import queue
    import time

    from sip import events as ev
    from sip.engine import SipEngine
    from sip.thread import ZOMBIE_AFTER_S, SipThread

    posted: list[object] = []
    cfg = SipConfig()
    thread = SipThread(cfg, queue.SimpleQueue(), posted.append,
                       SipEngine(cfg, lambda e: None))
    call = Unhangable()
    # a fake: a real GatewayCall needs a running pjsua endpoint
    thread.calls[call.call_id] = call  # type: ignore[assignment]
    thread._hangup(call, 500, "x")  # logged, not raised
    thread._reap_zombies(time.monotonic())
    assert posted == [] and call.call_id in thread.calls  # not yet: it may still end
    thread._reap_zombies(time.monotonic() + ZOMBIE_AFTER_S + 1)
    assert call.call_id not in thread.calls and thread.abandoned == [call]
    [ended] = posted
    assert isinstance(ended, ev.CallEnded) and ended.call_id == "call_z" and ended.by_gateway
