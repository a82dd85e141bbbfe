"""When a session's peer is gone: never connected within the setup timeout, or failed/closed.

aiortc reports "failed" when ICE fails; once connected, that includes ICE consent failure (the
peer stopped answering consent checks: aioice gives up after 6 missed checks 5 s apart, ~30 s),
and "closed" when the peer closes DTLS (a client that closes cleanly: at once). An offer without
`a=end-of-candidates` (Chromium's) never fails ICE on its own: the setup timeout ends it.
"""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection

GONE_STATES = ("failed", "closed", "disconnected")


async def wait_peer_gone(pc: RTCPeerConnection, setup_timeout_s: float) -> str:
    """Wait until the peer is gone; return why ("setup timeout" or the connection state).

    Listens with an Event's bound method only (no closure over the session: the peer connection
    must not keep it alive) and removes the listener on the way out, cancelled or not.
    """
    changed = asyncio.Event()
    pc.on("connectionstatechange", changed.set)
    try:
        try:
            async with asyncio.timeout(setup_timeout_s):
                await _state_reached(pc, changed, ("connected", *GONE_STATES))
        except TimeoutError:
            return "setup timeout"
        await _state_reached(pc, changed, GONE_STATES)
        return pc.connectionState
    finally:
        pc.remove_listener("connectionstatechange", changed.set)


async def _state_reached(pc: RTCPeerConnection, changed: asyncio.Event,
                         states: tuple[str, ...]) -> None:
    while pc.connectionState not in states:
        changed.clear()
        await changed.wait()
