"""WebRTC tracks fed by the session's player: they only hand out frames, never pace them.

The video and audio tracks (video_track.py, audio_track.py) build on PlayerTrack: their items
are pictures and pieces of sound, which they encode (or take from a shared idle stream, or send
as the one silence packet) as they are pulled."""

from __future__ import annotations

import asyncio
import collections
import inspect
import weakref
from collections.abc import Callable

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

# A client that stops pulling must not make frames pile up: keep only the newest few.
MAX_QUEUED_FRAMES = 4


class PlayerTrack(MediaStreamTrack):
    """A track whose frames are pushed by the session's media clock.

    `on_first_recv` lets the session start its clock when the peer actually starts pulling, so
    the first frames are not stale. A bound method is held weakly: the session owns its tracks,
    and a track (kept by aiortc's sender) must not keep a closed session alive.
    """

    def __init__(self, kind: str, on_first_recv: Callable[[], None], max_queued: int) -> None:
        super().__init__()
        self.kind = kind
        self._on_first_recv: Callable[[], Callable[[], None] | None] | None = (
            weakref.WeakMethod(on_first_recv) if inspect.ismethod(on_first_recv)
            else lambda: on_first_recv
        )
        # Audio frames here; the video track's pictures (video_track.Picture).
        self._frames: collections.deque = collections.deque(maxlen=max_queued)
        self._ready = asyncio.Event()
        self.dropped = 0

    def push(self, frame) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()

    def flush(self) -> None:
        """Drop the frames not yet pulled (an interrupt: what was queued must not play)."""
        self._frames.clear()

    async def recv(self):
        if self._on_first_recv is not None:
            callback, self._on_first_recv = self._on_first_recv(), None
            if callback is not None:
                callback()
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def stop(self) -> None:
        super().stop()
        self._on_first_recv = None
        self._ready.set()  # wake a pending recv so it sees the track ended
