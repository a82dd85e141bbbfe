"""An in-process livehuman server on 127.0.0.1 against the session's embedded Triton."""

from __future__ import annotations

from dataclasses import replace

import pytest
from aiohttp import web

from orchestrator.app import create_app
from orchestrator.services import start_services
from orchestrator.settings import Settings

TEST_MAX_SESSIONS = 4


@pytest.fixture(scope="session")
async def livehuman(triton):
    """(base_url, services) of a running server; ICE restricted to loopback."""
    settings = replace(Settings(), triton_url=triton.url, ice_hosts=("127.0.0.1",),
                       max_sessions=TEST_MAX_SESSIONS)
    services = await start_services(settings)
    runner = web.AppRunner(create_app(settings, services))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", services
    await runner.cleanup()
    await services.close()
