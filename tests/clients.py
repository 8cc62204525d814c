"""Drivers of softphones the project did not write, run headless against the SIP edge:
Linphone's `linphonec`, Debian's `baresip`, pjproject's own `pjsua` app, and SIPp.

Each is a real process with its own SIP stack (that is the point: the edge's digest challenges
must suit them, not just our own test client). They bind to 127.0.0.1 on free ports, play a
tone WAV as their microphone where they can, and record what they hear where they can, so the
matrix in tests/test_edge_clients.py can check audio with an FFT. A missing tool fails the test
(a broken setup), it is never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.gateway import free_port
from tests.harness import ROOT, rtp_block

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A tool that must be there: missing means a broken setup, so the test fails (no skip)."""
    path = shutil.which(name) or shutil.which(name, path=str(BIN))
    assert path, f"{name} not found: run `make setup` (scripts/setup.sh installs it)"
    return path


def pjsua_binary() -> str:
    """pjproject's `pjsua` app, built along with the pjsua2 module this venv imports
    (sip/build/build_pjsua2.sh caches both under $MINIVOICE_CACHE/pjsua2/<key>/ and
    installs the app beside the venv's python)."""
    beside = Path(sysconfig.get_paths()["scripts"]) / "pjsua"
    if beside.is_file():
        return str(beside)
    spec = importlib.util.find_spec("pjsua2")
    assert spec and spec.origin, "pjsua2 is not installed: run `make setup`"
    info = Path(spec.origin).with_name("pjsua2.BUILDINFO").read_text()
    key = dict(line.split("=", 1) for line in info.splitlines() if "=" in line)["key"]
    cache = Path(os.environ.get("MINIVOICE_CACHE", Path.home() / ".cache" / "minivoice"))
    path = cache / "pjsua2" / key / "pjsua"
    assert path.is_file(), f"{path} missing: run `make setup` (build_pjsua2.sh builds it)"
    return str(path)


