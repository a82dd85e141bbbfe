"""Per-session event fan-out (speech start/end, interruptions, errors) for SSE and logs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("livehuman.events")

SUBSCRIBER_QUEUE_SIZE = 256


class SessionEvents:
    def __init__(self, sessionid: int,
                 observer: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._sessionid = sessionid
        self._observer = observer  # metrics
        self._subscribers: set[asyncio.Queue] = set()
        self.history: list[dict[str, Any]] = []  # bounded, lets tests and late readers look back

    def emit(self, event: str, **data: Any) -> None:
        item = {"event": event, "sessionid": self._sessionid, "time": time.time(), **data}
        log.info("event=%s sessionid=%s %s", event, self._sessionid, data)
        self.history.append(item)
        if self._observer is not None:
            self._observer(item)
        del self.history[:-SUBSCRIBER_QUEUE_SIZE]
        for queue in list(self._subscribers):
            if queue.full():  # a reader that stopped reading loses its oldest events, not ours
                queue.get_nowait()
            queue.put_nowait(item)

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(SUBSCRIBER_QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    def close(self) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)  # end of stream
        self._subscribers.clear()
