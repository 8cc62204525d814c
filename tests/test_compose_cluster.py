"""docker-compose.cluster.yml (the cluster shape: redis, the edge as dispatcher, two gateway
nodes, the app), the Dockerfile's `redis` target and configs/compose-cluster.yaml agree with
each other and with the repository; every gateway's command line gives a valid node config;
the edge's rendered Kamailio config dispatches to every node and passes `kamailio -c`.
Static: runs in a second, without Docker."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from gateway.cli import _parser, build_config
from gateway.cluster.config import node_hosts
from gateway.config import Config, ConfigError, load
from gateway.edge import kamailio
from tests.harness import ROOT
from tests.test_compose import DOCKERFILE, published, stages

COMPOSE = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
DEFAULT = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
CFG = load(ROOT / "configs" / "compose-cluster.yaml")
GATEWAYS = ("gateway-a", "gateway-b")
NET = "minivoice-cluster"


def service(name: str) -> dict[str, Any]:
    svc: dict[str, Any] = COMPOSE["services"][name]
    return svc


def address(name: str) -> str:
    addr: str = service(name)["networks"][NET]["ipv4_address"]
    return addr


def defaults(items: list[str]) -> list[str]:
    return [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", c) for c in items]


def command_config(name: str) -> tuple[Config, argparse.Namespace]:
    """The config a service's `python -m gateway ...` command line runs with."""
    command = defaults(service(name)["command"])
    assert command[:3] == [".venv/bin/python", "-m", "gateway"], command
    args = _parser().parse_args(command[3:])  # the real CLI accepts it
    assert (ROOT / args.config).is_file(), args.config
    return (build_config(args) if args.command == "serve" else load(ROOT / args.config)), args


