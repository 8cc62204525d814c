"""Files that hold secrets are owner-only from the moment they exist, not after a chmod."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import files
from gateway.edge import kamailio as edge
from gateway.edge.users import UserStore


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def no_chmod(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that is right only after a chmod was wrong before it: make chmod do nothing."""
    monkeypatch.setattr(Path, "chmod", lambda self, m: None)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)


def test_users_db_is_created_owner_only(tmp_path: Path, no_chmod: None) -> None:
    store = UserStore(tmp_path / "var" / "users.db", "r")
    store.add("alice", "long-enough")
    assert mode(tmp_path / "var" / "users.db") == 0o600
    assert mode(tmp_path / "var") == 0o700


def test_an_existing_users_db_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    UserStore(path, "r").ensure()
    path.chmod(0o644)
    UserStore(path, "r").list()
    assert mode(path) == 0o600


def test_edge_secret_is_written_owner_only(tmp_path: Path, no_chmod: None) -> None:
    value = edge._secret(tmp_path)
    assert mode(tmp_path / "secret") == 0o600
    assert edge._secret(tmp_path) == value  # kept across restarts


def test_write_private_narrows_an_older_wider_file(tmp_path: Path) -> None:
    path = tmp_path / "kamailio.cfg"
    path.write_text("old")
    path.chmod(0o644)
    files.write_private(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o600
