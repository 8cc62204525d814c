"""Call quality: pjmedia's stream counters summed over a call, and an E-model MOS estimate.

Pure: no I/O, no pj objects. The SIP thread fills a `QualityTally` from each audio stream's
statistics just before pjsua destroys the stream (a call may have several streams in its
life: a re-INVITE re-creates it), and freezes it into a `CallQuality` when the call ends.

The MOS is ITU-T G.107's E-model, simplified the usual way for monitoring (as Voice Insights
and VoIPmonitor do): R = 93.2 - Id - Ie_eff, with the default values for every term that needs
a measurement nobody has (room noise, echo, loudness), Id from an effective one-way delay and
Ie_eff from the packet loss (G.107 eq. 7-29, random loss: BurstR = 1) with the codec's Ie and
Bpl from G.113 Appendix I. It is an estimate of what the gateway *received*, on the
narrowband scale (a G.722 call is rated as if narrowband: at most 4.41).
"""

from __future__ import annotations

from dataclasses import dataclass

# G.113 Appendix I: equipment impairment Ie and packet-loss robustness Bpl. G.711 with packet
# loss concealment (pjmedia conceals lost G.711 frames) is 25.1; the others get the same
# robustness (they all conceal) and no impairment of their own, which flatters opus at low
# bitrates a little: the estimate is about the network, not the codec.
CODEC_IMPAIRMENT: dict[str, tuple[float, float]] = {
    "PCMU": (0.0, 25.1),
    "PCMA": (0.0, 25.1),
    "G722": (0.0, 25.1),
    "opus": (0.0, 25.1),
}
UNKNOWN_CODEC = (0.0, 10.0)  # no concealment assumed: the pessimistic side
R_DEFAULT = 93.2  # G.107 R0 - Is with every default: a perfect narrowband call
PACKETIZATION_MS = 10.0  # what the simplified model adds for framing and decoding


def r_factor(codec: str, loss_pct: float, delay_ms: float) -> float:
    """G.107 transmission rating R for a one-way mouth-to-ear delay and a random loss."""
    ie, bpl = CODEC_IMPAIRMENT.get(codec, UNKNOWN_CODEC)
    ppl = min(max(loss_pct, 0.0), 100.0)
    ie_eff = ie + (95.0 - ie) * ppl / (ppl + bpl)
    d = max(delay_ms, 0.0)
    # G.107's Idd reduced to the two-slope form (G.107 Figure 2 / Cole-Rosenbluth fit).
    i_d = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    return R_DEFAULT - i_d - ie_eff


def mos_from_r(r: float) -> float:
    """G.107 Annex B: the estimated mean opinion score (1.0-4.5) for a rating R."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6


def effective_delay_ms(rtt_ms: float | None, jitter_ms: float) -> float:
    """One-way delay for the E-model: half the RTCP round trip (0 when no RTCP came back),
    twice the jitter (what a jitter buffer holds back for it) and the framing."""
    return (rtt_ms or 0.0) / 2 + 2 * jitter_ms + PACKETIZATION_MS


def mos(codec: str, loss_pct: float, rtt_ms: float | None, jitter_ms: float) -> float:
    """MOS estimate, rounded to two decimals."""
    r = r_factor(codec, loss_pct, effective_delay_ms(rtt_ms, jitter_ms))
    return round(mos_from_r(r), 2)


@dataclass(frozen=True)
class CallQuality:
    """What one call's received audio was like. Immutable: it crosses threads in CallEnded."""

    codec: str
    packets_received: int
    packets_lost: int
    jitter_ms: float  # mean RFC 3550 interarrival jitter of the received stream
    rtt_ms: float | None  # mean RTCP round trip; None when the peer sent no RTCP reports
    packets_sent: int = 0
    remote_lost: int = 0  # what the peer's RTCP receiver reports say it lost of ours

    @property
    def loss_pct(self) -> float:
        expected = self.packets_received + self.packets_lost
        return round(100.0 * self.packets_lost / expected, 2) if expected else 0.0

    @property
    def mos(self) -> float | None:
        """None when nothing was received: there is no audio to rate."""
        if self.packets_received == 0:
            return None
        return mos(self.codec, self.loss_pct, self.rtt_ms, self.jitter_ms)

    def as_json(self) -> dict[str, object]:
        return {
            "codec": self.codec,
            "packets_received": self.packets_received,
            "packets_lost": self.packets_lost,
            "loss_pct": self.loss_pct,
            "jitter_ms": round(self.jitter_ms, 2),
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "packets_sent": self.packets_sent,
            "remote_lost": self.remote_lost,
            "mos": self.mos,
        }


@dataclass
class StreamSample:
    """One audio stream's counters at its end (pjmedia's rtcp stat, converted to ms)."""

    codec: str
    rx_packets: int
    rx_lost: int
    jitter_ms: float
    jitter_samples: int
    rtt_ms: float
    rtt_samples: int
    tx_packets: int
    tx_lost: int


class QualityTally:
    """Sums the streams of one call. Lives on the SIP thread; frozen at the call's end."""

    MAX_COUNT = 2**40  # pjmedia's counters are 32-bit; a sum past this is garbage

    def __init__(self) -> None:
        self.codec = ""
        self.rx = self.lost = self.tx = self.tx_lost = 0
        self._jitter_sum = 0.0  # jitter weighted by its sample count
        self._jitter_n = 0
        self._rtt_sum = 0.0
        self._rtt_n = 0
        self.streams = 0

    def add(self, s: StreamSample) -> None:
        self.streams += 1
        self.codec = s.codec or self.codec
        self.rx = min(self.rx + max(s.rx_packets, 0), self.MAX_COUNT)
        self.lost = min(self.lost + max(s.rx_lost, 0), self.MAX_COUNT)
        self.tx = min(self.tx + max(s.tx_packets, 0), self.MAX_COUNT)
        self.tx_lost = min(self.tx_lost + max(s.tx_lost, 0), self.MAX_COUNT)
        if s.jitter_samples > 0 and s.jitter_ms >= 0:
            self._jitter_sum += s.jitter_ms * s.jitter_samples
            self._jitter_n += s.jitter_samples
        if s.rtt_samples > 0 and s.rtt_ms >= 0:
            self._rtt_sum += s.rtt_ms * s.rtt_samples
            self._rtt_n += s.rtt_samples

    def freeze(self) -> CallQuality | None:
        """The call's quality, or None when it never had an audio stream."""
        if self.streams == 0:
            return None
        return CallQuality(
            codec=self.codec,
            packets_received=self.rx,
            packets_lost=self.lost,
            jitter_ms=self._jitter_sum / self._jitter_n if self._jitter_n else 0.0,
            rtt_ms=self._rtt_sum / self._rtt_n if self._rtt_n else None,
            packets_sent=self.tx,
            remote_lost=self.tx_lost,
        )
