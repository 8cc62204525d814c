"""Tools the project did not write, against the whole stack on loopback: a real Linphone
(`linphonec`) registers with a password and joins a room, and the sipvicious scanners
(svmap, svwar, svcrack) find the edge but no extension and no password."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.users import UserStore
from tests.edge_stack import SipClient, Stack, start_stack
from tests.harness import AppServer, app_config, free_port, rtp_block

pytestmark = pytest.mark.sip

PASSWORD = "linphone-pass-77"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A tool that must be there: missing means a broken setup, so the test fails (no skip)."""
    path = shutil.which(name) or shutil.which(name, path=str(BIN))
    assert path, f"{name} not found: run `make setup` (scripts/setup.sh installs it)"
    return path


@pytest.fixture
async def stack(tmp_path: Path, app: AppServer) -> AsyncIterator[Stack]:
    app.answer = lambda p: {"actions": [{"conference": {"room": "linphone-room"}}]}
    s = await start_stack(tmp_path, [app_config(app)], ban_after_failures=5, ban_s=60)
    UserStore(s.users_db, "minivoice").add("alice", PASSWORD)
    yield s
    assert s.gw.stop() == 0, s.gw.log()[-3000:]


class Linphonec:
    """linphonec driven through stdin, its answers read from stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, home: Path) -> Linphonec:
        home.mkdir(parents=True, exist_ok=True)
        # linphone keeps a call-history database here; without the folder it cannot start
        (home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        rtp = rtp_block()
        (home / "linphonerc").write_text(
            f"[sip]\nsip_port={free_port()}\nsip_tcp_port=-1\nsip_tls_port=-1\n"
            f"[rtp]\naudio_rtp_port={rtp}-{rtp + 100}\n"
            "[video]\nautomatically_initiate=0\nautomatically_accept=0\n"
            "[net]\nfirewall_policy=0\n[sound]\nechocancellation=0\n")
        proc = await asyncio.create_subprocess_exec(
            tool("linphonec"), "-c", str(home / "linphonerc"), cwd=home,
            env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.out.append(line.decode(errors="replace").rstrip())

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")

    async def ask(self, command: str, expect: str, timeout: float = 10.0) -> str:
        """Repeat `command` until a line containing `expect` comes back."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = len(self.out)
            self.send(command)
            await asyncio.sleep(0.3)
            for line in self.out[seen:]:
                if expect in line:
                    return line
        raise TimeoutError(f"linphonec: no {expect!r} after {command!r}:\n"
                           + "\n".join(self.out[-30:]))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("quit")
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


async def test_linphone_registers_and_joins_a_room(stack: Stack, app: AppServer,
                                                   tmp_path: Path) -> None:
    edge = f"127.0.0.1:{stack.edge_port}"
    bad = await Linphonec.start(tmp_path / "bad")
    try:
        bad.send(f"register sip:alice@{edge} sip:{edge} wrong-password")
        await asyncio.sleep(2)
        line = await bad.ask("status register", "registered")
        assert not line.startswith("registered,"), line
    finally:
        await bad.close()
    assert any("edge.auth_failed" in x and "user=alice" in x for x in stack.edge_log())

    phone = await Linphonec.start(tmp_path / "good")
    try:
        phone.send(f"register sip:alice@{edge} sip:{edge} {PASSWORD}")
        await phone.ask("status register", "registered, identity=sip:alice@")
        phone.send(f"call sip:1001@{edge}")
        await app.wait_for(lambda: [w for w in app.webhooks() if w["event"] == "call.answered"],
                           timeout=15)

        async def in_room() -> int:
            _, body = await stack.gw.get("/v1/conferences")
            return sum(len(c["participants"]) for c in body["conferences"]
                       if c["room"] == "linphone-room")
        for _ in range(50):
            if await in_room() == 1:
                break
            await asyncio.sleep(0.1)
        assert await in_room() == 1
        call = app.answers()[0].json["call"]
        assert call["to"] == "1001" and call["from"] == "alice", call
        phone.send("terminate")
        done = await app.completed(timeout=15)
        assert done[0]["data"]["hangup_by"] == "caller", done
    finally:
        await phone.close()
    log = stack.edge_log()
    # Linphone picks SHA-256 from the two challenges (MD5 is covered in test_edge.py)
    assert any("edge.registered" in x and "user=alice" in x and "alg=SHA-256" in x
               for x in log), log
    assert any("edge.invite" in x and "user=alice" in x and "to=1001" in x for x in log), log


def run_tool(*args: str, timeout: float = 60) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    return out.stdout + out.stderr


async def test_sipvicious_finds_the_edge_but_no_user_and_no_password(
        stack: Stack, tmp_path: Path) -> None:
    port = str(stack.edge_port)
    # svmap: the edge is there (it answers OPTIONS) but does not say what it is
    found = await asyncio.to_thread(run_tool, tool("sipvicious_svmap"), "127.0.0.1", "-p", port)
    assert f"127.0.0.1:{port}" in found and "kamailio" not in found.lower(), found
    # svwar: alice exists, the others do not, and it cannot tell
    names = tmp_path / "names.txt"
    names.write_text("alice\nbob\nadmin\n1001\n100\nroot\n")
    for method in ("REGISTER", "INVITE", "OPTIONS"):
        out = await asyncio.to_thread(run_tool, tool("sipvicious_svwar"), "127.0.0.1", "-p",
                                      port, "-d", str(names), "-m", method, "--force")
        assert "found nothing" in out, (method, out)
        assert "| alice" not in out, (method, out)
    # svcrack: five wrong guesses, then silence; the right password (last) is never reached
    words = tmp_path / "passwords.txt"
    words.write_text("".join(f"guess{i}\n" for i in range(40)) + PASSWORD + "\n")
    out = await asyncio.to_thread(run_tool, tool("sipvicious_svcrack"), "127.0.0.1", "-p", port,
                                  "-u", "alice", "-d", str(words), timeout=90)
    assert PASSWORD not in out, out
    assert "found nothing" in out and "since we last received a response" in out, out
    log = stack.edge_log()
    assert sum(1 for x in log if "edge.auth_failed" in x and "src=127.0.0.1 " in x) == 5, log
    assert any("edge.ban src=127.0.0.1 reason=auth_failures" in x for x in log), log
    # the guesser is still banned; someone else is not
    assert SipClient(("127.0.0.1", stack.edge_port)).request(
        "OPTIONS", stack.uri("x"), "probe", timeout=0.5) is None
    other = SipClient(("127.0.0.1", stack.edge_port), "127.0.0.71").register("alice", PASSWORD)
    assert other is not None and other.code == 200
