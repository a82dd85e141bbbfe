"""When a session's peer is gone: never connected within the setup timeout, or failed/closed.

aiortc reports "failed" when ICE fails; once connected, that includes ICE consent failure (the
peer stopped answering consent checks: aioice gives up after 6 missed checks 5 s apart, ~30 s),
and "closed" when the peer closes DTLS (a client that closes cleanly: at once). An offer without
`a=end-of-candidates` (Chromium's) never fails ICE on its own: the setup timeout ends it.

A consent expiry passes through "failed" on its way to "closed" within one turn of the event
loop (aiortc closes a connection whose transports all ended), so the states are read when each
change is announced, not when the waiting task wakes up: what is reported is the first way the
peer went, not the last state it reached.
"""

from __future__ import annotations

import asyncio
import weakref

from aiortc import RTCPeerConnection

GONE_STATES = ("failed", "closed", "disconnected")
# Why a peer is gone, as logs and the `closed` event name it.
SETUP_TIMEOUT = "setup timeout"
CONSENT_EXPIRED = "ice consent expired"  # connected, then the peer stopped answering ICE


class _StateLog:
    """The peer connection's states, read as each change is announced: (connectionState,
    iceConnectionState) pairs. Holds the connection weakly (it is the connection's listener)."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self._pc = weakref.ref(pc)
        self.seen: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def __call__(self) -> None:
        pc = self._pc()
        if pc is not None:
            self.seen.append((pc.connectionState, pc.iceConnectionState))
        self.changed.set()

    def reached(self, states: tuple[str, ...]) -> bool:
        return any(state in states for state, _ in self.seen)

    def gone_reason(self) -> str:
        """The first way the peer went: CONSENT_EXPIRED when ICE failed after it had connected,
        else the first gone state announced."""
        connected = False
        for state, ice_state in self.seen:
            connected = connected or state == "connected"
            if connected and ice_state == "failed":
                return CONSENT_EXPIRED
            if state in GONE_STATES:
                return state
        return "closed"


async def wait_peer_gone(pc: RTCPeerConnection, setup_timeout_s: float) -> str:
    """Wait until the peer is gone; return why: SETUP_TIMEOUT, CONSENT_EXPIRED, or the first
    gone connection state announced ("failed", "closed").

    Listens with a small recorder holding the connection weakly (no closure over the session:
    the peer connection must not keep it alive) and removes it on the way out, cancelled or not.
    """
    states = _StateLog(pc)
    states.seen.append((pc.connectionState, pc.iceConnectionState))
    pc.on("connectionstatechange", states)
    pc.on("iceconnectionstatechange", states)
    try:
        try:
            async with asyncio.timeout(setup_timeout_s):
                await _state_reached(states, ("connected", *GONE_STATES))
        except TimeoutError:
            return SETUP_TIMEOUT
        await _state_reached(states, GONE_STATES)
        return states.gone_reason()
    finally:
        pc.remove_listener("connectionstatechange", states)
        pc.remove_listener("iceconnectionstatechange", states)


async def _state_reached(log: _StateLog, states: tuple[str, ...]) -> None:
    while not log.reached(states):
        log.changed.clear()
        await log.changed.wait()
