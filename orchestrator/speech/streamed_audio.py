"""Speech audio that arrives while it is spoken: one segment of a voice agent's TTS, pushed in
chunks (the `/audio_stream` WebSocket) and read by the speech pipeline as it comes.

The buffer is bounded in seconds: a producer faster than real time (a whole answer in half a
second) is held in `push` once MAX_BUFFERED_S are waiting, which lets the WebSocket stop reading
its socket (TCP back-pressure to the sender) instead of holding unbounded memory.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import numpy as np

# What one session may hold of a segment not yet lip-synced (120 s of 48 kHz float32: 23 MB).
MAX_BUFFERED_S = 120.0
# The reader takes at most this much at a time, so what waits stays here (bounded, counted)
# rather than in the reader's hands.
MAX_READ_S = 0.5


class StreamClosed(Exception):
    """`push` after `end` or `cancel`."""


class StreamedAudio:
    """One segment: float32 mono chunks at `rate_hz` (8000-48000 Hz), in order.

    `push` (the producer) waits while `max_buffered_s` seconds are buffered; `end` says the
    segment is complete; `cancel` drops it (an interruption: the reader stops at once).
    `chunks()` (the pipeline, one reader) yields chunks as they arrive and returns after `end`
    or `cancel`. `received_s` counts every second pushed (the queue's limits use it).
    """

    def __init__(self, rate_hz: int, max_buffered_s: float = MAX_BUFFERED_S) -> None:
        self.rate_hz = rate_hz
        self._max_samples = int(max_buffered_s * rate_hz)
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._buffered = 0  # samples pushed and not yet read
        self._received = 0  # samples pushed in all
        self._ended = False
        self._cancelled = False
        self._changed = asyncio.Condition()

    @property
    def received_s(self) -> float:
        return self._received / self.rate_hz

    @property
    def buffered_s(self) -> float:
        return self._buffered / self.rate_hz

    @property
    def ended(self) -> bool:
        return self._ended or self._cancelled

    async def push(self, chunk: np.ndarray) -> None:
        """Add float32 [samples] (full scale 1.0); waits while the buffer is full.
        Raises StreamClosed after `end` or `cancel` (also when cancelled while waiting)."""
        if chunk.size == 0:
            return
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.ended or self._buffered < self._max_samples)
            if self.ended:
                raise StreamClosed("the segment has ended")
            self._chunks.append(np.asarray(chunk, np.float32))
            self._buffered += chunk.size
            self._received += chunk.size
            self._changed.notify_all()

    async def end(self) -> None:
        """The segment is complete: the reader gets what is buffered, then stops."""
        async with self._changed:
            self._ended = True
            self._changed.notify_all()

    async def cancel(self) -> None:
        """Drop the segment: what is buffered is discarded, reader and producer stop now."""
        async with self._changed:
            self._cancelled = True
            self._chunks.clear()
            self._buffered = 0
            self._changed.notify_all()

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        """The audio in order as it arrives, at most MAX_READ_S at a time (waiting chunks
        joined, a long one cut); returns after `end` (once all is read) or `cancel`."""
        most = max(1, int(MAX_READ_S * self.rate_hz))
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self._chunks or self.ended)
                if self._cancelled or not self._chunks:
                    return
                parts, taken = [], 0
                while self._chunks and taken < most:
                    chunk = self._chunks.popleft()
                    if taken + chunk.size > most:
                        chunk, rest = chunk[: most - taken], chunk[most - taken :]
                        self._chunks.appendleft(rest)
                    parts.append(chunk)
                    taken += chunk.size
                self._buffered -= taken
                self._changed.notify_all()
            yield parts[0] if len(parts) == 1 else np.concatenate(parts)
