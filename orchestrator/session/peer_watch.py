"""When a session's peer is gone: never connected within the setup timeout, or failed/closed.

aiortc reports "failed" when ICE fails; once connected, that includes ICE consent failure (the
peer stopped answering consent checks: aioice gives up after 6 missed checks 5 s apart, ~30 s),
and "closed" when the peer closes DTLS (a client that closes cleanly: at once). An offer without
`a=end-of-candidates` (Chromium's) never fails ICE on its own: the setup timeout ends it.

Which way the peer went is told apart: states are read when each change is announced, not when
the waiting task wakes up (a connection can pass "failed" on its way to "closed" within one turn
of the event loop), and a consent expiry, which aiortc reports as a plain "closed" (the DTLS
transport ends with the ICE connection, and the peer connection closes before its ICE transport
can say "failed"), is read from aioice's ICE connection itself (`_consent_expired`).
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
        """The first way the peer went: CONSENT_EXPIRED when ICE failed or gave up on its own
        after it had connected, else the first gone state announced."""
        pc = self._pc()
        connected = False
        for state, ice_state in self.seen:
            connected = connected or state == "connected"
            if connected and (ice_state == "failed" or (pc is not None and _consent_expired(pc))):
                return CONSENT_EXPIRED
            if state in GONE_STATES:
                return state
        return "closed"


def _consent_expired(pc: RTCPeerConnection) -> bool:
    """Whether an ICE connection of `pc` (once connected) ended on its own. aioice ends its
    consent checks (RFC 7675) by itself only when consent expired, and then drops the task
    (`_query_consent_task` None); a close cancels the task and keeps it. Both are aioice's own
    attributes, read defensively: an aioice without them reads as not expired."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        if connection is not None and getattr(connection, "_query_consent_task", False) is None \
                and getattr(connection, "_closed", False):
            return True
    return False


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
