"""Session ids, the session limit and lookup."""

from __future__ import annotations

import itertools

from .errors import ApiError
from .session import Session


class SessionRegistry:
    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._sessions: dict[int, Session] = {}
        self._reserved: set[int] = set()
        self._ids = itertools.count(1)

    def reserve(self) -> int:
        """A new session id, or 503 when the limit is reached (reserved ids count too)."""
        if len(self._sessions) + len(self._reserved) >= self.max_sessions:
            raise ApiError(
                503, f"session limit reached: {self.max_sessions} sessions (--max-session)"
            )
        sessionid = next(self._ids)
        self._reserved.add(sessionid)
        return sessionid

    def release(self, sessionid: int) -> None:
        """Free the id's slot (idempotent): a failed /offer, or the session's close."""
        self._reserved.discard(sessionid)
        self._sessions.pop(sessionid, None)

    def add(self, session: Session) -> None:
        self._reserved.discard(session.sessionid)
        self._sessions[session.sessionid] = session

    def get(self, sessionid: int) -> Session:
        session = self._sessions.get(sessionid)
        if session is None or session.closed:
            raise ApiError.not_found(f"unknown sessionid {sessionid}")
        return session

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    def queued_speech_seconds(self) -> float:
        """Seconds of speech queued over all sessions (the metrics gauge)."""
        return sum(session.pipeline.queued_seconds for session in self._sessions.values())
