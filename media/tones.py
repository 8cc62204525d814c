"""Tone generation and WAV I/O (16-bit mono PCM) with numpy."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float64]


def sine(freq_hz: float, seconds: float, rate: int = 8000, level_dbfs: float = -12.0) -> Samples:
    n = round(seconds * rate)
    amp = 10 ** (level_dbfs / 20)
    return amp * np.sin(2 * np.pi * freq_hz * np.arange(n) / rate)


def silence(seconds: float, rate: int = 8000) -> Samples:
    return np.zeros(round(seconds * rate))


def ringback(rate: int = 8000, level_dbfs: float = -16.0) -> Samples:
    """One cycle of North American ringback: 440 + 480 Hz, 2 s on, 4 s off."""
    t = np.arange(int(2.0 * rate)) / rate
    amp = 10 ** (level_dbfs / 20) / 2
    on = amp * (np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 480 * t))
    return np.concatenate([on, silence(4.0, rate)])


# Room beeps (contract section 8 `beep`): a rising pair on enter, a falling pair on exit.
BEEP_ENTER_HZ = (1000.0, 1400.0)
BEEP_EXIT_HZ = (1400.0, 1000.0)


def beep(freqs: tuple[float, float], rate: int = 8000, level_dbfs: float = -14.0) -> Samples:
    """Two 150 ms tones with soft 5 ms edges (no click)."""
    parts = []
    ramp = min(round(0.005 * rate), round(0.15 * rate) // 2)
    for f in freqs:
        tone = sine(f, 0.15, rate, level_dbfs)
        env = np.ones(len(tone))
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
        parts.append(tone * env)
    return np.concatenate(parts)


def write_beeps(directory: Path, rate: int) -> dict[str, Path]:
    """The enter and exit beeps as WAV files in `directory` (written once, then reused)."""
    out = {}
    for kind, freqs in (("enter", BEEP_ENTER_HZ), ("exit", BEEP_EXIT_HZ)):
        path = directory / f"beep-{kind}-{rate}.wav"
        if not path.exists():
            # a name of this process's own: two processes sharing the directory each write
            # a whole file and rename it (a shared ".tmp" was renamed away under the other)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
            write_wav(tmp, beep(freqs, rate), rate)
            tmp.replace(path)
        out[kind] = path
    return out


def to_pcm16(samples: Samples) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def write_wav(path: str | Path, samples: Samples, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_pcm16(samples))


def read_wav(path: str | Path) -> tuple[Samples, int]:
    """Samples as floats in [-1, 1] (first channel) and the sample rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data[::channels].astype(np.float64) / 32768.0, rate
