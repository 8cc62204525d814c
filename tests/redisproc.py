"""The cluster tests' redis-server: bench.redisproc's RedisProc (one implementation for the
benchmark and the tests; bench must not import tests), and fixtures for the tests that talk
to Redis directly (tests/conftest.py offers them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.redisproc import RedisProc
from gateway.cluster.redis_store import ClusterStore

__all__ = ["RedisProc", "redis_server", "store"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProc]:
    proc = RedisProc(tmp_path).start()
    yield proc
    proc.stop()


@pytest.fixture
async def store(redis_server: RedisProc) -> AsyncIterator[ClusterStore]:
    s = ClusterStore(redis_server.url)
    yield s
    await s.close()
