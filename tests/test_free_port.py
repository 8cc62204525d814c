"""free_port(): the ports tests and the benchmark give their servers.

A CI run lost a gateway because the port it had been handed was an ephemeral one the kernel
gave to some client connection before the gateway bound it. Ports handed out now lie above
the kernel's ephemeral range and do not repeat soon."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

from bench.gateway import FREE_PORTS_END, free_port


def test_ports_are_above_the_ephemeral_range_and_distinct() -> None:
    high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[1])
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    # neighbours are never handed out one after the other (programs that also bind port + 1)
    assert all(abs(a - b) > 2 for a, b in itertools.pairwise(ports))
    if FREE_PORTS_END - high >= 1000:
        # above the ephemeral range, below the compose tests' published RTP ranges
        assert all(high < p <= FREE_PORTS_END for p in ports)


def test_a_port_in_use_on_udp_or_tcp_is_skipped() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        taken_udp, taken_tcp = free_port(), free_port()
        u.bind(("127.0.0.1", taken_udp))
        t.bind(("127.0.0.1", taken_tcp))
        # the cycle comes back round to both only after every other port; a whole lap must
        # still never hand out either while they are bound
        seen = {free_port() for _ in range(FREE_PORTS_END + 1 - 61000)}
        assert taken_udp not in seen and taken_tcp not in seen
