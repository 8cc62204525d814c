"""A real redis-server on a free loopback port (never 6379): no persistence, its files and
its log in a directory of the caller's; it can be stopped and started again on the same port
(a Redis restart). Used by the cluster benchmark and by the cluster tests."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

from bench.gateway import free_port


class RedisProc:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the server and return at once (wait_ready() waits for it to answer)."""
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server is not installed (scripts/setup.sh installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / f"redis-{self.port}.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self.proc

    def answers(self) -> bool:
        """Whether the server answers a PING now."""
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), 0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Until the server answers; an error at once if it has exited (or was stopped)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited (see {self.workdir})")
            if self.answers():
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def start(self) -> RedisProc:
        """Start the server and wait until it answers (stopped again if it does not)."""
        self.spawn()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """kill -9, as a crash would: nothing saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
