"""Measuring what a test softphone heard."""

from __future__ import annotations

import time
import wave
from pathlib import Path

import numpy as np

from media.analysis import steady, tone_level_dbfs
from media.tones import read_wav


def read_final(path: Path) -> tuple[np.ndarray, int]:
    """Read a recording, waiting briefly for its WAV header: pjmedia removes a recorder's
    bridge port (and so finalises the file) on the next clock tick, not at once."""
    for _ in range(100):
        try:
            return read_wav(path)
        except (EOFError, wave.Error):
            time.sleep(0.02)
    return read_wav(path)


def levels(path: Path, *freqs: float, skip_s: float = 1.0, tail_s: float = 0.3,
           start_s: float | None = None, end_s: float | None = None) -> dict[float, float]:
    """Level (dBFS) of each tone frequency in a recording's steady part (or a window)."""
    x, rate = read_final(path)
    if start_s is not None or end_s is not None:
        a = int((start_s or 0) * rate)
        b = int(end_s * rate) if end_s is not None else len(x)
        seg = x[a:b]
    else:
        seg = steady(x, rate, skip_s, tail_s)
    assert len(seg) > rate // 2, f"{path}: only {len(x) / rate:.2f} s recorded"
    return {f: tone_level_dbfs(seg, rate, f) for f in freqs}


def duration_s(path: Path) -> float:
    x, rate = read_final(path)
    return len(x) / rate


def is_silent(path: Path) -> bool:
    x, _ = read_wav(path)
    return bool(np.max(np.abs(x)) < 1e-3) if len(x) else True
