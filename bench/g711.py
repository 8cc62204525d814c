"""G.711 A-law in pure Python/numpy, for the benchmark's own RTP probe legs.

The probes must craft and inspect RTP payloads themselves (to time a tone burst
to the millisecond), so they cannot go through SIPp or pjsua2. Tables follow
ITU-T G.711 (the classic Sun g711.c formulation).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

_SEG_END = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _encode_one(pcm: int) -> int:
    pcm >>= 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    seg = next((i for i, end in enumerate(_SEG_END) if pcm <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1) & 0xF if seg < 2 else (pcm >> seg) & 0xF
    return aval ^ mask


def _decode_one(code: int) -> int:
    code ^= 0x55
    t = (code & 0xF) << 4
    seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & 0x80 else -t


@lru_cache(maxsize=1)
def _encode_table() -> npt.NDArray[np.uint8]:
    return np.array([_encode_one(v) for v in range(-32768, 32768)], dtype=np.uint8)


@lru_cache(maxsize=1)
def decode_table() -> npt.NDArray[np.int16]:
    return np.array([_decode_one(c) for c in range(256)], dtype=np.int16)


@lru_cache(maxsize=1)
def loudness_map() -> bytes:
    """A bytes.translate() table: A-law code -> |sample| >> 8 (0..127).

    `max(payload.translate(loudness_map()))` is the packet's peak in C speed, which
    keeps a Python receiver of hundreds of legs cheap enough to run beside the gateway.
    """
    return bytes(min(abs(int(v)) >> 8, 127) for v in decode_table())


SILENCE = _encode_one(0)  # 0xD5


def encode(samples: npt.NDArray[np.int16]) -> bytes:
    idx = samples.astype(np.int32) + 32768
    return bytes(_encode_table()[idx].tobytes())


def decode(payload: bytes) -> npt.NDArray[np.int16]:
    codes = np.frombuffer(payload, dtype=np.uint8)
    out: npt.NDArray[np.int16] = decode_table()[codes]
    return out


def tone(freq_hz: float, n: int, dbfs: float = -12.0, rate: int = 8000,
         start: int = 0) -> npt.NDArray[np.int16]:
    """`n` samples of a sine at `dbfs` (peak), phase-continuous from sample `start`."""
    t = (np.arange(n) + start) / rate
    amp = 32767 * 10 ** (dbfs / 20)
    return np.round(amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)
