"""Graceful drain: what a terminated orchestrator does before it exits.

Kubernetes (and `docker stop`, systemd) sends SIGTERM, waits the pod's
terminationGracePeriodSeconds, then SIGKILLs. A live session is a person talking to the avatar:
it should end on its own, not be cut. So on SIGTERM the server

1. takes no new session: `/offer` answers 503 with `Retry-After` (the client retries and the
   Service sends it to another orchestrator), and `/healthz` answers 503 with
   `"draining": true`, so the readiness probe takes the pod out of the Service's endpoints;
2. lets live sessions go on (video, speech, `/human`, SSE, recordings) until they close or
   `--drain-timeout` seconds have passed;
3. closes what is still open then (SSE `closed` with reason DEADLINE_REASON) and stops.

A second SIGTERM, or SIGINT, stops at once (orchestrator/cli.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from .services import Services
from .session.registry import SERVER_SESSIONID

log = logging.getLogger(__name__)

DEADLINE_REASON = "server shutting down (drain timeout)"


async def drain(services: Services, timeout_s: float) -> None:
    """Stop taking sessions, wait up to `timeout_s` for the live ones to end, close the rest."""
    registry = services.registry
    registry.stop_accepting()
    # The server's own session (push transports) has no client to wait for: it is not counted.
    live = sum(1 for session in registry.all() if session.sessionid != SERVER_SESSIONID)
    log.info("draining: no new sessions; waiting up to %.0f s for %d live session(s)",
             timeout_s, live)
    started = time.monotonic()
    if await registry.wait_empty(timeout_s):
        log.info("drained: every session ended in %.1f s", time.monotonic() - started)
        return
    left = registry.all()
    log.warning("drain timeout (%.0f s): closing %d session(s)", timeout_s, len(left))
    await asyncio.gather(*(session.close(DEADLINE_REASON) for session in left),
                         return_exceptions=True)
