"""docker-compose.yml, the Dockerfile and configs/compose.yaml agree with each other and with
the repository: every file, stage, address, port and command they name. Runs everywhere, in
a second; tests/test_compose_stack.py runs the stack itself where Docker is available."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
import shlex
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.gateway import free_port
from gateway import cli
from gateway.cli import _parser, build_config
from gateway.config import Config, load
from gateway.edge import kamailio
from gateway.edge.config import from_edge
from tests.harness import PYTHON, ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CFG = load(ROOT / "configs" / "compose.yaml")
MONITORING = ("prometheus", "grafana")  # the optional `monitoring` profile


def service(name: str) -> dict[str, Any]:
    svc: dict[str, Any] = COMPOSE["services"][name]
    return svc


def stages() -> dict[str, list[tuple[str, str]]]:
    """Dockerfile stage name -> its (instruction, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, args = line.strip().partition(" ")
        if word.upper() == "FROM":
            current = args.split()[-1] if " AS " in args.upper() else args
            out[current] = []
        elif current:
            out[current].append((word.upper(), args.strip()))
    return out


def address(name: str) -> str:
    addr: str = service(name)["networks"]["minivoice"]["ipv4_address"]
    return addr


def published(svc: dict[str, Any]) -> set[tuple[str, int, int, str]]:
    """(host address, host port, container port, protocol) for every published port, with
    ${VAR:-default} taken at its default."""
    out: set[tuple[str, int, int, str]] = set()
    for spec in svc.get("ports", []):
        spec = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", spec)
        ports, _, proto = spec.partition("/")
        parts = ports.split(":")
        host_addr = parts[0] if len(parts) == 3 else "0.0.0.0"
        host, container = parts[-2], parts[-1]
        h_lo, _, h_hi = host.partition("-")
        c_lo, _, c_hi = container.partition("-")
        hs = range(int(h_lo), int(h_hi or h_lo) + 1)
        cs = range(int(c_lo), int(c_hi or c_lo) + 1)
        assert len(hs) == len(cs), spec
        out.update((host_addr, h, c, proto or "tcp") for h, c in zip(hs, cs, strict=True))
    return out


def command_config(name: str) -> tuple[Config, list[str]]:
    """The config a service's `python -m gateway ...` command line runs with."""
    command = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", c) for c in service(name)["command"]]
    assert command[:3] == [".venv/bin/python", "-m", "gateway"], command
    args = _parser().parse_args(command[3:])  # the real CLI accepts it
    assert (ROOT / args.config).is_file(), args.config
    return (build_config(args) if args.command == "serve" else load(ROOT / args.config)), \
        command[3:]


def test_dockerfile_copies_what_exists_and_has_every_target() -> None:
    all_stages = stages()
    for name, instructions in all_stages.items():
        for word, args in instructions:
            if word == "COPY" and not args.startswith("--from"):
                *sources, _ = args.split()
                for src in sources:
                    assert (ROOT / src).exists(), f"stage {name} copies missing {src}"
    for name, svc in COMPOSE["services"].items():
        if name in MONITORING:  # pulled images (tests/test_dashboards.py checks them)
            continue
        assert svc["build"]["target"] in all_stages, name
        assert svc["build"]["args"]["BASE_IMAGE"].startswith("${MINIVOICE_BASE_IMAGE:-")
    # pjsua2 is built as on a developer machine, in a stage that copies only its build inputs
    pj = " ".join(args for word, args in all_stages["pjsua2"] if word in ("COPY", "RUN"))
    assert "sip/build/build_pjsua2.sh" in pj
    assert {args.split()[0] for word, args in all_stages["pjsua2"] if word == "COPY"} == \
        {"scripts/apt-sid-src.sh", "sip/build/"}
    assert "scripts/apt-sid-src.sh" in (ROOT / "sip/build/build_pjsua2.sh").read_text()
    # the long-running services are not root
    for name in ("gateway", "edge", "app"):
        users = [args for word, args in all_stages[name] if word == "USER"]
        assert users and users[-1] not in ("root", "0"), name
    # the image's default command is the service's
    for name in ("gateway", "edge"):
        cmd = [args for word, args in all_stages[name] if word == "CMD"][-1]
        assert yaml.safe_load(cmd) == [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", c)
                                       for c in service(name)["command"]][:6]
    for word, args in all_stages["gateway"]:
        if word == "RUN" and "check-config" in args:
            load(ROOT / args.split("check-config", 1)[1].split()[0])


def test_addresses_agree_with_the_config() -> None:
    net = ipaddress.ip_network(COMPOSE["networks"]["minivoice"]["ipam"]["config"][0]["subnet"])
    assert all(ipaddress.ip_address(address(s)) in net for s in COMPOSE["services"])
    gw, _ = command_config("gateway")
    edge_cfg, _ = command_config("edge")
    assert gw == CFG and edge_cfg == CFG
    assert CFG.sip.host == address("gateway") and CFG.sip.public_host == address("gateway")
    assert CFG.edge.enabled and CFG.edge.address == CFG.edge.listen == address("edge")
    assert CFG.edge.trusted == (f"{address('sipp')}/32",)  # the load generator, nothing else
    # Docker's proxy delivers every published-port caller from the bridge's own address:
    # trusting it would let anyone call without a password.
    bridge = COMPOSE["networks"]["minivoice"]["ipam"]["config"][0]["gateway"]
    assert not any(ipaddress.ip_address(bridge) in ipaddress.ip_network(t)
                   for t in CFG.edge.trusted)
    kamailio.check(CFG)  # the rules serve and edge apply before starting


def test_ports() -> None:
    e = CFG.edge
    edge_ports = {(c, p) for _, _, c, p in published(service("edge"))}
    assert edge_ports == {(e.udp_port, "udp"), (e.tcp_port, "tcp"), (e.tls_port, "tcp")}
    gw = published(service("gateway"))
    rtp = range(CFG.sip.rtp_port_start, CFG.sip.rtp_port_start + CFG.sip.rtp_port_range)
    # SDP names the container's ports: published at the same numbers
    assert {(h, c) for _, h, c, p in gw if p == "udp"} == {(p, p) for p in rtp}
    assert ("127.0.0.1", CFG.http.port) in {(a, c) for a, _, c, p in gw if p == "tcp"}
    # the gateway's SIP port is published by no service: only the edge reaches it
    for name, svc in COMPOSE["services"].items():
        assert all(c != CFG.sip.port for _, _, c, _ in published(svc)), name
    assert f"127.0.0.1:{CFG.http.port}/healthz" in " ".join(service("gateway")["healthcheck"]
                                                            ["test"])


def test_state_volume_is_shared_by_gateway_and_edge() -> None:
    mounts = {name: service(name)["volumes"][0].split(":") for name in ("gateway", "edge")}
    assert mounts["gateway"] == mounts["edge"]
    volume, target = mounts["gateway"]
    assert volume in COMPOSE["volumes"]
    for path in (CFG.database, CFG.edge.users_db, CFG.edge.runtime_dir):
        assert str(Path("/app") / path).startswith(target + "/"), path


def test_app_is_the_configured_application() -> None:
    (app,) = CFG.applications
    assert service("app")["environment"]["MINIVOICE_SECRET"] == app.secret
    for url in (app.answer_url, app.event_url):
        assert url is not None and url.startswith("http://app:3000/"), url
    assert {c for _, _, c, _ in published(service("app"))} == {3000}
    assert (ROOT / "examples" / "app" / "app.py").is_file()


def test_sipp_calls_the_edge_as_a_trusted_trunk() -> None:
    sipp = service("sipp")
    assert sipp["profiles"] == ["load"]
    script = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", sipp["command"][-1])
    for path in re.findall(r"\b((?:edge|configs|bench)/\S+)", script):
        assert (ROOT / path).is_file(), path
    cmd = shlex.split(script.split("&&")[-1])
    assert cmd[0] == "sipp" and cmd[cmd.index("-sf") + 1] == "/tmp/uac_trunk.xml"
    assert cmd[3] == f"{CFG.edge.listen}:{CFG.edge.udp_port}"
    assert cmd[cmd.index("-i") + 1] == cmd[cmd.index("-mi") + 1] == address("sipp")
    assert "@AUDIO@" in (ROOT / "edge/sipp/uac_trunk.xml").read_text()
    runs = " ".join(args for word, args in stages()["sipp"] if word == "RUN")
    assert "sip-tester" in runs and "sox" in runs


# ------------------------------------------------------------- the edge on its own --------

def _with_sip_host(host: str, address: str | None) -> Config:
    return dataclasses.replace(CFG, sip=dataclasses.replace(CFG.sip, host=host),
                               edge=dataclasses.replace(CFG.edge, address=address))


def test_a_separate_edge_allows_one_specific_gateway_address() -> None:
    kamailio.check(_with_sip_host("172.29.60.20", "172.29.60.10"))
    with pytest.raises(kamailio.EdgeError, match="one specific address"):
        kamailio.check(_with_sip_host("0.0.0.0", "172.29.60.10"))
    # without edge.address, the gateway behind a child edge stays on loopback as before
    with pytest.raises(kamailio.EdgeError, match="loopback"):
        kamailio.check(_with_sip_host("172.29.60.20", None))
    kamailio.check(_with_sip_host("127.0.0.1", None))


def test_edge_command_needs_a_config_with_a_separate_edge(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    demo = ROOT / "configs" / "demo.yaml"
    assert load(demo).edge.address is None
    assert cli._edge_only(str(demo)) == 2  # what `python -m gateway edge --config` runs
    assert "edge.address" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "compose.yaml").read_text()
                   .replace("host: 172.29.60.20", "host: 0.0.0.0"))
    assert cli.main(["check-config", str(bad)]) == 2
    assert "one specific address" in capsys.readouterr().err


