"""An application developer's first run: no config file, only command-line flags."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from gateway import signing
from tests.harness import GATEWAY_ENV, PYTHON, ROOT, AppServer, Phonebank, free_port

pytestmark = pytest.mark.sip


async def test_serve_with_flags_only(app: AppServer, phones: Phonebank, tmp_path: Path) -> None:
    sip_port, http_port = free_port(), free_port()
    log = tmp_path / "gw.log"
    proc = subprocess.Popen(
        [PYTHON, "-m", "gateway", "serve", "--answer-url", app.url + "/answer",
         "--event-url", app.url + "/events", "--secret", "flag-secret-123",
         "--sip-port", str(sip_port), "--http-port", str(http_port),
         "--db", str(tmp_path / "g.db")],
        cwd=ROOT, env=GATEWAY_ENV, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{http_port}/healthz") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(log.read_text()[-2000:])
        phones.call("x", f"sip:777@127.0.0.1:{sip_port}")
        await phones.wait("media", "x")
        phones.hangup("x")
        (done,) = await app.completed()
        assert done["call"]["to"] == "777" and done["call"]["application_id"] == "app_default"
        for req in app.requests:
            assert signing.verify("flag-secret-123", req.body, req.headers[signing.HEADER])
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: stops at once
        assert proc.wait(15) == 0, log.read_text()[-2000:]
    assert "Traceback" not in log.read_text()
