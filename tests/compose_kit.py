"""What the tests that really bring a docker-compose stack up share (tests/test_compose_stack.py,
tests/test_compose_cluster_live.py): a Docker daemon (the running one, or one started here),
`docker-compose` under the test's own project name, the edge's OPTIONS probe, the demo app's
recorded webhooks."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.gateway import FREE_PORTS_END, free_port
from tests.harness import ROOT


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Docker daemon to talk to: the running one, or one started here (and stopped after)."""
    missing = [b for b in ("docker", "docker-compose") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed "
                    "(apt-get install docker.io docker-compose)")
    if _docker_answers():
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.skip("no Docker daemon running, and none can be started here "
                    "(needs the dockerd binary and root)")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([dockerd], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _docker_answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()
            proc.wait(30)
            pytest.skip("dockerd could not be started here:\n" + log.read_text()[-1500:])
        time.sleep(1)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(60)


def free_host_port() -> int:
    """A port free for both UDP and TCP on every host address (the edge is published there)."""
    return free_port("0.0.0.0")


def free_udp_blocks(count: int, size: int = 100, lo: int = FREE_PORTS_END + 1,
                    hi: int = 65500) -> list[int]:
    """The first port of each of `count` blocks of `size` UDP ports free on every host address,
    for an RTP range published as it is. Above Linux's ephemeral range (32768-60999 by
    default), the ranges the other tests and the benchmark use (10000-32000) and the ports
    free_port() hands out (up to FREE_PORTS_END), where a fixed range like the compose
    files' default 10000-10099 can be taken."""
    starts: list[int] = []
    for start in range(lo, hi - size + 1, size):
        free = True
        for port in range(start, start + size):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("0.0.0.0", port))
                except OSError:
                    free = False
                    break
        if free:
            starts.append(start)
            if len(starts) == count:
                return starts
    raise AssertionError(f"no {count} free blocks of {size} UDP ports in {lo}-{hi}")


@dataclass
class Compose:
    """docker-compose on one compose file under its own project name (a developer's own stack,
    started under the default name, is left alone)."""

    project: str
    file: str
    network: str  # the compose file's network name
    env: dict[str, str]
    workdir: Path
    build_s: float = 0.0
    up_s: float = 0.0

    def _cmd(self, *args: str) -> list[str]:
        return ["docker-compose", "-p", self.project, "-f", self.file, *args]

    def run(self, *args: str, timeout: float = 300, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(self._cmd(*args), cwd=ROOT, env={**self.env, **(env or {})},
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} exited {r.returncode}:\n"
                                 f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n{self.logs()[-6000:]}")
        return r

    def logs(self, service: str = "") -> str:
        r = subprocess.run(self._cmd("logs", "--no-color", *([service] if service else [])),
                           cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60)
        return r.stdout

    def url(self, port_var: str, path: str) -> str:
        return f"http://127.0.0.1:{self.env[port_var]}{path}"

    def host_address(self) -> str:
        """The host's own address on the compose network (its bridge's gateway)."""
        r = subprocess.run(["docker", "network", "inspect", f"{self.project}_{self.network}"],
                           capture_output=True, text=True, check=True)
        ipam = json.loads(r.stdout)[0]["IPAM"]["Config"][0]
        if "Gateway" in ipam:
            return str(ipam["Gateway"])
        return str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))  # Docker's default

    def build(self, *args: str) -> None:
        """scripts/docker-build.sh: with the images built and the code unchanged every layer
        is cached (seconds); after a code change only the layers from its COPY on."""
        t0 = time.monotonic()
        build = subprocess.run([str(ROOT / "scripts" / "docker-build.sh"), *args], cwd=ROOT,
                               env=self.env, capture_output=True, text=True, timeout=3000)
        (self.workdir / "build.log").write_text(build.stdout + build.stderr)
        assert build.returncode == 0, (build.stdout + build.stderr)[-5000:]
        self.build_s = time.monotonic() - t0


def options_ok(port: int, transport: str = "udp") -> bool:
    """An OPTIONS to the edge's published port on 127.0.0.1 gets 200 (over UDP, TCP or TLS)."""
    if transport == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2.0)
        me = s.getsockname()[1]
        via = {"udp": "UDP", "tcp": "TCP", "tls": "TLS"}[transport]
        msg = (f"OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/{via} 127.0.0.1:{me};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
               f"From: <sip:probe@127.0.0.1>;tag={secrets.token_hex(4)}\r\n"
               f"To: <sip:probe@127.0.0.1>\r\nCall-ID: {secrets.token_hex(8)}@compose\r\n"
               "CSeq: 1 OPTIONS\r\nMax-Forwards: 5\r\nContent-Length: 0\r\n\r\n").encode()
        try:
            if transport == "udp":
                s.sendto(msg, ("127.0.0.1", port))
                return s.recv(4096).startswith(b"SIP/2.0 200")
            s.connect(("127.0.0.1", port))
            conn: socket.socket = s
            if transport == "tls":  # the edge's self-signed certificate: encryption is the point
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                conn = ctx.wrap_socket(s)
            conn.sendall(msg)
            return conn.recv(4096).startswith(b"SIP/2.0 200")
        except OSError:
            return False


def wait_edge(c: Compose, timeout_s: float = 60) -> None:
    """The edge answers OPTIONS on its published port: up, and the port mapping works."""
    port = int(c.env["MINIVOICE_SIP_PORT"])
    deadline = time.monotonic() + timeout_s
    while not options_ok(port):
        assert time.monotonic() < deadline, "the edge never answered:\n" + c.logs()[-6000:]
        time.sleep(1)


def app_events(c: Compose) -> list[dict[str, Any]]:
    """The webhooks the demo app (examples/app/app.py) received so far, oldest first."""
    with urllib.request.urlopen(c.url("MINIVOICE_APP_PORT", "/events"), timeout=5) as r:
        events: list[dict[str, Any]] = json.load(r)
    return events
