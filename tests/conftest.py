from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import AppServer, GatewayProc, Phonebank, app_config, start_gateway
from tests.httpkit import Server
from tests.redisproc import redis_server, store  # noqa: F401 (fixtures of the Redis tests)


@pytest.fixture
async def app() -> AsyncIterator[AppServer]:
    server = AppServer()
    runner = await server.start()
    yield server
    await runner.cleanup()


@pytest.fixture
async def gateway_factory(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[GatewayProc]]]:
    started: list[GatewayProc] = []

    async def make(applications: list[dict[str, Any]], **sections: Any) -> GatewayProc:
        gw = await start_gateway(tmp_path, applications, **sections)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        code = gw.stop()
        log = gw.log()
        assert "Traceback" not in log, log[-4000:]
        # a pjlib assertion the release build turned into a log line: a bug to find all the same
        assert "Assert failed" not in log, [ln for ln in log.splitlines() if "Assert" in ln]
        assert code == 0, f"gateway exit code {code}\n{log[-3000:]}"


@pytest.fixture
async def gateway(app: AppServer, gateway_factory: Callable[..., Awaitable[GatewayProc]]
                  ) -> GatewayProc:
    return await gateway_factory([app_config(app)])


@pytest.fixture
async def phones(tmp_path: Path) -> AsyncIterator[Phonebank]:
    bank = await Phonebank.start(tmp_path)
    yield bank
    await bank.close()


# -- plain HTTP servers and clients (tests/httpkit.py) for the security tests ----------
@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    runner = await s.start()
    yield s
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
