"""Waiting in tests for a session's events: the same records `/events` streams (SSE), read
from the session's history in the server under test."""

from __future__ import annotations

import asyncio
import time


def history(services, session) -> list[dict]:
    """The events emitted so far by `session` (an AvatarClient or a sessionid), oldest first."""
    return services.registry.get(getattr(session, "sessionid", session)).events.history


async def wait_event(services, session, name: str, timeout: float = 15.0, since: int = 0,
                     **fields) -> dict:
    """The first event `name` at or after index `since` whose `fields` have the given values.

    A spoken question can yield a partial `transcript` (`final: false`) before its final one,
    when Whisper is started at a pause inside it, so a test after the answered turn passes
    `final=True`. Raises AssertionError, listing what was emitted, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in history(services, session)[since:]:
            if item["event"] == name and all(item.get(k) == v for k, v in fields.items()):
                return item
        await asyncio.sleep(0.02)
    raise AssertionError(f"no '{name}' {fields} in {timeout} s; got "
                         f"{[(e['event'], e.get('text')) for e in history(services, session)]}")
