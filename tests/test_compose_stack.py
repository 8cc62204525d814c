"""The container stack of docker-compose.yml, for real: images built, services up, a softphone
registered at the published edge port, a SIPp trunk call into the same room, audio and
webhooks checked, everything torn down.

Needs Docker and docker-compose (1.29). With no daemon running it starts `dockerd` itself
when it can (root, binary installed), and skips with the reason otherwise. The first build
compiles pjsua2 inside the image (minutes); later builds reuse its layer (`make compose-test`).
"""

from __future__ import annotations

import asyncio
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
import yaml

from bench.gateway import free_port
from tests.audio import levels
from tests.harness import ROOT, Phonebank

pytestmark = [pytest.mark.compose, pytest.mark.sip, pytest.mark.timeout(3600)]

PROJECT = "minivoicetest"  # its own compose project: a developer's own stack is left alone
PASSWORD = "compose-test-password-1"
CONFIG = yaml.safe_load((ROOT / "configs" / "compose.yaml").read_text())
EDGE_IP = CONFIG["edge"]["listen"]
SIPP_IP = CONFIG["edge"]["trusted"][0].split("/")[0]


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


def _free_port() -> int:
    """A port free for both UDP and TCP on every host address (the edge is published there)."""
    return free_port("0.0.0.0")


@dataclass
class Compose:
    env: dict[str, str]
    workdir: Path
    build_s: float = 0.0
    up_s: float = 0.0

    def run(self, *args: str, timeout: float = 300, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["docker-compose", "-p", PROJECT, *args], cwd=ROOT,
                           env={**self.env, **(env or {})}, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} exited {r.returncode}:\n"
                                 f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n{self.logs()[-6000:]}")
        return r

    def logs(self, service: str = "") -> str:
        r = subprocess.run(["docker-compose", "-p", PROJECT, "logs", "--no-color",
                            *([service] if service else [])], cwd=ROOT, env=self.env,
                           capture_output=True, text=True, timeout=60)
        return r.stdout

    def url(self, port_var: str, path: str) -> str:
        return f"http://127.0.0.1:{self.env[port_var]}{path}"

    def host_address(self) -> str:
        """The host's own address on the compose network (its bridge's gateway)."""
        r = subprocess.run(["docker", "network", "inspect", f"{PROJECT}_minivoice"],
                           capture_output=True, text=True, check=True)
        ipam = json.loads(r.stdout)[0]["IPAM"]["Config"][0]
        if "Gateway" in ipam:
            return str(ipam["Gateway"])
        return str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))  # Docker's default


