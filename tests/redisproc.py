"""A real redis-server for the cluster tests: on a free loopback port (never 6379), no
persistence, in the test's temporary directory; it can be stopped and started again on the
same port (a Redis restart)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.gateway import free_port
from gateway.cluster.redis_store import ClusterStore


class RedisProc:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProc:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (scripts/setup.sh installs it)"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp), "--protected-mode", "yes"],
            stdout=(self.tmp / f"redis-{self.port}.log").open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # as a crash would: nothing saved
            self.proc.wait(10)
        self.proc = None


# Fixtures for the tests that talk to Redis directly (tests/conftest.py offers them).
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
