"""`make cluster`: a whole cluster on one machine, from one file (configs/cluster.yaml):
redis-server, the demo application (examples/app/app.py), the gateway nodes, and the SIP
edge dispatching calls among them. Ctrl-C (or SIGTERM) stops all of it, edge first.

    python -m gateway.cluster configs/cluster.yaml

The file:

    runtime_dir: var/cluster        # node configs and databases, pid files, redis' directory
    redis: {port: 6390}             # redis-server started here, no persistence
    app: {port: 3000, secret: ...}  # the demo application (its secret = the applications')
    nodes:                          # each: a `python -m gateway serve` process
      - {node_id: node-a, sip_port: 5071, http_port: 8081, rtp_port_start: 10000}
    gateway: {...}                  # the config every node shares (sip/http hosts,
                                    # applications, edge with `address:`, cluster.secret)

Each node's config is `gateway` plus its own ports, database (in a directory of its own,
<runtime_dir>/<node_id>/, with its media cache and recordings) and cluster.node_id, written to
<runtime_dir>/<node_id>.yaml and checked before anything starts. The edge runs as
`python -m gateway edge` with the first node's config and `edge.dispatch` listing every node.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.cluster.config import NODE_ID
from gateway.config import ConfigError, from_dict
from gateway.strict import ValidationError, between, checked, length, parse

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RedisPart:
    port: int = checked(between(1, 65535), default=6390)


@dataclass(frozen=True)
class AppPart:
    port: int = checked(between(1, 65535), default=3000)
    secret: str = checked(length(8, 256), default="")


@dataclass(frozen=True)
class NodePart:
    node_id: str = checked(NODE_ID)
    sip_port: int = checked(between(1, 65535))
    http_port: int = checked(between(1, 65535))
    rtp_port_start: int = checked(between(1024, 65000))


@dataclass(frozen=True)
class Stack:
    gateway: dict[str, Any]
    nodes: tuple[NodePart, ...] = checked(
        lambda v: None if 1 <= len(v) <= 16 else "1 to 16 nodes")
    runtime_dir: str = checked(length(1, 4096), default="var/cluster")
    redis: RedisPart = field(default_factory=RedisPart)
    app: AppPart = field(default_factory=AppPart)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def node_configs(stack: Stack, source: str) -> dict[str, dict[str, Any]]:
    """Each node's full gateway config, checked (ConfigError with what to fix)."""
    ports = [p for n in stack.nodes for p in (n.sip_port, n.http_port)]
    if len({n.node_id for n in stack.nodes}) != len(stack.nodes):
        raise ConfigError(f"{source}: node ids must differ")
    if len(set(ports)) != len(ports):
        raise ConfigError(f"{source}: every node needs its own sip_port and http_port")
    run = Path(stack.runtime_dir)
    host = str(stack.gateway.get("sip", {}).get("host", "127.0.0.1"))
    dispatch = [f"{host}:{n.sip_port}" for n in stack.nodes]
    out = {}
    for n in stack.nodes:
        data = _merge(stack.gateway, {
            "sip": {"port": n.sip_port, "rtp_port_start": n.rtp_port_start},
            "http": {"port": n.http_port},
            # a directory per node: what lives beside the database (media-cache/ with its
            # LRU eviction and the tone files written at start, recordings/) is per node
            "database": str(run / n.node_id / f"{n.node_id}.db"),
            "cluster": {"node_id": n.node_id,
                        "redis_url": f"redis://127.0.0.1:{stack.redis.port}/0"},
            "edge": {"dispatch": dispatch},
        })
        cfg = from_dict(data, f"{source} (node {n.node_id})")
        if not (cfg.edge.enabled and cfg.edge.address):
            raise ConfigError(f"{source}: gateway.edge needs enabled: true and address: (the "
                              "edge runs on its own in front of the nodes)")
        out[n.node_id] = data
    return out


class Parts:
    """The stack's processes, started in order and stopped in reverse."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        import os
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})},
                                start_new_session=True)  # Ctrl-C reaches us; we stop them
        (self.run / f"{name}.pid").write_text(str(proc.pid))
        self.procs.append((name, proc))
        print(f"cluster: {name} started (pid {proc.pid})", flush=True)

    def dead(self) -> str | None:
        return next((n for n, p in self.procs if p.poll() is not None), None)

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            with contextlib.suppress(OSError):
                (self.run / f"{name}.pid").unlink()
            print(f"cluster: {name} stopped ({proc.returncode})", flush=True)


def _wait(check: Any, what: str, parts: Parts, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        dead = parts.dead()
        if dead is not None:
            raise RuntimeError(f"{dead} exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not up within {timeout:.0f} s")
        time.sleep(0.1)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _redis_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def run(path: str) -> int:
    try:
        data = yaml.safe_load(Path(path).read_text())
        stack = parse(Stack, data)
        nodes = node_configs(stack, path)
    except (OSError, yaml.YAMLError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"error: {path}: " + "; ".join(f"{d.path}: {d.reason}" for d in exc.details),
              file=sys.stderr)
        return 2
    run_dir = Path(stack.runtime_dir).resolve()
    (run_dir / "redis").mkdir(parents=True, exist_ok=True)
    paths = {}
    for node_id, cfg in nodes.items():
        paths[node_id] = run_dir / f"{node_id}.yaml"
        paths[node_id].write_text(yaml.safe_dump(cfg))
    parts = Parts(run_dir)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    # Python turns SIGINT into KeyboardInterrupt only if it was not ignored when the process
    # started, and a shell ignores it for a command it puts in the background: started that
    # way (a CI script run with `&`), the stack never saw Ctrl-C and ran on forever.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        redis = shutil.which("redis-server")
        if redis is None:
            raise RuntimeError("redis-server not found (scripts/setup.sh installs it)")
        parts.start("redis", [redis, "--port", str(stack.redis.port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no",
                              "--dir", str(run_dir / "redis")])
        _wait(lambda: _redis_up(stack.redis.port), "redis-server", parts)
        parts.start("app", [sys.executable, "examples/app/app.py"], env={
            "MINIVOICE_SECRET": stack.app.secret, "HOST": "127.0.0.1",
            "PORT": str(stack.app.port)})
        _wait(lambda: _http_ok(f"http://127.0.0.1:{stack.app.port}/healthz"), "the app", parts)
        for node in stack.nodes:
            parts.start(node.node_id, [sys.executable, "-m", "gateway", "serve", "--config",
                                       str(paths[node.node_id])])
        for node in stack.nodes:
            url = f"http://{nodes[node.node_id].get('http', {}).get('host', '127.0.0.1')}:" \
                  f"{node.http_port}/healthz"
            _wait(lambda url=url: _http_ok(url), node.node_id, parts)
        parts.start("edge", [sys.executable, "-m", "gateway", "edge", "--config",
                             str(paths[stack.nodes[0].node_id])])
        print("cluster: up (Ctrl-C stops it)", flush=True)
        while not stopping:
            dead = parts.dead()
            if dead is not None and dead not in {n.node_id for n in stack.nodes}:
                # A node may die (the others take over: that is the point); the rest may not.
                raise RuntimeError(f"{dead} exited")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        parts.stop()
    return code
