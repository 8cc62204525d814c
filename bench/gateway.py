"""Start and stop the gateway under test, exactly as an operator would run it.

`python -m gateway serve --config <generated from configs/bench.yaml>` in its own
process, so /proc/<pid> is the gateway alone. For experiments (a pjsua2 setting,
the SIP thread's poll interval, another pjsua2 build) the same command runs
through `bench.patched`, which applies the change in that process only: the
repository's gateway code is never edited by the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "bench.yaml"

log = logging.getLogger("bench.gateway")


_STRIDE = 8
# free_port() stays below this; the compose tests publish whole RTP ranges above it
# (tests/compose_kit.free_udp_blocks), and a port handed out inside such a range before
# Docker publishes it would make `docker-compose up` fail.
FREE_PORTS_END = 63999


def _listen_ports() -> list[int]:
    """Ports above the kernel's ephemeral range, in an order of this process's own.

    A port the kernel handed out for a moment (bind to 0, close) is still ephemeral: any
    outgoing connection may take it before the gateway binds it, and a CI run lost a gateway
    to exactly that (EADDRINUSE on its HTTP port). Ports above ip_local_port_range are never
    picked by the kernel, so only an explicit bind can collide, and the cycle below hands a
    port out again only after every other one."""
    high = 60999
    with contextlib.suppress(OSError, ValueError, IndexError):
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[1])
    if FREE_PORTS_END - high < 1000:
        return []  # no room above it on this machine: the kernel picks (the old way)
    # Two ports handed out one after the other are never neighbours: some programs bind the
    # next port up as well (baresip's SIP over TLS on port + 1 collided with the control
    # port handed out after its SIP port).
    ports = [p for offset in range(_STRIDE)
             for p in range(high + 1 + offset, FREE_PORTS_END + 1, _STRIDE)]
    start = random.randrange(len(ports))
    return ports[start:] + ports[:start]


_LISTEN_PORTS = _listen_ports()
_port_cycle = itertools.cycle(_LISTEN_PORTS)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on UDP and TCP alike on `host` (SIP on UDP, HTTP on TCP), outside the
    kernel's ephemeral range."""
    for _ in range(200):
        port = next(_port_cycle) if _LISTEN_PORTS else 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            try:
                u.bind((host, port))
                port = int(u.getsockname()[1])
                t.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def render_config(workdir: Path, sip_port: int, http_port: int,
                  sip_overrides: dict[str, Any] | None = None,
                  sections: dict[str, dict[str, Any]] | None = None,
                  event_url: str | None = None,
                  answer_url: str | None = None) -> dict[str, Any]:
    """configs/bench.yaml with this run's ports and paths; `sections` adds or replaces
    settings per top-level section (e.g. {"hooks": {"allow_private": [...]}}); `event_url`
    and `answer_url` replace the application's (the embedded demo app's; with `answer_url`
    the demo app is switched off)."""
    text = CONFIG.read_text()
    text = text.replace("{sip_port}", str(sip_port)).replace("{http_port}", str(http_port))
    text = text.replace("{database}", str(workdir / "gateway.db"))
    cfg: dict[str, Any] = yaml.safe_load(text)
    cfg["sip"]["port"] = int(cfg["sip"]["port"])
    cfg["http"]["port"] = int(cfg["http"]["port"])
    cfg["sip"].update(sip_overrides or {})
    for name, values in (sections or {}).items():
        cfg.setdefault(name, {}).update(values)
    if event_url:
        for app in cfg["applications"]:
            app["event_url"] = event_url
    if answer_url:
        cfg["demo"] = False
        for app in cfg["applications"]:
            app["answer_url"] = answer_url
    return cfg


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    sip_port: int
    http_port: int
    log_path: Path
    command: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def get(self, path: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(self.base + path) as r:
            return await r.json()

    async def call_api(self, method: str, path: str,
                       body: Any = None) -> tuple[int, Any]:
        """One REST request (the bench config has no API tokens: loopback, admin);
        the status and the JSON body (None when the body is empty or not JSON)."""
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.request(
                method, self.base + path, json=body) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text) if text else None
            except ValueError:
                return r.status, None

    async def participants(self) -> dict[str, int]:
        """Room name -> member count, from the gateway's own view (GET /v1/conferences)."""
        body = await self.get("/v1/conferences")
        return {c["room"]: len(c["participants"]) for c in body["conferences"]}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (the gateway hangs up its calls), SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("gateway did not stop; killing", extra={"pid": self.proc.pid})
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


async def start(workdir: Path, *, log_level: str = "WARNING",
                sip_overrides: dict[str, Any] | None = None,
                patch: dict[str, Any] | None = None,
                pjsua2_dir: Path | None = None,
                sections: dict[str, dict[str, Any]] | None = None,
                event_url: str | None = None,
                answer_url: str | None = None) -> Gateway:
    """Start a gateway and wait for /healthz. `patch` and `pjsua2_dir` are experiments."""
    workdir.mkdir(parents=True, exist_ok=True)
    sip_port, http_port = free_port(), free_port()
    cfg = render_config(workdir, sip_port, http_port, sip_overrides, sections, event_url,
                        answer_url)
    cfg_path = workdir / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ)
    module = "gateway"
    if patch:
        module = "bench.patched"
        env["MINIVOICE_BENCH_PATCH"] = json.dumps(patch)
    if pjsua2_dir is not None:
        # PYTHONPATH comes before site-packages: this pjsua2 shadows the venv's one
        env["PYTHONPATH"] = f"{pjsua2_dir}:{ROOT}"
    command = [sys.executable, "-m", module, "serve", "--config", str(cfg_path),
               "--log-level", log_level]
    log_path = workdir / "gateway.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    gw = Gateway(proc, sip_port, http_port, log_path, command)
    deadline = time.monotonic() + 30
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as s:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("gateway exited:\n" + gw.tail())
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with s.get(gw.base + "/healthz") as r:
                        if r.status == 200:
                            return gw
                if time.monotonic() > deadline:
                    raise RuntimeError("gateway did not become healthy:\n" + gw.tail())
                await asyncio.sleep(0.1)
    except BaseException:
        # also when the bench is interrupted while the gateway starts: nobody else has it
        gw.stop()
        raise
