"""A whole campaign against a gateway started here (and optionally its edge): used by the
CI slice (tests/test_fuzz.py) and by `make fuzz` (python -m tests.fuzz)."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.fuzz.run import Fuzzer, Report
from tests.harness import AppServer, GatewayProc


def reject_answer(payload: dict[str, Any]) -> dict[str, Any]:
    """Through the edge: every call is refused before answer (the SDP answer path is fuzzed
    at the gateway directly), so no media is set up towards the fuzzer."""
    return {"actions": [{"hangup": {"reason": "fuzz"}}]}


def fuzz_answer(payload: dict[str, Any]) -> dict[str, Any]:
    """The application behind the fuzzed gateway: 2002 holds the carrier calls of in-dialog
    cases in a room; any other number is answered (the SDP answer is where the overlong c=
    aborted the process) and hung up after a moment."""
    if payload["call"]["to"] == "2002":
        return {"actions": [{"conference": {"room": "fuzz-carrier"}}]}
    return {"actions": [{"pause": {"length": 0.3}}]}


def healthz(gw: GatewayProc) -> Any:
    async def check() -> bool:
        if gw.proc.poll() is not None:
            return False
        try:
            timeout = aiohttp.ClientTimeout(total=3)
            async with aiohttp.ClientSession(timeout=timeout) as s, \
                    s.get(gw.http + "/healthz") as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
    return check


async def fuzz_gateway(gw: GatewayProc, app: AppServer, cases: range, seed: int,
                       target: tuple[str, int] | None = None, source_host: str = "127.0.0.1",
                       **run: Any) -> Report:
    """Fuzz `target` (default: the gateway itself); in-dialog cases ride on calls to the
    gateway."""
    app.answer = fuzz_answer if target is None else reject_answer
    fuzzer = Fuzzer(target or ("127.0.0.1", gw.sip_port), ("127.0.0.1", gw.sip_port), seed,
                    healthz(gw), source_host=source_host)
    return await fuzzer.run(cases, **run)