@pytest.fixture(scope="module")
def stack(docker: None) -> Iterator[Compose]:
    # Logs kept in the repository's state directory: pytest's temporary directories are pruned.
    work = ROOT / "var" / "compose-test"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ,
           "MINIVOICE_SIP_PORT": str(_free_port()), "MINIVOICE_TLS_PORT": str(_free_port()),
           "MINIVOICE_HTTP_PORT": str(_free_port()), "MINIVOICE_APP_PORT": str(_free_port())}
    c = Compose(env, work)
    t0 = time.monotonic()
    build = subprocess.run([str(ROOT / "scripts" / "docker-build.sh")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=3000)
    (work / "build.log").write_text(build.stdout + build.stderr)
    assert build.returncode == 0, (build.stdout + build.stderr)[-5000:]
    c.build_s = time.monotonic() - t0
    c.run("down", "-v", "--remove-orphans", check=False)  # leftovers of an interrupted run
    t0 = time.monotonic()
    try:
        c.run("up", "-d", "app", "gateway", "edge", timeout=600)
        _wait_edge(c)
        c.up_s = time.monotonic() - t0
        yield c
    finally:
        (work / "compose.log").write_text(c.logs())
        c.run("down", "-v", "--remove-orphans", "-t", "20", check=False, timeout=300)
        print(f"\ncompose: build {c.build_s:.0f} s, up {c.up_s:.0f} s, logs in {work}")


def _options_ok(port: int, transport: str = "udp") -> bool:
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


def _wait_edge(c: Compose, timeout_s: float = 60) -> None:
    """The edge answers OPTIONS on its published port: up, and the port mapping works."""
    port = int(c.env["MINIVOICE_SIP_PORT"])
    deadline = time.monotonic() + timeout_s
    while not _options_ok(port):
        assert time.monotonic() < deadline, "the edge never answered:\n" + c.logs()[-6000:]
        time.sleep(1)


def _events(c: Compose) -> list[dict[str, Any]]:
    with urllib.request.urlopen(c.url("MINIVOICE_APP_PORT", "/events"), timeout=5) as r:
        events: list[dict[str, Any]] = json.load(r)
    return events


async def _wait_completed(c: Compose, count: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        events = await asyncio.to_thread(_events, c)
        if sum(e["event"] == "call.completed" for e in events) >= count:
            return events
        assert time.monotonic() < deadline, f"webhooks so far: {events}"
        await asyncio.sleep(0.5)


def test_services_run_unprivileged_and_gateway_sip_stays_on_its_network(stack: Compose) -> None:
    for service in ("gateway", "edge", "app"):
        uid = stack.run("exec", "-T", service, "id", "-u").stdout.strip()
        assert uid != "0", f"{service} runs as root"
    # /proc/net/{udp,tcp}: local address as little-endian hex; the SIP port only on the
    # compose network address, never on 0.0.0.0 (which would be every network, published too)
    host = CONFIG["sip"]["host"]
    want = "".join(f"{int(b):02X}" for b in reversed(host.split("."))) + \
        f":{CONFIG['sip']['port']:04X}"
    table = stack.run("exec", "-T", "gateway", "cat", "/proc/net/udp", "/proc/net/tcp").stdout
    sip = [line.split()[1] for line in table.splitlines()[1:]
           if line.split()[1:2] and line.split()[1].endswith(f":{CONFIG['sip']['port']:04X}")]
    assert sip and set(sip) == {want}, sip
    with urllib.request.urlopen(stack.url("MINIVOICE_HTTP_PORT", "/healthz"), timeout=5) as r:
        assert r.status == 200
    # the edge's three published transports (TCP needs /etc/protocols in the image)
    assert _options_ok(int(stack.env["MINIVOICE_SIP_PORT"]), "tcp")
    assert _options_ok(int(stack.env["MINIVOICE_TLS_PORT"]), "tls")


def test_gateway_refuses_calls_that_bypass_the_edge(stack: Compose) -> None:
    """The compose network is shared with other containers (and the host): an INVITE sent
    straight to the gateway, not through the edge's authentication, is refused."""
    host, port = CONFIG["sip"]["host"], CONFIG["sip"]["port"]
    me = stack.host_address()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((me, 0))
        s.settimeout(5)
        lport = s.getsockname()[1]
        sdp = (f"v=0\r\no=- 1 1 IN IP4 {me}\r\ns=-\r\nc=IN IP4 {me}\r\nt=0 0\r\n"
               "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
        invite = (f"INVITE sip:1001@{host}:{port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP {me}:{lport};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                  f"From: <sip:mallory@{me}>;tag={secrets.token_hex(4)}\r\n"
                  f"To: <sip:1001@{host}>\r\nCall-ID: {secrets.token_hex(8)}@bypass\r\n"
                  f"CSeq: 1 INVITE\r\nContact: <sip:mallory@{me}:{lport}>\r\n"
                  "Max-Forwards: 70\r\nContent-Type: application/sdp\r\n"
                  f"Content-Length: {len(sdp)}\r\n\r\n{sdp}")
        s.sendto(invite.encode(), (host, port))
        code = 100
        while code < 200:
            code = int(s.recv(65535).split(b" ", 2)[1])
    assert code == 403
    assert "invite.refused" in stack.logs("gateway")
    assert not [e for e in _events(stack) if e["call"]["from"] == "mallory"]


async def test_phone_and_sipp_trunk_meet_in_a_room(stack: Compose, tmp_path: Path) -> None:
    stack.run("exec", "-T", "gateway", ".venv/bin/python", "-m", "gateway", "users",
              "--config", "configs/compose.yaml", "add", "alice", "--password", PASSWORD)
    # The phone registers and calls at the edge's published port, then talks to the addresses
    # the edge and the gateway write in Record-Route and SDP, on the compose network: so it
    # lives on the host's address there (as a LAN phone on its LAN address), and reaches the
    # published port at that address too (from there, 127.0.0.1 is not a way in).
    host = stack.host_address()
    edge = f"{host}:{stack.env['MINIVOICE_SIP_PORT']}"
    phone = await Phonebank.start(tmp_path, "--bind", host)
    rec = tmp_path / "alice.wav"
    try:
        phone.send(op="register", user="alice", password=PASSWORD, domain=edge,
                   registrar=f"sip:{edge}")
        assert (await phone.wait("registered", None, user="alice", timeout=20))["code"] == 200
        phone.call("a", f"sip:1001@{edge}", account="alice", tone_hz=440, record=str(rec))
        media = await phone.wait("media", "a", timeout=20)
        await asyncio.sleep(1.0)
        # The trunk call: SIPp from its trusted address, a 1000 Hz tone, 6 s in room-1001.
        loop = asyncio.get_running_loop()
        started = loop.time()
        sipp = await asyncio.to_thread(
            stack.run, "--profile", "load", "run", "--rm", "sipp", timeout=180,
            env={"SIPP_CALLS": "1", "SIPP_LIMIT": "1", "SIPP_RATE": "1", "SIPP_HOLD_MS": "6000",
                 "SIPP_TONE_HZ": "1000", "SIPP_NUMBER": "1001"})
        ended = loop.time()
        assert "Successful call" in sipp.stdout + sipp.stderr or sipp.returncode == 0, sipp
        await asyncio.sleep(0.5)
        phone.hangup("a")
        await phone.wait("ended", "a", timeout=15)
    finally:
        await phone.close()

    # What the phone heard while SIPp was in the room: SIPp's tone, never its own.
    t0 = media["at"]
    heard = levels(rec, 1000, 440, start_s=started - t0 + 2.5, end_s=ended - t0 - 1.5)
    assert heard[1000] > -40 and heard[440] < -50, heard

    events = await _wait_completed(stack, count=2)
    by_call: dict[str, list[str]] = {}
    for e in events:
        by_call.setdefault(e["call"]["id"], []).append(e["event"])
    assert len(by_call) == 2, by_call
    for kinds in by_call.values():
        assert kinds == ["call.initiated", "call.answered", "call.completed"], by_call
    callers = {e["call"]["from"] for e in events if e["event"] == "call.completed"}
    assert "alice" in callers, callers
    assert all(e["call"]["to"] == "1001" for e in events)

    edge_log = stack.logs("edge")
    assert "edge.registered" in edge_log and "user=alice" in edge_log, edge_log[-3000:]
    assert f"edge.invite src={SIPP_IP} user=- to=1001" in edge_log, edge_log[-3000:]
