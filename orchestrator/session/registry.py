"""Session ids, the session limit, lookup, and the limit on failed lookups per client.

Ids are integers (the contract) drawn at random from 1 … 2**53 - 1, so a JavaScript client keeps
them exact and a stranger cannot find a live session by counting; an id is never issued twice
in a run. Failed lookups (unknown ids) are counted per client address: past
`max_misses_per_minute` in a minute, that address gets 429 on every lookup until the minute
has passed, so probing the id space at random is hopeless — except on the sessions that address
opened itself: clients behind one NAT or proxy share an address, and one prober among them must
not lock the others out of their own sessions. With an instance id (several orchestrators
behind one address) the ids carry it: session_ids.py.

The server's own session (outputs/server_session.py, LiveTalking's session 0 of its push
transports) has the id SERVER_SESSIONID, which the random draw never gives (session_ids.py draws
from 1 up); it takes a slot of the session limit like any other.

Draining (orchestrator/drain.py): once `stop_accepting()` is called no new id is reserved (503
with Retry-After, so a client retries and the load balancer sends it to another server) and
`wait_empty()` tells when the last live session has gone.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from contextvars import ContextVar

from ..errors import ApiError
from .ids import MAX_SESSION_ID, instance_of, new_session_id
from .session import Session

SERVER_SESSIONID = 0
# How soon a client refused by a draining server may retry (the load balancer then sends it
# to another server; the draining one is out of its endpoints within a probe period or two).
DRAIN_RETRY_AFTER_S = 2
DEFAULT_MAX_MISSES_PER_MINUTE = 20
MISS_WINDOW_S = 60.0

# The address of the client whose request is being handled (set by the access middleware);
# "" outside a request (tests, internal calls): misses are then counted for "".
current_client: ContextVar[str] = ContextVar("current_client", default="")


class UnknownSession(ApiError):
    """404: no live session has this id."""

    def __init__(self, sessionid: int | str) -> None:
        shown = sessionid if isinstance(sessionid, int) else repr(sessionid[:40])
        super().__init__(404, f"unknown sessionid {shown}")


class ElsewhereSession(ApiError):
    """421: the id names a session of another orchestrator instance (session_ids.py); the
    forwarding middleware (peer_forward.py) sends the request there instead."""

    def __init__(self, sessionid: int | str, instance: int) -> None:
        super().__init__(421, f"sessionid {sessionid} belongs to orchestrator instance "
                         f"{instance}; this request could not be forwarded there")
        self.sessionid = sessionid
        self.instance = instance


class MissLimiter:
    """Failed lookups per client address over a sliding window of MISS_WINDOW_S seconds."""

    def __init__(self, max_misses_per_minute: int) -> None:
        self.max_misses = max_misses_per_minute
        self._misses: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, client: str, now: float) -> deque[float]:
        misses = self._misses[client]
        while misses and misses[0] <= now - MISS_WINDOW_S:
            misses.popleft()
        if not misses:
            del self._misses[client]  # no memory kept for quiet addresses
            return deque()
        return misses

    def check(self, client: str) -> None:
        """429 when `client` has used up its failed lookups for this window."""
        misses = self._recent(client, time.monotonic())
        if len(misses) >= self.max_misses:
            retry_s = int(misses[0] + MISS_WINDOW_S - time.monotonic()) + 1
            raise ApiError(429, f"too many unknown sessionid lookups from this address: "
                           f"{self.max_misses} a minute (--max-session-misses); "
                           f"retry in {retry_s} s")

    def miss(self, client: str) -> None:
        self._misses[client].append(time.monotonic())


class SessionRegistry:
    def __init__(self, max_sessions: int,
                 max_misses_per_minute: int = DEFAULT_MAX_MISSES_PER_MINUTE,
                 instance_id: int | None = None, forward_elsewhere: bool = False,
                 server_session_instance: int | None = None) -> None:
        self.max_sessions = max_sessions
        self.instance_id = instance_id
        # With --workers: the instance (worker 0 of this host) that holds the server session,
        # when it is not this one (None: here, or none).
        self.server_session_instance = server_session_instance
        # Ids of other instances raise ElsewhereSession (to be forwarded) instead of 404.
        self.forward_elsewhere = forward_elsewhere and instance_id is not None
        self.misses = MissLimiter(max_misses_per_minute)
        self.draining = False
        self._emptied = asyncio.Event()
        self._emptied.set()
        self._sessions: dict[int, Session] = {}
        self._reserved: set[int] = set()
        self._issued: set[int] = set()  # every id of this run: none is handed out twice
        self._opened_by: dict[int, str] = {}  # live id -> the client address of its /offer

    def reserve(self) -> int:
        """A new session id, or 503 when the limit is reached (reserved ids count too) or the
        server is draining."""
        if self.draining:
            raise ApiError(503, "this server is shutting down and takes no new session: retry, "
                           "another server will answer",
                           headers={"Retry-After": str(DRAIN_RETRY_AFTER_S)})
        if len(self._sessions) + len(self._reserved) >= self.max_sessions:
            raise ApiError(
                503, f"session limit reached: {self.max_sessions} sessions (--max-session)"
            )
        sessionid = self._new_id()
        self._reserved.add(sessionid)
        self._emptied.clear()
        self._opened_by[sessionid] = current_client.get()
        return sessionid

    def _new_id(self) -> int:
        while True:
            sessionid = new_session_id(self.instance_id)
            if sessionid not in self._issued:
                self._issued.add(sessionid)
                return sessionid

    def release(self, sessionid: int) -> None:
        """Free the id's slot (idempotent): a failed /offer, or the session's close."""
        self._reserved.discard(sessionid)
        self._sessions.pop(sessionid, None)
        self._opened_by.pop(sessionid, None)
        if not self._reserved and not self._sessions.keys() - {SERVER_SESSIONID}:
            self._emptied.set()  # the server's own session has no client to wait for

    def stop_accepting(self) -> None:
        """Drain: every later `reserve()` is a 503 with Retry-After; live sessions go on."""
        self.draining = True

    async def wait_empty(self, timeout_s: float) -> bool:
        """Wait until no client's session is live or being opened (the server's own session,
        which no client ends, does not count); False when `timeout_s` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._emptied.wait()
        except TimeoutError:
            return False
        return True

    def add_server_session(self, session: Session) -> None:
        """The server's own session, opened at start (id SERVER_SESSIONID)."""
        assert session.sessionid == SERVER_SESSIONID and SERVER_SESSIONID not in self._sessions
        self._issued.add(SERVER_SESSIONID)
        self._sessions[SERVER_SESSIONID] = session

    def server_session(self) -> Session | None:
        """The server's own session while it is open (no lookup counted: its id is public)."""
        session = self._sessions.get(SERVER_SESSIONID)
        return session if session is not None and not session.closed else None

    def add(self, session: Session) -> None:
        self._reserved.discard(session.sessionid)
        self._sessions[session.sessionid] = session

    def get(self, sessionid: int | str) -> Session:
        """The live session; 404 when unknown (counted against the client), 429 when its client
        has failed too many lookups and did not open this session itself. A text is an id that
        held no integer: always unknown."""
        client = current_client.get()
        self.check_here(sessionid)
        session = self._sessions.get(sessionid) if isinstance(sessionid, int) else None
        live = session is not None and not session.closed
        if live and self._opened_by.get(sessionid) == client:
            return session
        self.misses.check(client)
        if not live:
            self.misses.miss(client)
            raise UnknownSession(sessionid)
        return session

    def check_here(self, sessionid: int | str) -> None:
        """ElsewhereSession (to be forwarded) when `sessionid` is another instance's, for what
        a session leaves behind (its recording) as for the session itself; else nothing."""
        if sessionid == SERVER_SESSIONID and self.server_session_instance is not None:
            raise ElsewhereSession(sessionid, self.server_session_instance)
        if self.forward_elsewhere and isinstance(sessionid, int) and \
                0 < sessionid <= MAX_SESSION_ID and instance_of(sessionid) != self.instance_id:
            # A prober is held back here too, not only by the owner.
            self.misses.check(current_client.get())
            raise ElsewhereSession(sessionid, instance_of(sessionid))

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    def queued_speech_seconds(self) -> float:
        """Seconds of speech queued over all sessions (the metrics gauge)."""
        return sum(session.pipeline.queued_seconds for session in self._sessions.values())
