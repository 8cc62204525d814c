"""docker-compose.yml and Dockerfile cannot be run here (no Docker engine), so they are
checked for what can go stale: every file, port and command they name exists and agrees
with configs/compose.yaml and the rest of the repo."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from gateway.cli import _parser
from gateway.config import Config, load
from tests.harness import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    """Arguments of each Dockerfile instruction `name`, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in text.splitlines()
            if line.strip().upper().startswith(name + " ")]


def service(name: str) -> dict[str, Any]:
    svc: dict[str, Any] = COMPOSE["services"][name]
    return svc


def gateway_config(command: list[str]) -> tuple[Config, list[str]]:
    """The config a `python -m gateway serve --config X` command line would load."""
    assert command[:3] == [".venv/bin/python", "-m", "gateway"], command
    args = _parser().parse_args(command[3:])  # the real CLI accepts it
    assert args.command == "serve" and args.config
    assert (ROOT / args.config).is_file(), args.config
    return load(ROOT / args.config), command[3:]


def published(svc: dict[str, Any]) -> set[tuple[int, str]]:
    out = set()
    for spec in svc["ports"]:
        port_part, _, proto = spec.partition("/")
        container = port_part.rsplit(":", 1)[1]
        lo, _, hi = container.partition("-")
        out.update((p, proto or "tcp") for p in range(int(lo), int(hi or lo) + 1))
    return out


def test_dockerfile_copies_and_runs_what_exists() -> None:
    assert instructions("FROM")[0].startswith("debian:bookworm")  # the Debian of setup.sh
    for args in instructions("COPY"):
        *sources, _ = args.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    runs = " ".join(instructions("RUN"))
    assert "scripts/setup.sh" in runs and (ROOT / "scripts/setup.sh").is_file()
    # pjsua2 is built the same way as on a developer machine: setup.sh runs the build script
    assert "sip/build/build_pjsua2.sh" in (ROOT / "scripts/setup.sh").read_text()
    cmd = yaml.safe_load(instructions("CMD")[0])
    assert cmd == service("minivoice")["command"]
    for m in re.finditer(r"check-config (\S+)", runs):
        load(ROOT / m.group(1))


def test_ports_match_the_config() -> None:
    svc = service("minivoice")
    cfg, _ = gateway_config(svc["command"])
    edge = cfg.edge
    assert edge.enabled and edge.listen == "0.0.0.0"
    ports = published(svc)
    wanted = {(edge.udp_port, "udp"), (edge.tcp_port, "tcp"), (edge.tls_port, "tcp"),
              (cfg.http.port, "tcp")}
    wanted |= {(p, "udp") for p in range(cfg.sip.rtp_port_start,
                                         cfg.sip.rtp_port_start + cfg.sip.rtp_port_range)}
    assert wanted <= ports, sorted(wanted - ports)
    # the gateway's own SIP port stays inside: only the edge is published
    assert (cfg.sip.port, "udp") not in ports and (cfg.sip.port, "tcp") not in ports
    assert cfg.sip.host == "127.0.0.1"
    exposed = set()
    for spec in " ".join(instructions("EXPOSE")).split():
        port, _, proto = spec.partition("/")
        lo, _, hi = port.partition("-")
        exposed.update((p, proto) for p in range(int(lo), int(hi or lo) + 1))
    assert exposed == ports
    # state lives in the volume: users, calls, the edge's TLS pair and secret
    vol = svc["volumes"][0].split(":")[1]
    for path in (cfg.database, edge.users_db, edge.runtime_dir):
        assert str(Path("/app") / path).startswith(vol + "/"), path
    health = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{cfg.http.port}/healthz" in health


def test_sipp_service_calls_the_edge_as_a_trusted_trunk() -> None:
    cfg, _ = gateway_config(service("minivoice")["command"])
    sipp = service("sipp")
    assert sipp["image"] == service("minivoice")["image"]
    assert sipp["network_mode"] == "service:minivoice"
    script = sipp["command"][-1]
    for path in re.findall(r"\b((?:edge|configs|bench)/\S+)", script):
        assert (ROOT / path).is_file(), path
    sipp_cmd = shlex.split(script.split("&&")[-1])
    assert sipp_cmd[0] == "sipp"
    assert sipp_cmd[sipp_cmd.index("-sf") + 1] == "/tmp/uac_trunk.xml"
    target = sipp_cmd[3]  # sipp -sf FILE TARGET
    assert target == f"127.0.0.1:{cfg.edge.udp_port}"
    source = sipp_cmd[sipp_cmd.index("-i") + 1]
    assert any(re.fullmatch(re.escape(source) + r"(/32)?", t) for t in cfg.edge.trusted), \
        (source, cfg.edge.trusted)
    service_number = sipp_cmd[sipp_cmd.index("-s") + 1]
    assert any(n in ("*", service_number) for a in cfg.applications for n in a.numbers)
    assert "@AUDIO@" in (ROOT / "edge/sipp/uac_trunk.xml").read_text()
    # and the tools it runs are what setup.sh installs into the image
    setup = (ROOT / "scripts/setup.sh").read_text()
    assert "sip-tester" in setup and "sox" in setup
