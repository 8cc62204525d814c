"""bench/ratio.py's summary rows, including a floor that used no CPU tick in its window."""

from __future__ import annotations

from typing import Any

from bench import ratio


def _result(floor_ms: float, over: float | None) -> dict[str, Any]:
    gw = {"target": "gateway", "build": "b", "answered": 4, "failed": 0,
          "cpu_ms_per_leg_s": 2.5}
    floor = {"target": "pjsua", "build": "b", "answered": 4, "failed": 0,
             "cpu_ms_per_leg_s": floor_ms, "gateway_over_this": over}
    return {"legs": 4, "room_size": 3, "servers": [gw, floor], "ratio": over}


def test_a_measured_ratio_is_printed_and_judged() -> None:
    [row] = ratio.summary_rows(_result(2.0, 1.25), 0.5)
    assert row["result"].startswith("1.25x (2.500 vs 2.000 ms)") and not row["met"]
    [row] = ratio.summary_rows(_result(10.0, 0.25), 0.5)
    assert row["met"]


def test_a_floor_under_one_clock_tick_gives_no_ratio_and_no_crash() -> None:
    # The CI failure this guards: pjsua used 0 ticks at toy scale, the ratio was None and
    # the summary's format string raised TypeError, failing the whole bench run.
    [row] = ratio.summary_rows(_result(0.0, None), 0.5)
    assert "n/a" in row["result"] and "2.500 vs 0.000 ms" in row["result"]
    assert row["met"] is False
