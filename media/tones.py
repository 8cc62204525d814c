"""Tone generation and WAV I/O (16-bit mono PCM) with numpy."""

from __future__ import annotations

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