def test_the_cluster_shape_and_its_images() -> None:
    assert set(COMPOSE["services"]) == {"redis", "edge", "app", *GATEWAYS}
    all_stages = stages()
    for name, svc in COMPOSE["services"].items():
        # built here, from the same base and build args as the default stack: no registry
        assert svc["build"]["target"] in all_stages, name
        assert svc["build"]["args"] == DEFAULT["services"]["gateway"]["build"]["args"], name
        assert svc["image"].startswith("minivoice-"), name
        assert svc["restart"] == "unless-stopped", name
    for name in ("app", "edge"):  # the same images as the default stack's
        assert service(name)["image"] == DEFAULT["services"][name]["image"]
        assert service(name)["build"]["target"] == DEFAULT["services"][name]["build"]["target"]
    for name in GATEWAYS:
        assert service(name)["image"] == DEFAULT["services"]["gateway"]["image"]
    # redis: Debian's redis-server on the same Debian base (the `os` stage), not root, no
    # persistence (the nodes re-publish everything when it restarts)
    assert re.search(r"^FROM os AS redis$", DOCKERFILE, re.M)
    runs = " ".join(args for word, args in all_stages["redis"] if word == "RUN")
    assert "apt-get install" in runs and "redis-server" in runs
    users = [args for word, args in all_stages["redis"] if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    cmd = yaml.safe_load([args for word, args in all_stages["redis"] if word == "CMD"][-1])
    assert cmd[0] == "redis-server" and cmd[cmd.index("--save") + 1] == ""
    assert cmd[cmd.index("--port") + 1] == "6379"
    assert service("redis")["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert "ports" not in service("redis")  # the compose network only


def test_every_part_reads_the_same_file_and_the_nodes_differ_where_they_must() -> None:
    net = ipaddress.ip_network(COMPOSE["networks"][NET]["ipam"]["config"][0]["subnet"])
    assert all(ipaddress.ip_address(address(s)) in net for s in COMPOSE["services"])
    nodes = {name: command_config(name) for name in GATEWAYS}
    edge_cfg, edge_args = command_config("edge")
    assert edge_args.command == "edge" and edge_cfg == CFG
    assert edge_cfg.cluster.node_id is None  # the edge is no node
    ids, dbs, rtp = set(), set(), []
    for name, (cfg, args) in nodes.items():
        assert args.config == "configs/compose-cluster.yaml"
        # the shared file, but for the node's own part
        assert dataclasses.replace(
            cfg, sip=CFG.sip, database=CFG.database,
            cluster=dataclasses.replace(cfg.cluster, node_id=None)) == CFG, name
        assert cfg.cluster.enabled and cfg.cluster.secret == CFG.cluster.secret
        ids.add(cfg.cluster.node_id)
        dbs.add(cfg.database)
        assert cfg.sip.host == cfg.sip.public_host == address(name)
        kamailio.check(cfg)  # a separate edge: a specific SIP address, not an edge port
        # the other nodes reach it at its container address (cascade legs, HTTP)
        assert node_hosts(cfg.sip.host, cfg.sip.public_host, cfg.http.host) == (
            address(name), address(name))
        ports = published(service(name))
        span = range(cfg.sip.rtp_port_start, cfg.sip.rtp_port_start + cfg.sip.rtp_port_range)
        assert {(h, c) for _, h, c, p in ports if p == "udp"} == {(p, p) for p in span}
        assert ("127.0.0.1", cfg.http.port) in {(a, c) for a, _, c, p in ports if p == "tcp"}
        assert cfg.sip.port not in {c for _, _, c, _ in ports}  # SIP: the edge's only
        rtp.append(set(span))
        assert service(name)["depends_on"]["redis"]["condition"] == "service_healthy"
    assert len(ids) == 2 and len(dbs) == 2 and not rtp[0] & rtp[1]
    http_ports = [h for n in GATEWAYS for a, h, c, p in published(service(n)) if p == "tcp"]
    assert len(set(http_ports)) == 2
    # redis, by its service name
    url = urlparse(CFG.cluster.redis_url)
    assert url.hostname == "redis" and url.port == 6379
    # the edge dispatches to exactly the nodes, and only trusts nothing
    e = CFG.edge
    assert e.address == e.listen == address("edge")
    assert sorted(e.dispatch) == sorted(f"{address(n)}:{CFG.sip.port}" for n in GATEWAYS)
    assert e.trusted == ()
    edge_ports = {(c, p) for _, _, c, p in published(service("edge"))}
    assert edge_ports == {(e.udp_port, "udp"), (e.tcp_port, "tcp"), (e.tls_port, "tcp")}
    assert set(service("edge")["depends_on"]) == set(GATEWAYS)


def mounts(name: str) -> dict[str, str]:
    """target -> named volume of a service's mounts."""
    out = {}
    for m in service(name)["volumes"]:
        volume, target = m.split(":")
        assert volume in COMPOSE["volumes"], m  # named volumes only, no host paths
        out[target] = volume
    return out


def inside(path: str, target: str) -> bool:
    return (Path("/app") / path).is_relative_to(target)


def test_each_part_has_its_own_state_and_shares_only_users_db() -> None:
    """Each gateway writes its database, recordings/ and media-cache/ (both next to the
    database) under var/: per node, in its own volume. The edge writes var/edge. The one
    shared file is users.db: `users add` anywhere, read by the edge and by the nodes."""
    users_target = str(Path("/app") / CFG.edge.users_db).rsplit("/", 1)[0]
    shared = {name: mounts(name) for name in ("edge", *GATEWAYS)}
    users = {m[users_target] for m in shared.values()}
    assert len(users) == 1, shared  # the same volume on the edge and on every node
    own = {name: m["/app/var"] for name, m in shared.items()}
    assert len(set(own.values())) == len(own), own  # one each
    assert not set(own.values()) & users
    for name in GATEWAYS:
        cfg, _ = command_config(name)
        db = Path("/app") / cfg.database
        assert inside(cfg.database, "/app/var") and not inside(cfg.database, users_target)
        assert cfg.recordings.dir is None  # recordings/ and media-cache/: next to the database
        assert db.parent.is_relative_to("/app/var")
        assert not db.parent.is_relative_to(users_target)
    assert inside(CFG.edge.runtime_dir, "/app/var")
    assert not inside(CFG.edge.runtime_dir, users_target)
    assert inside(CFG.edge.users_db, users_target)
    # a fresh volume takes the owner of its mount point in the image: the unprivileged user's
    users_dir = str(Path(CFG.edge.users_db).parent)
    for stage in ("edge", "gateway"):
        runs = " ".join(args for word, args in stages()[stage] if word == "RUN")
        assert f"mkdir -p {users_dir}" in runs and f"chown minivoice:minivoice {users_dir}" in runs
    assert "volumes" not in service("app") and "volumes" not in service("redis")


def test_the_app() -> None:
    [app] = CFG.applications
    assert service("app")["environment"]["MINIVOICE_SECRET"] == app.secret
    assert urlparse(app.answer_url).hostname == "app"
    assert urlparse(app.event_url or "").hostname == "app"


def test_the_edge_config_renders_and_kamailio_accepts_it(tmp_path: Path) -> None:
    e = dataclasses.replace(CFG.edge, runtime_dir=str(tmp_path / "edge"),
                            users_db=str(tmp_path / "users.db"))
    plan = kamailio.prepare(dataclasses.replace(CFG, edge=e))
    listed = (tmp_path / "edge" / "dispatcher.list").read_text().split("\n")
    assert listed == [f"1 sip:{address(n)}:{CFG.sip.port}" for n in GATEWAYS] + [""]
    text = plan.config_path.read_text()
    assert 'loadmodule "dispatcher.so"' in text and address("edge") in text
    if shutil.which(plan.binary) is None:
        pytest.skip("kamailio not installed")
    check = subprocess.run([plan.binary, "-c", "-f", str(plan.config_path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr[-2000:]


def test_node_id_flag(tmp_path: Path) -> None:
    for bad in ("", "a b", "x" * 65, "../n", "n\n"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["serve", "--config", "configs/compose-cluster.yaml",
                                  "--node-id", bad])
    plain = tmp_path / "plain.yaml"
    plain.write_text("applications: [{id: a, customer_id: c, answer_url: 'http://x/a',"
                     " secret: s3cret-s3cret}]\n")
    with pytest.raises(ConfigError, match=r"cluster\.secret"):
        build_config(_parser().parse_args(["serve", "--config", str(plain),
                                           "--node-id", "n1"]))


def test_where_the_other_nodes_reach_a_node() -> None:
    assert node_hosts("127.0.0.1", None, "127.0.0.1") == ("127.0.0.1", "127.0.0.1")
    assert node_hosts("10.0.0.5", "203.0.113.7", "0.0.0.0") == ("10.0.0.5", "10.0.0.5")
    assert node_hosts("0.0.0.0", "10.0.0.5", "10.0.0.6") == ("10.0.0.5", "10.0.0.6")
    assert node_hosts("::", "fd00::5", "::") == ("[fd00::5]", "[fd00::5]")
    assert node_hosts("0.0.0.0", None, "0.0.0.0") == ("127.0.0.1", "127.0.0.1")
