"""Why a session ended, as its `closed` event and the log say: a peer that vanished (ICE consent
expired) is not a peer that closed cleanly. Real aiortc peers on loopback; the consent interval
of aioice is shortened for the test (6 missed checks at 5 s would take 30 s)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aioice.ice
import pytest
from server_fixtures import running_server, server_settings

from orchestrator.client import AvatarClient

pytestmark = pytest.mark.timeout(120)

WAIT_S = 30.0
SHORT_CONSENT_INTERVAL_S = 0.3  # aioice's CONSENT_INTERVAL (5 s), shortened


@pytest.fixture(scope="module")
async def server(triton):
    async with running_server(server_settings(triton)) as server:
        yield server


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


def closed_reason(session) -> str | None:
    return next((e["reason"] for e in session.events.history if e["event"] == "closed"), None)


async def test_consent_expiry_is_its_own_close_reason(server, monkeypatch, caplog):
    base_url, services = server
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", SHORT_CONSENT_INTERVAL_S)
    caplog.set_level(logging.INFO, logger="orchestrator.session.session")
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(5, timeout=WAIT_S)
        session = services.registry.get(client.sessionid)
        # The client's machine vanishes: its ICE sockets close without a word (no DTLS
        # close_notify), so the server's consent checks go unanswered.
        ice = client.pc.getTransceivers()[0].receiver.transport.transport
        for protocol in list(ice._connection._protocols):
            protocol.transport.close()
        await wait_until(lambda: session.closed, "the session released by consent expiry")
        assert closed_reason(session) == "ice consent expired"
        assert f"session closed sessionid={client.sessionid} reason=ice consent expired" in caplog.text
    finally:
        await client.close()


async def test_a_clean_close_says_closed(server):
    base_url, services = server
    client = AvatarClient(base_url, keep_video=False)
    await client.connect()
    await client.wait_for_video(5, timeout=WAIT_S)
    session = services.registry.get(client.sessionid)
    await client.close()
    await wait_until(lambda: session.closed, "the session released by the peer's close")
    assert closed_reason(session) == "closed"
