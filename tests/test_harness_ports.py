"""The test harness survives a port taken between free_port() and the gateway's bind (a CI
run lost a test to that once, with other test runs on the box): it starts the gateway again
on other ports. Also checks what the gateway says when its SIP port is taken."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness
from tests.harness import AppServer, app_config

pytestmark = pytest.mark.sip


@pytest.fixture
def taken() -> Iterator[int]:
    """A port held on UDP and TCP, as another gateway would hold it (one of free_port()'s:
    a port the kernel picks for UDP may be taken on TCP)."""
    for _ in range(50):
        port = harness.free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            try:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
            except OSError:  # taken since free_port() looked: another one
                continue
            t.listen()
            yield port
            return
    raise AssertionError("no port to hold")


@pytest.mark.parametrize("which", ["sip", "http"])
async def test_a_port_taken_before_the_bind_means_other_ports(
        tmp_path: Path, app: AppServer, taken: int, which: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = harness.free_port
    handed: list[int] = []

    def free_port() -> int:  # the first gateway's SIP (or HTTP) port is the taken one
        port = taken if len(handed) == (0 if which == "sip" else 1) else real()
        handed.append(port)
        return port

    monkeypatch.setattr(harness, "free_port", free_port)
    gw = await harness.start_gateway(tmp_path, [app_config(app)])
    try:
        assert len(handed) == 4, handed  # two ports per attempt, two attempts
        assert taken not in (gw.sip_port, gw.http_port)
        first = (tmp_path / f"gateway-{handed[0]}.log").read_text(errors="replace")
        # one clear line and exit 2, as for a config error; pjsua's reason, not "Error:"
        said = {"sip": f"error: cannot start SIP on 127.0.0.1:{taken}: Error: ",
                "http": f"error: cannot listen for HTTP on 127.0.0.1:{taken}: "}[which]
        line = next((x for x in first.splitlines() if x.startswith(said)), "")
        assert "address already in use" in line.lower(), first[-2000:]
        assert "Traceback" not in first.replace("sip engine failed to start", ""), first[-3000:]
        assert "Unclosed client session" not in first, first[-2000:]
    finally:
        assert gw.stop() == 0
