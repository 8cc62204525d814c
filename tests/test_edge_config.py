"""`edge.digest_algorithms`: validated with clear errors, rendered into Kamailio's config in
the configured order (no Kamailio started here; tests/test_edge.py runs the result)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, from_dict
from gateway.edge import EdgePlan, render
from gateway.edge_config import EdgeConfig

BASE: dict[str, Any] = {
    "applications": [{"id": "a", "customer_id": "c", "answer_url": "http://127.0.0.1:1/"}]}


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
    challenge = re.search(r'append_to_reply\("(.*)"\);', text)
    assert challenge, text
    assert re.findall(r"algorithm=([\w-]+)", challenge.group(1)) == algorithms
    offered = text.split("route[ALG_OFFERED] {", 1)[1].split("\n}", 1)[0]
    assert re.findall(r'\$var\(alg\) == "([\w-]+)"', offered) == algorithms