class _Lines:
    """A child process whose stdout is kept line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.out: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.out.append(line.decode(errors="replace").rstrip())

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.out[-n:])

    async def wait_line(self, pred: Callable[[str], bool], timeout: float = 15.0,
                        start: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.out[start:]:
                if pred(line):
                    return line
            if time.monotonic() > deadline or self.proc.returncode is not None:
                raise TimeoutError(f"{self.name}: line not seen (exit {self.proc.returncode}):\n"
                                   + self.tail())
            await asyncio.sleep(0.1)

    async def stop(self, quit_command: str | None, timeout: float = 10.0) -> None:
        if self.proc.returncode is None and quit_command is not None:
            with contextlib.suppress(Exception):
                self.send(quit_command)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


# ------------------------------------------------------------------------- linphonec ---
class Linphonec(_Lines):
    """linphonec driven through stdin, its answers read from stdout.

    Audio: `soundcard use files` makes it take its microphone from the `play` WAV and write
    what it hears to the `record` WAV instead of a sound card (there is none here)."""

    @classmethod
    async def start(cls, home: Path, transport: str = "udp") -> Linphonec:
        home.mkdir(parents=True, exist_ok=True)
        # linphone keeps a call-history database here; without the folder it cannot start
        (home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        rtp = rtp_block()
        ports = {"udp": "-1", "tcp": "-1", "tls": "-1"}
        ports[transport] = str(free_port())
        (home / "linphonerc").write_text(
            f"[sip]\nsip_port={ports['udp']}\nsip_tcp_port={ports['tcp']}\n"
            f"sip_tls_port={ports['tls']}\nverify_server_certs=0\nverify_server_cn=0\n"
            f"[rtp]\naudio_rtp_port={rtp}-{rtp + 100}\n"
            "[video]\nautomatically_initiate=0\nautomatically_accept=0\n"
            "[net]\nfirewall_policy=0\n[sound]\nechocancellation=0\n")
        proc = await asyncio.create_subprocess_exec(
            tool("linphonec"), "-c", str(home / "linphonerc"), cwd=home,
            env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        return cls(proc, "linphonec")

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
        raise TimeoutError(f"linphonec: no {expect!r} after {command!r}:\n" + self.tail(30))

    async def close(self) -> None:
        await self.stop("quit")


# --------------------------------------------------------------------------- baresip ---
class Baresip:
    """Debian's baresip, headless: config in its own `-f` folder, no sound card (`aufile`
    plays a WAV as the microphone, `aubridge` is a player that goes nowhere, `sndfile` dumps
    the decoded incoming audio to <dir>/rec/dump-*-dec.wav), and `ctrl_tcp` to send commands
    and read events (JSON in netstrings)."""

    def __init__(self, proc: asyncio.subprocess.Process, home: Path, ctrl: int) -> None:
        self.proc = proc
        self.home = home
        self.ctrl = ctrl
        self.events: list[dict[str, Any]] = []
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, home: Path, account: str, tone: Path | None) -> Baresip:
        """`account` is a baresip accounts line, e.g.
        `<sip:alice@127.0.0.1:5060;transport=tcp>;auth_pass=secret`."""
        home.mkdir(parents=True, exist_ok=True)
        (home / "rec").mkdir(exist_ok=True)
        sip, ctrl, rtp = free_port(), free_port(), rtp_block()
        source = f"aufile,{tone}" if tone else "aubridge,mic"
        (home / "config").write_text(
            "poll_method epoll\n"
            f"sip_listen 127.0.0.1:{sip}\n"
            f"audio_player aubridge,nowhere\naudio_source {source}\n"
            "audio_alert aubridge,nowhere\n"
            f"rtp_ports {rtp}-{rtp + 100}\n"
            f"snd_path {home / 'rec'}\n"
            f"ctrl_tcp_listen 127.0.0.1:{ctrl}\n"
            "module_path /usr/lib/baresip/modules\n"
            "module g711.so\nmodule aufile.so\nmodule aubridge.so\nmodule sndfile.so\n"
            "module ctrl_tcp.so\nmodule_tmp account.so\nmodule_app menu.so\n")
        (home / "accounts").write_text(account + "\n")
        log = (home / "baresip.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            tool("baresip"), "-f", str(home), "-s", cwd=home, stdin=asyncio.subprocess.DEVNULL,
            stdout=log, stderr=asyncio.subprocess.STDOUT)
        b = cls(proc, home, ctrl)
        deadline = time.monotonic() + 10
        while True:
            try:
                reader, b._writer = await asyncio.open_connection("127.0.0.1", ctrl)
                break
            except OSError:
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("baresip did not start:\n" + b.log()[-3000:]) from None
                await asyncio.sleep(0.1)
        b._reader = asyncio.create_task(b._read(reader))
        return b

    def log(self) -> str:
        return (self.home / "baresip.log").read_text(errors="replace")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                size = int((await reader.readuntil(b":"))[:-1])
                if not 0 <= size <= 1 << 20:  # baresip's events are a few hundred bytes
                    raise ConnectionError(f"baresip ctrl_tcp: netstring of {size} bytes")
                body = await reader.readexactly(size + 1)  # the netstring's trailing comma
                with contextlib.suppress(json.JSONDecodeError):
                    self.events.append(json.loads(body[:-1]))

    def command(self, name: str, params: str = "") -> None:
        assert self._writer is not None
        msg = json.dumps({"command": name, "params": params, "token": name}).encode()
        self._writer.write(str(len(msg)).encode() + b":" + msg + b",")

    async def wait_event(self, *types: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e.get("type") in types:
                    return e
            if time.monotonic() > deadline or self.proc.returncode is not None:
                raise TimeoutError(f"baresip: no {types}; events {self.events[-10:]}\n"
                                   + self.log()[-3000:])
            await asyncio.sleep(0.1)

    async def registered(self, timeout: float = 15.0) -> bool:
        """Whether its registration succeeded, from its log (it registers before ctrl_tcp
        has a client, and events are only sent to connected clients)."""
        ok = re.compile(r"\{0/\w+/v[46]\} 200 OK")
        failed = re.compile(r"reg: \S+: Register: |\{0/\w+/v[46]\} [3-6]\d\d ")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.returncode is None:
            text = self.log()
            if ok.search(text):
                return True
            if failed.search(text):
                return False
            await asyncio.sleep(0.1)
        raise TimeoutError("baresip: no registration result\n" + self.log()[-3000:])

    def recording(self) -> Path:
        """What baresip heard in its (only) call, as decoded from RTP."""
        found = sorted((self.home / "rec").glob("dump-*-dec.wav"))
        assert found, f"baresip wrote no recording:\n{self.log()[-2000:]}"
        return found[-1]

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.command("quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None:
            self._reader.cancel()


# ----------------------------------------------------------------------------- pjsua ---
class Pjsua(_Lines):
    """pjproject's `pjsua` console app: registers with the given account, plays `tone` into
    every call (--auto-play) and records every call (--auto-rec) into `record`. Commands
    come from its text menu on stdin ("m" + URI to call, "h" to hang up, "q" to quit)."""

    @classmethod
    async def start(cls, home: Path, *, user: str, password: str, domain: str,
                    transport: str, tone: Path, record: Path, realm: str = "minivoice"
                    ) -> Pjsua:
        home.mkdir(parents=True, exist_ok=True)
        params = "" if transport == "udp" else f";transport={transport}"
        args = [pjsua_binary(), "--null-audio", "--no-vad", "--max-calls=2",
                "--bound-addr=127.0.0.1", "--ip-addr=127.0.0.1",
                f"--local-port={free_port()}", f"--rtp-port={rtp_block()}",
                f"--id=sip:{user}@{domain}", f"--registrar=sip:{domain}{params}",
                f"--realm={realm}", f"--username={user}", f"--password={password}",
                f"--play-file={tone}", "--auto-play", f"--rec-file={record}", "--auto-rec",
                "--log-level=4", "--app-log-level=4", "--no-color"]
        if transport == "tls":
            args.append("--use-tls")  # the edge's certificate is self-signed: not verified
        # Its log goes through stdio: line-buffered, or we would see it only at exit.
        proc = await asyncio.create_subprocess_exec(
            tool("stdbuf"), "-oL", *args, cwd=home, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        return cls(proc, "pjsua")

    def dial(self, uri: str) -> None:
        self.send("m")
        self.send(uri)

    async def close(self) -> None:
        await self.stop("q")


# ------------------------------------------------------------------------------ sipp ---
def sipp_digest_scenario(workdir: Path, tone: Path, user: str) -> Path:
    """tests/scenarios/uac_digest.xml with the tone file and the user filled in."""
    out = workdir / "uac_digest.xml"
    out.write_text((ROOT / "tests" / "scenarios" / "uac_digest.xml").read_text()
                   .replace("@AUDIO@", str(tone)).replace("@USER@", user))
    return out
