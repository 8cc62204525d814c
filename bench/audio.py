"""Audio measurements with probe legs: mixer delay, and a big room heard by everyone."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench import g711
from bench.probe import FRAME, LOUD, Leg, ProbeUA, SipError, silence

log = logging.getLogger("bench.audio")

BURST_PACKETS = 5  # 100 ms bursts
BURST_EVERY = 50  # one per second
ONSET = 2048  # |sample| that marks the burst's arrival (the burst peaks at ~8200)

# 1000 Hz and 500 Hz fit a whole number of cycles in 160 samples: one payload loops seamlessly.
_TONES = {1000: g711.encode(g711.tone(1000, FRAME)), 500: g711.encode(g711.tone(500, FRAME))}


@dataclass
class DelayResult:
    bursts: int
    delays_ms: list[float]
    median_ms: float
    max_ms: float
    setup_ms: list[float]


async def mixer_delay(sip: tuple[str, int], dialed: str, bursts: int = 8,
                      sip_b: tuple[str, int] | None = None) -> DelayResult:
    """Tone bursts into leg A, timed out of leg B, both in one room. With `sip_b`, leg B
    calls that gateway (another node of a cluster: the delay then includes a cascade leg).

    Delay = (arrival of B's first packet carrying the burst + the burst's offset in
    that packet) - (the moment A sent the burst's first packet). Loopback adds tens
    of microseconds, so this is the delay the gateway adds: its jitter buffer, the
    bridge tick and the encoder. Each burst is timed separately; median and max reported.
    """
    ua = ProbeUA(sip)
    await ua.start()
    ua_b = ua
    if sip_b is not None:
        ua_b = ProbeUA(sip_b)
        await ua_b.start()
    first_burst = [-1]

    def a_payload(leg: Leg, seq: int) -> bytes:
        k = seq - first_burst[0]
        if first_burst[0] >= 0 and k >= 0 and k % BURST_EVERY < BURST_PACKETS \
                and k // BURST_EVERY < bursts:
            return _TONES[1000]
        return silence(leg, seq)

    a = Leg("delay-a", dialed, a_payload)
    b = Leg("delay-b", dialed, silence)
    b.rx.keep_payloads = True
    try:
        await ua.call(a)
        await ua_b.call(b)
        # let both jitter buffers settle on a steady stream before timing anything
        await asyncio.sleep(2.0)
        first_burst[0] = a.seq + 5
        await asyncio.sleep(bursts * BURST_EVERY * 0.02 + 1.0)
        delays = []
        for n in range(bursts):
            seq = first_burst[0] + n * BURST_EVERY
            sent = a.sent_at.get(seq)
            if sent is None:
                continue
            for at, peak, payload in zip(b.rx.arrivals, b.rx.peaks, b.rx.payloads,
                                         strict=True):
                if at > sent and peak >= LOUD:
                    samples = np.abs(g711.decode(payload).astype(np.int32))
                    offset = int(np.argmax(samples >= ONSET)) if samples.max() >= ONSET else 0
                    delays.append(round((at - sent) * 1000 + offset / 8, 2))
                    break
        if not delays:
            raise RuntimeError("no burst came out of the other leg: the room carries no audio")
        return DelayResult(len(delays), delays, round(statistics.median(delays), 2),
                           max(delays), [round(x.setup_ms or 0, 2) for x in (a, b)])
    finally:
        await ua.hangup(a)
        await ua_b.hangup(b)
        await ua.close()
        if ua_b is not ua:
            await ua_b.close()


@dataclass
class RoomAudit:
    """One room of N probe legs: did every participant hear the speakers?"""

    participants: int
    placed: int
    failed: int
    heard_by: int  # legs that got >= 90% of packets and >= 90% of them loud
    window_s: float
    min_rx_ratio: float
    min_loud_ratio: float
    setup_p50_ms: float
    setup_p99_ms: float
    gateway: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.heard_by == self.participants

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    return round(float(np.percentile(np.array(values), p, method="higher")), 2)


async def big_room(sip: tuple[str, int], dialed: str, n: int, *, rate: float = 50.0,
                   window_s: float = 8.0, on_window: Any = None) -> RoomAudit:
    """`n` probe legs in one room; legs 0 and 1 talk (1 kHz, 500 Hz), everyone listens.

    Every leg sends RTP for the whole call (silence unless it is a speaker), as a
    real room would. With two speakers even the speakers have someone to hear.
    `on_window(start: bool)` is awaited at the start and end of the listening
    window (the caller samples the gateway's CPU there).
    """
    ua = ProbeUA(sip)
    await ua.start()
    legs = [Leg(f"room-{i}", dialed, silence) for i in range(n)]
    legs[0].payload = lambda leg, seq: _TONES[1000]
    if n > 1:
        legs[1].payload = lambda leg, seq: _TONES[500]
    failed = 0
    try:
        async def place(i: int, leg: Leg) -> bool:
            await asyncio.sleep(i / rate)
            try:
                await ua.call(leg)
                return True
            except SipError as exc:
                log.warning("probe call failed", extra={"leg": leg.name, "error": str(exc)})
                return False

        results = await asyncio.gather(*(place(i, leg) for i, leg in enumerate(legs)))
        failed = results.count(False)
        await asyncio.sleep(2.0)  # the last joiners' jitter buffers settle
        for leg in legs:
            leg.listening = False
            leg.rx.arrivals.clear()
            leg.rx.peaks.clear()
            leg.listening = True
        t0 = time.monotonic()
        if on_window:
            await on_window(True)
        await asyncio.sleep(window_s)
        if on_window:
            await on_window(False)
        span = time.monotonic() - t0
        expected = span / 0.02
        heard, rx_ratios, loud_ratios = 0, [], []
        for leg in legs:
            peaks = list(leg.rx.peaks)
            rx = len(peaks) / expected
            loud = sum(1 for p in peaks if p >= LOUD) / len(peaks) if peaks else 0.0
            rx_ratios.append(rx)
            loud_ratios.append(loud)
            heard += rx >= 0.9 and loud >= 0.9
        setups = [leg.setup_ms for leg in legs if leg.setup_ms is not None]
        return RoomAudit(n, n - failed, failed, heard, round(span, 2),
                         round(min(rx_ratios), 3), round(min(loud_ratios), 3),
                         percentile(setups, 50), percentile(setups, 99))
    finally:
        await asyncio.gather(*(ua.hangup(leg) for leg in legs if leg.remote_tag))
        await ua.close()
