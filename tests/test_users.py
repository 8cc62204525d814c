"""SIP users of the edge: the store (HA1 for MD5 and SHA-256, never the password) and the
`python -m gateway users` command."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gateway.config import ConfigError, from_dict
from gateway.edge.users import UserError, UserStore
from tests.harness import PYTHON, ROOT


def test_store_keeps_ha1_for_both_algorithms_and_no_password(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "u.db", "minivoice")
    assert store.add("alice", "s3cret-pass") is True
    row = sqlite3.connect(tmp_path / "u.db").execute("SELECT * FROM sip_users").fetchone()
    assert "s3cret-pass" not in repr(row)
    assert row[2] == hashlib.md5(b"alice:minivoice:s3cret-pass").hexdigest()
    assert row[3] == hashlib.sha256(b"alice:minivoice:s3cret-pass").hexdigest()
    with pytest.raises(UserError, match="exists"):
        store.add("alice", "another-pass")
    assert store.add("alice", "another-pass", replace=True) is False
    assert [u.username for u in store.list()] == ["alice"]
    store.remove("alice")
    assert store.list() == []
    with pytest.raises(UserError, match="no user"):
        store.remove("alice")


@pytest.mark.parametrize("name", ["", "a b", "x'--", "é", "a" * 65, "bob@example.com"])
def test_usernames_that_could_break_sql_or_sip_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match="invalid username"):
        UserStore(tmp_path / "u.db", "r").add(name, "long-enough")


def test_short_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="too short"):
        UserStore(tmp_path / "u.db", "r").add("bob", "short")


def test_users_command(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("applications: [{id: a, customer_id: c, answer_url: 'http://127.0.0.1:1/',"
                   " secret: s3cret-s3cret}]\n"
                   f"edge: {{users_db: {tmp_path / 'u.db'}, realm: example}}\n")
    run = [PYTHON, "-m", "gateway", "users", "--config", str(cfg)]

    def users(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*run, *args], cwd=ROOT, capture_output=True, text=True,
                              input=stdin, timeout=30)

    assert users("add", "bob", "--password", "long-enough").stdout.startswith("added bob")
    assert users("add", "carol", "--password", "-", stdin="from-stdin-pw\n").returncode == 0
    dup = users("add", "bob", "--password", "long-enough")
    assert dup.returncode == 2 and "exists" in dup.stderr
    listed = users("list").stdout.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["bob", "carol"]
    assert UserStore(tmp_path / "u.db", "example").list()[0].realm == "example"
    assert users("remove", "bob").returncode == 0
    gone = users("remove", "bob")
    assert gone.returncode == 2 and "no user 'bob'" in gone.stderr


def test_edge_config_is_checked() -> None:
    base = {"applications": [{"id": "a", "customer_id": "c", "answer_url": "http://x/",
                              "secret": "s3cret-s3cret"}]}
    with pytest.raises(ConfigError) as exc:
        from_dict({**base, "edge": {"listen": "edge.example.com", "trusted": ["10.0.0.0/33"],
                                    "tls_port": 5060, "tls_cert": "/x.pem", "bogus": 1}})
    text = str(exc.value)
    for expected in ("edge.listen: must be an IP address", "edge.trusted: '10.0.0.0/33'",
                     "edge.bogus: unknown field"):
        assert expected in text, text
    with pytest.raises(ConfigError) as exc:
        from_dict({**base, "edge": {"tls_port": 5060, "tls_cert": "/x.pem"}})
    assert "edge.tls_cert: give both" in str(exc.value)
    assert "edge.tls_port: must differ" in str(exc.value)