def test_only_the_separate_edge_may_call_the_gateway() -> None:
    sep = CFG.edge
    assert from_edge(sep, f"{sep.address}:5060") and from_edge(sep, f"{sep.address}:40000")
    assert not from_edge(sep, "172.29.60.40:5060")  # the trunk: it must go through the edge
    assert not from_edge(sep, "172.29.60.1:5060") and not from_edge(sep, "garbage")
    v6 = dataclasses.replace(sep, address="fd00::10")
    assert from_edge(v6, "[fd00::10]:5060") and not from_edge(v6, "[fd00::11]:5060")
    # a child edge: the gateway is on loopback, nothing else reaches it
    assert from_edge(dataclasses.replace(sep, address=None), "192.0.2.9:5060")


@pytest.mark.sip
async def test_edge_command_runs_kamailio_until_sigterm(tmp_path: Path) -> None:
    """`python -m gateway edge` as the edge container runs it, here on loopback: Kamailio
    answers on the configured port, and SIGTERM stops it and exits 0."""
    port, gw_port = free_port(), free_port()
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(yaml.safe_dump({
        "applications": [{"id": "a", "customer_id": "c", "answer_url": "http://127.0.0.1:9/",
                          "secret": "edge-test-secret"}],
        "sip": {"host": "127.0.0.2", "port": gw_port},
        "edge": {"enabled": True, "address": "127.0.0.1", "listen": "127.0.0.1",
                 "udp_port": port, "tcp_port": port, "tls_port": 0, "children": 1,
                 "users_db": str(tmp_path / "users.db"), "runtime_dir": str(tmp_path / "edge")},
    }))
    log = tmp_path / "edge.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "gateway", "edge", "--config", str(cfg), cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "edge.started" not in log.read_text():
            assert proc.returncode is None and time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.2)
        assert f"gateway=127.0.0.2:{gw_port}" in log.read_text()
        rendered = (tmp_path / "edge" / "kamailio.cfg").read_text()
        assert f'$du = "sip:127.0.0.2:{gw_port}"' in rendered
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0, log.read_text()
        assert "edge.stopped" in log.read_text()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))  # Kamailio is gone with it
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
