"""A G.711 RTP pcap for SIPp's play_pcap_audio, and a rewriter that drops every Nth RTP packet.

Pure Python (struct): classic libpcap files (either byte order, micro- or nanosecond
timestamps) with Ethernet or raw-IPv4 frames. SIPp replays a pcap's UDP payloads as they are
(only addresses and ports change), so a packet dropped from the file is a sequence-number gap
the gateway's RTP receiver counts as lost.

The tests build their own pcap (`write_alaw_tone`) rather than read one from outside the
repository; `drop_every` works on any such file, e.g. SIPp's own
`/usr/share/sip-tester/g711a.pcap`:  python -m tests.pcap IN OUT N
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import g711

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
_MAGICS = {  # magic as read little-endian -> (byte order, timestamp fraction per second)
    0xA1B2C3D4: ("<", 1_000_000), 0xD4C3B2A1: (">", 1_000_000),
    0xA1B23C4D: ("<", 1_000_000_000), 0x4D3CB2A1: (">", 1_000_000_000),
}
MAX_RECORD = 262_144  # a record larger than this is a broken file, not a packet


class PcapError(ValueError):
    pass


@dataclass(frozen=True)
class Record:
    ts_sec: int
    ts_frac: int
    data: bytes
    orig_len: int


def read(path: Path) -> tuple[bytes, str, int, list[Record]]:
    """(global header, byte order, link type, records)."""
    raw = path.read_bytes()
    if len(raw) < 24:
        raise PcapError("shorter than a pcap header")
    (magic,) = struct.unpack("<I", raw[:4])
    if magic not in _MAGICS:
        raise PcapError(f"not a classic pcap file (magic {magic:#x})")
    order, _ = _MAGICS[magic]
    link = struct.unpack(order + "I", raw[20:24])[0] & 0x0FFFFFFF
    records: list[Record] = []
    off = 24
    while off < len(raw):
        if off + 16 > len(raw):
            raise PcapError(f"truncated record header at byte {off}")
        ts, frac, incl, orig = struct.unpack(order + "IIII", raw[off:off + 16])
        if incl > MAX_RECORD or off + 16 + incl > len(raw):
            raise PcapError(f"bad record length {incl} at byte {off}")
        records.append(Record(ts, frac, raw[off + 16:off + 16 + incl], orig))
        off += 16 + incl
    return raw[:24], order, link, records


def _udp_payload(link: int, frame: bytes) -> bytes | None:
    if link == LINKTYPE_ETHERNET:
        if len(frame) < 14 or frame[12:14] != b"\x08\x00":
            return None
        ip = frame[14:]
    elif link == LINKTYPE_RAW:
        ip = frame
    else:
        raise PcapError(f"link type {link} not supported (Ethernet or raw IPv4 only)")
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
        return None
    ihl = (ip[0] & 0x0F) * 4
    return ip[ihl + 8:] if len(ip) >= ihl + 8 else None


def is_rtp(payload: bytes) -> bool:
    # version 2 and a payload type outside RTCP's 72-76 (RFC 5761's demultiplexing rule)
    return len(payload) >= 12 and payload[0] >> 6 == 2 and not 72 <= (payload[1] & 0x7F) <= 76


def rtp_packets(path: Path) -> Iterator[bytes]:
    _, _, link, records = read(path)
    for rec in records:
        payload = _udp_payload(link, rec.data)
        if payload is not None and is_rtp(payload):
            yield payload


def drop_every(src: Path, dst: Path, n: int) -> tuple[int, int]:
    """Copy `src` to `dst` without every `n`th RTP packet; returns (RTP packets in, dropped)."""
    if n < 2:
        raise ValueError("n must be at least 2 (n=1 would drop every packet)")
    header, order, link, records = read(src)
    out = [header]
    seen = dropped = 0
    for rec in records:
        payload = _udp_payload(link, rec.data)
        if payload is not None and is_rtp(payload):
            seen += 1
            if seen % n == 0:
                dropped += 1
                continue
        out.append(struct.pack(order + "IIII", rec.ts_sec, rec.ts_frac, len(rec.data),
                               rec.orig_len) + rec.data)
    dst.write_bytes(b"".join(out))
    return seen, dropped


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(payload: bytes, sport: int, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return b"\0" * 6 + b"\0\0\0\0\0\1" + b"\x08\x00" + ip + udp


def write_alaw_tone(path: Path, seconds: float, freq_hz: float = 1000.0,
                    dbfs: float = -20.0, ptime_ms: int = 20, jitter_ms: float = 0.0,
                    seed: int = 1) -> int:
    """A pcap of PCMA RTP (payload type 8) carrying a sine, one packet per `ptime_ms`, paced
    by its timestamps; returns the number of packets. SIPp takes the ports from the file
    only to tell streams apart (it sends from its media port to the callee's).

    `jitter_ms` delays each packet's capture time by a random 0..jitter_ms (below ptime, so
    the order stays): SIPp replays at those times, an RTP receiver measures the jitter
    (RFC 3550's estimate of uniform delays is about jitter_ms / 3)."""
    if not 0 <= jitter_ms < ptime_ms:
        raise ValueError("jitter_ms must be 0 to ptime_ms")
    rng = random.Random(seed)
    samples = 8 * ptime_ms
    count = int(seconds * 1000 / ptime_ms)
    ssrc = 0x4D56_5143
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)]
    for i in range(count):
        pcm = g711.tone(freq_hz, samples, dbfs, start=i * samples)
        rtp = struct.pack("!BBHII", 0x80, 8 | (0x80 if i == 0 else 0), i & 0xFFFF,
                          (i * samples) & 0xFFFFFFFF, ssrc) + g711.encode(pcm)
        frame = _frame(rtp, 6000, 6002)
        usec = i * ptime_ms * 1000 + int(rng.uniform(0, jitter_ms) * 1000)
        out.append(struct.pack("<IIII", 1_700_000_000 + usec // 1_000_000, usec % 1_000_000,
                               len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
    return count


if __name__ == "__main__":
    seen, dropped = drop_every(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
    print(f"{seen} RTP packets, dropped {dropped}")
