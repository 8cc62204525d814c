"""`edge.digest_algorithms`: validated with clear errors, rendered into Kamailio's config in
the configured order (no Kamailio started here; tests/test_edge.py runs the result)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, from_dict
from gateway.edge.config import EdgeConfig
from gateway.edge.kamailio import EdgePlan, render

BASE: dict[str, Any] = {
    "applications": [{"id": "a", "customer_id": "c", "answer_url": "http://127.0.0.1:1/",
                      "secret": "s3cret-s3cret"}]}


def edge(**values: Any) -> EdgeConfig:
    return from_dict({**BASE, "edge": values}).edge


@pytest.mark.parametrize(("value", "expected"), [
    ([], "edge.digest_algorithms: at least one algorithm is required"),
    (["sha-256"], "edge.digest_algorithms: 'sha-256' is not supported: use 'SHA-256' / 'MD5' "
                  "(spelled 'SHA-256')"),
    (["MD5-sess"], "'MD5-sess' is not supported"),
    (["SHA-512-256", "MD5"], "'SHA-512-256' is not supported"),
    (["MD5", "MD5"], "edge.digest_algorithms: each algorithm at most once"),
    ("MD5", "edge.digest_algorithms: must be a list"),
    ([5], "edge.digest_algorithms[0]: must be a string"),
    (["x" * 100_000], "is not supported"),
])
def test_bad_algorithm_lists_are_refused(value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        edge(digest_algorithms=value)
    assert expected in str(exc.value)
    assert len(str(exc.value)) < 1000  # a huge value is not echoed back whole


def test_default_is_md5_only() -> None:
    assert EdgeConfig().digest_algorithms == ("MD5",)
    assert edge().digest_algorithms == ("MD5",)
    assert edge(digest_algorithms=["SHA-256", "MD5"]).digest_algorithms == ("SHA-256", "MD5")


def rendered(tmp_path: Path, algorithms: list[str]) -> str:
    e = edge(digest_algorithms=algorithms, tls_port=0)
    plan = EdgePlan(e, "127.0.0.1", 5070, tmp_path, tmp_path / "k.cfg", None, None, "kamailio")
    return render(plan, "0" * 64)


@pytest.mark.parametrize("algorithms", [["MD5"], ["SHA-256"], ["SHA-256", "MD5"],
                                        ["MD5", "SHA-256"]])
def test_challenges_and_checks_follow_the_config(tmp_path: Path,
                                                 algorithms: list[str]) -> None:
    text = rendered(tmp_path, algorithms)
    # the challenge headers' append_to_reply (route[AUTH] appends a Retry-After elsewhere)
    challenge = re.search(r'append_to_reply\("(\$var\(hname\).*)"\);', text)
    assert challenge, text
    assert re.findall(r"algorithm=([\w-]+)", challenge.group(1)) == algorithms
    offered = text.split("route[ALG_OFFERED] {", 1)[1].split("\n}", 1)[0]
    assert re.findall(r'\$var\(alg\) == "([\w-]+)"', offered) == algorithms


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("max_contacts", 0, "edge.max_contacts: must be >= 1"),
    ("max_contacts", 21, "edge.max_contacts: must be <= 20"),
    ("tcp_idle_s", 1, "edge.tcp_idle_s: must be >= 2"),
    ("trusted_flood_requests", 1, "edge.trusted_flood_requests: must be >= 2"),
    ("relay_networks", [], "edge.relay_networks: at least one network is required"),
])
def test_bad_limits_are_refused(key: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        edge(**{key: value})
    assert expected in str(exc.value)


def test_limits_are_rendered(tmp_path: Path) -> None:
    e = edge(tls_port=0, max_contacts=3, tcp_idle_s=12, max_expires_s=600,
             trusted_flood_requests=99, relay_networks=["127.0.0.0/29"])
    text = render(EdgePlan(e, "127.0.0.1", 5070, tmp_path, tmp_path / "k.cfg", None, None,
                           "kamailio"), "0" * 64)
    assert 'modparam("registrar", "max_contacts", 3)' in text
    assert "tcp_connection_lifetime=12\n" in text
    assert 'tcp_set_connection_lifetime("660")' in text
    assert "> 99)" in text
    assert 'is_in_subnet("$var(dh)", "127.0.0.0/29")' in text
    assert "0.0.0.0/0" not in text
