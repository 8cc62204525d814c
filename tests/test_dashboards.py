"""configs/grafana/minivoice.json and configs/prometheus.yml: they parse, every metric the
dashboard queries is one the gateway's /metrics serves, and the compose `monitoring` profile
mounts files that exist and scrapes the gateway with its admin token."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load
from gateway.metrics import Backlog, Live, Metrics
from tests.harness import ROOT, AppServer, GatewayProc, app_config

DASHBOARD = ROOT / "configs" / "grafana" / "minivoice.json"
PROMETHEUS = ROOT / "configs" / "prometheus.yml"
ALERTS = ROOT / "configs" / "prometheus-alerts.yml"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
METRIC = re.compile(r"\bminivoice_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
ADMIN = "admin-token-0123456789"


def queried(exprs: list[str]) -> set[str]:
    """Metric family names in PromQL expressions (a histogram's _bucket is its family)."""
    names = set()
    for expr in exprs:
        for name in METRIC.findall(expr):
            for suffix in SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            names.add(name)
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def served(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


def test_dashboard_shape() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "minivoice" and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + \
            p["gridPos"]["w"] <= 24, p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


def test_every_queried_metric_is_served_unit() -> None:
    """Against the Metrics the gateway serves (no process): quick, and shows a typo first."""
    m = Metrics()
    m.watch(Live(calls=lambda: (0, 0), sip_legs=lambda: 0, rooms=lambda: 0,
                 participants=lambda: 0, webhooks_pending=lambda: 0,
                 webhook_backlog=Backlog, sip_loop_age=lambda: 0.0, accepting=lambda: True))
    names = served(m.render().decode())
    missing = (queried(dashboard_exprs()) | queried(alert_exprs())) - names
    assert not missing, missing


@pytest.mark.sip
async def test_every_queried_metric_is_in_a_real_gateways_metrics(
    app: AppServer, gateway_factory: Callable[..., Awaitable[GatewayProc]]
) -> None:
    gw = await gateway_factory([app_config(app)], api={"tokens": [{"token": ADMIN}]})
    async with aiohttp.ClientSession() as s, s.get(
            gw.http + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status == 200
        text = await r.text()
    names = served(text)
    wanted = queried(dashboard_exprs()) | queried(alert_exprs())
    assert len(wanted) >= 15
    assert not wanted - names, wanted - names


def service(name: str) -> dict[str, Any]:
    svc: dict[str, Any] = COMPOSE["services"][name]
    return svc


def test_prometheus_scrapes_the_compose_gateway_with_its_admin_token() -> None:
    prom = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    cfg = load(ROOT / "configs" / "compose.yaml")
    admins = [t.token for t in cfg.api.tokens if t.customer_id is None]
    assert job["authorization"]["credentials"] in admins
    gw_addr = service("gateway")["networks"]["minivoice"]["ipv4_address"]
    assert job["static_configs"][0]["targets"] == [f"{gw_addr}:{cfg.http.port}"]


def test_monitoring_profile_mounts_what_exists_and_stays_optional() -> None:
    for name in ("prometheus", "grafana"):
        svc = service(name)
        assert svc["profiles"] == ["monitoring"], name  # never part of the default stack
        assert "build" not in svc and svc["image"].startswith("${MINIVOICE_"), name
        for volume in svc["volumes"]:
            src = volume.split(":")[0]
            assert (ROOT / src).exists(), (name, src)
        for port in svc["ports"]:
            assert port.startswith("127.0.0.1:"), (name, port)  # loopback only, like the API
    mounted = {v.split(":")[1] for v in service("prometheus")["volumes"]}
    prom = yaml.safe_load(PROMETHEUS.read_text())
    assert set(prom["rule_files"]) <= mounted
    # no default service depends on a monitoring one
    for name, svc in COMPOSE["services"].items():
        if "profiles" not in svc:
            deps = svc.get("depends_on", {})
            assert not {"prometheus", "grafana"} & set(deps), name


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    prov = ROOT / "configs" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    dash = yaml.safe_load((prov / "dashboards" / "minivoice.yml").read_text())
    path = Path(dash["providers"][0]["options"]["path"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service("grafana")["volumes"]}
    assert mounts[str(path / "minivoice.json")] == "./configs/grafana/minivoice.json"
