"""An in-process livehuman server on 127.0.0.1 against the session's embedded Triton."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from orchestrator.app import create_app
from orchestrator.client import AvatarClient
from orchestrator.http.server import AppRunner
from orchestrator.services import start_services
from orchestrator.settings import Settings

TEST_MAX_SESSIONS = 4
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Responses that named a server directory, as "METHOD path: directory"; a test that sees one
# fails (conftest.py checks after every test).
DISCLOSURES: list[str] = []


def disclosure_guard(*directories: Path) -> Callable:
    """A middleware (outermost) that records every response whose body names one of
    `directories`, the repository, the interpreter's prefix or the temp dir (absolute paths)."""
    secrets = {str(d) for d in (*directories, PROJECT_ROOT, Path(sys.prefix))} | {
        tempfile.gettempdir() + "/"}

    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        response = await handler(request)
        body = getattr(response, "body", None)  # streamed bodies (SSE, files) have none
        if isinstance(body, bytes):
            text = body.decode(errors="replace")
            DISCLOSURES.extend(f"{request.method} {request.path}: {s}" for s in secrets
                               if s in text)
        return response

    return guard


def create_test_app(settings: Settings, services) -> web.Application:
    app = create_app(settings, services)
    app.middlewares.insert(0, disclosure_guard(
        settings.data_dir, settings.avatar_dir, settings.knowledge_dir, settings.model_repository))
    return app


@asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[tuple[str, object]]:
    """(base_url, services) of a server with these settings on a free loopback port."""
    services = await start_services(settings)
    runner = AppRunner(create_test_app(settings, services))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", services
    finally:
        await runner.cleanup()
        await services.close()


def server_settings(triton, **changes) -> Settings:
    """Settings for a test server: the session's Triton, ICE on loopback only."""
    return replace(Settings(), triton_url=triton.url, ice_hosts=("127.0.0.1",),
                   max_sessions=TEST_MAX_SESSIONS, **changes)


async def refused_offer(base_url: str, **fields) -> str:
    """The error of an /offer that must fail (its status and message)."""
    client = AvatarClient(base_url)
    try:
        await client.connect(**fields)
    except RuntimeError as exc:
        return str(exc)
    finally:
        await client.close()
    raise AssertionError(f"/offer with {fields} was accepted")


@pytest.fixture(scope="session")
async def livehuman(triton):
    """(base_url, services) of a running server; ICE restricted to loopback."""
    async with running_server(server_settings(triton)) as server:
        yield server
