"""Audio measurements used by tests and the benchmark: tone levels and delay."""

from __future__ import annotations

import numpy as np

from media.tones import Samples

FLOOR_DB = -150.0


def tone_level_dbfs(x: Samples, rate: int, freq_hz: float, bandwidth_hz: float = 20.0) -> float:
    """Level of the tone at `freq_hz` in dB full scale (a full-scale sine reads 0 dBFS).

    Sums FFT power (Hann window) in +-bandwidth/2 around the frequency, so a tone
    slightly off-bin, or resampled, still reads at its true level.
    """
    if len(x) == 0:
        return FLOOR_DB
    window = np.hanning(len(x))
    spectrum = np.fft.rfft(x * window)
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    band = np.abs(freqs - freq_hz) <= bandwidth_hz / 2
    # Parseval with the window's energy: a sine of amplitude A has power A^2/2.
    power = 2 * np.sum(np.abs(spectrum[band]) ** 2) / (np.sum(window**2) * len(x))
    full_scale = 0.5
    return float(10 * np.log10(max(power / full_scale, 1e-15)))


def rms_dbfs(x: Samples) -> float:
    if len(x) == 0:
        return FLOOR_DB
    rms = float(np.sqrt(np.mean(np.square(x))))
    return float(20 * np.log10(max(rms * np.sqrt(2), 1e-15)))


def steady(x: Samples, rate: int, skip_s: float = 1.0, tail_s: float = 0.5) -> Samples:
    """The middle of a recording, without set-up and tear-down edges."""
    a, b = int(skip_s * rate), len(x) - int(tail_s * rate)
    return x[a:b] if b > a else x[:0]


def onset_s(x: Samples, rate: int, threshold_dbfs: float = -30.0, frame_ms: float = 5.0) -> float:
    """Time of the first frame whose RMS exceeds the threshold (-1 if none)."""
    n = max(1, int(rate * frame_ms / 1000))
    frames = len(x) // n
    if frames == 0:
        return -1.0
    blocks = x[: frames * n].reshape(frames, n)
    levels = 20 * np.log10(np.sqrt(np.mean(blocks**2, axis=1)) * np.sqrt(2) + 1e-15)
    hits = np.nonzero(levels > threshold_dbfs)[0]
    return float(hits[0] * n / rate) if len(hits) else -1.0


def delay_s(reference: Samples, received: Samples, rate: int) -> float:
    """Delay of `received` relative to `reference` by cross-correlation (FFT)."""
    n = len(reference) + len(received)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(received, size) * np.conj(np.fft.rfft(reference, size)), size)
    lag = int(np.argmax(corr[: len(received)]))
    return lag / rate
