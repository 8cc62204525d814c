"""Repairing the header of a WAV file whose writer was killed before it closed the file.

pjmedia's WAV writer writes a 44-byte header with zero sizes when it opens the file and the
real RIFF and data sizes only when it closes it; a process killed meanwhile leaves a file
full of good audio that players refuse or read as empty. `plan_repair` works out, from the
first bytes of the file and its size alone, what to write: the sizes the header should hold,
and where. Pure: no I/O here, so every broken header can be tested.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER_PEEK = 4096  # bytes of the file plan_repair needs at most
MAX_CHUNKS = 16  # chunks before `data`: more is not a file we wrote
_U32_MAX = 0xFFFFFFFF


class WavHeaderError(ValueError):
    """The bytes are not a PCM WAV header this module can repair."""


@dataclass(frozen=True)
class WavRepair:
    """What to write: `riff_size` at offset 4, `data_size` at `data_size_offset`; the file is
    cut to `length` (a trailing partial sample frame is dropped). `changed` is False when the
    header was right already."""

    riff_size: int
    data_size_offset: int
    data_size: int
    length: int
    channels: int
    rate: int
    bits: int
    changed: bool

    @property
    def duration_s(self) -> float:
        return self.data_size / (self.rate * self.channels * self.bits // 8)


def plan_repair(head: bytes, file_size: int) -> WavRepair:
    """The repair of a WAV file of `file_size` bytes that starts with `head` (at least its
    first HEADER_PEEK bytes, or the whole file if shorter). Raises WavHeaderError when the
    header is not a PCM WAV with a `fmt ` chunk followed, eventually, by a `data` chunk."""
    if file_size < 0 or len(head) > file_size:
        raise WavHeaderError("file size smaller than the bytes read")
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise WavHeaderError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int, int] | None = None
    for _ in range(MAX_CHUNKS):
        if pos + 8 > len(head):
            raise WavHeaderError("no data chunk in the header")
        chunk_id = head[pos:pos + 4]
        (size,) = struct.unpack_from("<I", head, pos + 4)
        body = pos + 8
        if chunk_id == b"data":
            if fmt is None:
                raise WavHeaderError("data chunk before the fmt chunk")
            return _plan(head, file_size, pos, body, fmt)
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(head):
                raise WavHeaderError("fmt chunk too short")
            fmt = _check_fmt(*struct.unpack_from("<HHIIHH", head, body))
        elif not chunk_id.isascii() or not chunk_id.strip(b" ").isalnum():
            raise WavHeaderError(f"garbage chunk id {chunk_id!r}")
        pos = body + size + (size & 1)  # chunks are padded to an even length
    raise WavHeaderError(f"no data chunk within {MAX_CHUNKS} chunks")


def _check_fmt(tag: int, channels: int, rate: int, byte_rate: int, block: int,
               bits: int) -> tuple[int, int, int, int, int]:
    if tag != 1:
        raise WavHeaderError(f"format tag {tag} is not PCM")
    if not 1 <= channels <= 8 or bits not in (8, 16, 24, 32) or not 1000 <= rate <= 384000:
        raise WavHeaderError("implausible channels, sample size or rate")
    if block != channels * bits // 8 or byte_rate != rate * block:
        raise WavHeaderError("block align or byte rate disagree with the format")
    return tag, channels, rate, bits, block


def _plan(head: bytes, file_size: int, data_hdr: int, data_start: int,
          fmt: tuple[int, int, int, int, int]) -> WavRepair:
    _, channels, rate, bits, block = fmt
    if data_start > file_size:
        raise WavHeaderError("file ends inside the data chunk header")
    old_riff, = struct.unpack_from("<I", head, 4)
    old_data, = struct.unpack_from("<I", head, data_hdr + 4)
    if old_riff == file_size - 8 and 0 < old_data <= file_size - data_start \
            and old_data % block == 0:
        # Closed properly (possibly with chunks after the audio): leave it as it is.
        return WavRepair(riff_size=old_riff, data_size_offset=data_hdr + 4,
                         data_size=old_data, length=file_size, channels=channels, rate=rate,
                         bits=bits, changed=False)
    audio = file_size - data_start
    audio -= audio % block
    audio = min(audio, (_U32_MAX - (data_start - 8)) // block * block)
    riff = data_start - 8 + audio
    length = data_start + audio
    return WavRepair(riff_size=riff, data_size_offset=data_hdr + 4, data_size=audio,
                     length=length, channels=channels, rate=rate, bits=bits,
                     changed=(old_riff, old_data, length) != (riff, audio, file_size))
