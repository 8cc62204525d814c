"""Loud callers in one room: the bridge scales a mix that does not fit 16 bits down to fit
(pjmedia's mix_adj), it does not clip it. Real SIP, real RTP, measured with numpy.

Three callers send tones at -1 dBFS into one room; a fourth, silent, hears all three. Their
sum peaks near 2.5x full scale. Scaled per 20 ms frame, each tone arrives at about -10 dBFS
and the signal touches full scale about once a frame (<1% of samples). If mix_adj is not
lowered, the bridge casts the 32-bit sum to 16 bits without clipping and it wraps around:
the tones drown in noise (a build with that step disabled: tones at -33 to -57 dBFS, 0.1%
of the energy in them). Clipped instead, over a third of the samples would sit at full
scale and distortion would take about a tenth of the energy. A mix_adj far too small shows
as tones well below the expected level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from media.analysis import steady, tone_level_dbfs
from tests.audio import levels, read_final
from tests.harness import AppServer, GatewayProc, Phonebank
from tests.test_conference_audio import HEARD_DB, talk

pytestmark = pytest.mark.sip

LOUD_DBFS = -1.0
TONES = {"a": 440, "b": 700, "c": 1100}
# G.711 mu-law's largest value is 32124/32768 = 0.980 of full scale: a clipped sample
# decodes to it (A-law: 0.984).
FULL_SCALE = 0.97


def tone_share(x: np.ndarray, rate: int, freqs: list[int], half_band_hz: float = 15.0) -> float:
    """Fraction of the signal's energy within +-half_band of the given tones (Hann window)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    bins = np.fft.rfftfreq(len(x), 1 / rate)
    near = np.zeros(len(bins), dtype=bool)
    for f in freqs:
        near |= np.abs(bins - f) <= half_band_hz
    return float(spectrum[near].sum() / spectrum.sum())


async def test_loud_callers_are_scaled_down_not_clipped(
    gateway: GatewayProc, app: AppServer, phones: Phonebank, tmp_path: Path
) -> None:
    callers: dict[str, dict[str, object]] = {
        cid: {"tone_hz": hz, "tone_dbfs": LOUD_DBFS} for cid, hz in TONES.items()}
    callers["listener"] = {"tone_hz": 0}
    recs = await talk(phones, gateway, callers, tmp_path, hold_s=4.5)

    x, rate = read_final(recs["listener"])
    seg = steady(x, rate, 1.5, 0.5)
    assert len(seg) > 2 * rate, f"only {len(x) / rate:.2f} s recorded"
    heard = {hz: tone_level_dbfs(seg, rate, hz) for hz in TONES.values()}
    clipped = float(np.mean(np.abs(seg) >= FULL_SCALE))
    share = tone_share(seg, rate, list(TONES.values()))
    report = f"levels {heard}, at full scale {clipped:.3f}, tone energy share {share:.3f}"

    # every talker heard, at about the same level: the whole frame is scaled, not one source
    assert all(-16.0 < db < -5.0 for db in heard.values()), report
    assert max(heard.values()) - min(heard.values()) < 3.0, report
    # not clipped: full scale only at the scaled frames' peaks, and no distortion products
    assert clipped < 0.05, report
    assert share > 0.95, report

    # a talker hears the other two loud ones (their sum overflows too) and not itself
    a = levels(recs["a"], 440, 700, 1100, skip_s=1.5, tail_s=0.5)
    assert a[700] > HEARD_DB and a[1100] > HEARD_DB, a
    assert min(a[700], a[1100]) - a[440] >= 30, f"a hears itself: {a}"
