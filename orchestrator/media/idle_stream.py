"""Shared idle streams: sessions that show the same avatar idle receive one encoder's frames.

An idle session's picture is a frame of its avatar's idle loop at a position every session agrees
on (the tick on the process-wide grid, media_clock.MediaClock.wall_tick). Encoding that picture
once per session would spend the same work N times (aiortc's VP8 took 0.10 cores per idle
session here), so one `IdleStream` per (avatar, frame size, codec) encodes each grid tick once,
when the first of its viewers asks for it, and every viewer's track sends those bytes under its
own RTP timestamps (orchestrator/media/video_track.py).

A viewer can only start decoding a shared stream at a keyframe: it asks for one
(`request_keyframe`), rate-limited to one per KEYFRAME_MIN_INTERVAL_TICKS for all viewers
together, and meanwhile encodes the same pictures with its own encoder. A fresh stream's first
frame is a keyframe. Each frame says which encoded tick came before it, so a viewer that missed
one (its queue overflowed, its clock skipped) sees the gap and goes back to its own encoder
instead of showing a corrupt picture.

The stream's encoder exists only while it has viewers; with none it is closed and the stream
leaves the registry. Nothing is encoded for a tick no viewer asks for.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .video_encoders import EncodedFrame, VideoEncoder, open_encoder

log = logging.getLogger(__name__)

# A requested keyframe waits at most this long after the previous one (1 s at 25 fps): a session
# coming back from speech joins within a second (encoding its own frames meanwhile), and the
# viewers get a keyframe (10-50 kB here, a one-frame dip in VP8's quality) at most once a
# second however many sessions join.
KEYFRAME_MIN_INTERVAL_TICKS = 25
# Encoded frames kept for viewers whose tick comes a little later (their clocks are up to one tick
# apart, their tracks' queues up to four frames): 2 s.
KEPT_TICKS = 50


class IdleFrame(Protocol):
    """Frame `tick` of an avatar's idle loop (the stage's `IdleFrame`): the same picture in
    every session that shows that avatar at the same frame size, so they may share its encoding.
    """

    @property
    def avatar(self) -> object:
        """The avatar (identity: one loaded package)."""

    @property
    def tick(self) -> int:
        """The tick on the process-wide idle grid."""

    def image(self, width: int, height: int) -> np.ndarray:
        """uint8 [height, width, 3] RGB."""


class Viewer(Protocol):
    """A track showing a shared stream: its receiver's bit rate estimate bounds the stream's."""

    target_bitrate_bps: int


@dataclass(frozen=True)
class SharedFrame:
    tick: int  # the grid tick it shows
    previous: int | None  # the encoded tick before it (None: the stream's first)
    frame: EncodedFrame


@dataclass(frozen=True)
class StreamKey:
    avatar: object  # the Avatar (identity: one loaded package)
    width: int
    height: int
    mime_type: str


class IdleStream:
    """One avatar's idle loop at one frame size, encoded once per grid tick for all viewers."""

    def __init__(self, key: StreamKey, streams: IdleStreams) -> None:
        self.key = key
        self._streams = streams
        self._viewers: set[Viewer] = set()
        self._encoder: VideoEncoder | None = None
        self._frames: dict[int, asyncio.Future[SharedFrame | None]] = {}
        self._newest: int | None = None  # the latest tick asked to be encoded
        self._encoded: int | None = None  # the latest tick that gave a frame
        self._last_keyframe: int | None = None
        self._keyframe_wanted = False
        self._lock = asyncio.Lock()  # encodes run one at a time, in tick order
        self.encoded_frames = 0
        self.keyframes = 0

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def add(self, viewer: Viewer) -> None:
        self._viewers.add(viewer)

    def remove(self, viewer: Viewer) -> None:
        self._viewers.discard(viewer)
        if not self._viewers:
            self._streams.drop(self)
            self._frames.clear()
            encoder, self._encoder = self._encoder, None
            if encoder is not None:
                encoder.close()

    def kept(self, tick: int) -> bool:
        """Whether a frame for `tick` would still be here, had it been encoded."""
        return self._newest is None or tick > self._newest - KEPT_TICKS

    def request_keyframe(self) -> None:
        """The next frame a viewer asks for is a keyframe, once KEYFRAME_MIN_INTERVAL_TICKS have
        passed since the last one."""
        self._keyframe_wanted = True

    async def frame(self, idle: IdleFrame) -> SharedFrame | None:
        """The stream's frame for `idle.tick`, encoded now if nobody asked for it yet. None when
        that tick was passed over (a viewer already asked for a later one) or is too old."""
        future = self._frames.get(idle.tick)
        if future is None:
            if self._newest is not None and idle.tick <= self._newest:
                return None
            self._newest = idle.tick
            future = asyncio.ensure_future(self._encode(idle))
            self._frames[idle.tick] = future
            for old in [t for t in self._frames if t <= idle.tick - KEPT_TICKS]:
                del self._frames[old]
        # One viewer giving up (its session closing) must not cancel the others' frame.
        return await asyncio.shield(future)

    async def _encode(self, idle: IdleFrame) -> SharedFrame | None:
        async with self._lock:
            if not self._viewers:
                return None
            if self._encoder is None:
                key = self.key
                self._encoder = open_encoder(key.mime_type, key.width, key.height)
            encoder = self._encoder
            due = (self._keyframe_wanted and (
                self._last_keyframe is None
                or idle.tick - self._last_keyframe >= KEYFRAME_MIN_INTERVAL_TICKS))
            # The viewers' lowest estimate bounds what all of them receive.
            encoder.target_bitrate_bps = min(v.target_bitrate_bps for v in self._viewers)
            image = idle.image(self.key.width, self.key.height)
            loop = asyncio.get_running_loop()
            encoded = await loop.run_in_executor(None, encoder.encode, image, due)
            if encoded is None:
                return None
            if encoded.keyframe:
                self._last_keyframe, self._keyframe_wanted = idle.tick, False
                self.keyframes += 1
            shared = SharedFrame(idle.tick, self._encoded, encoded)
            self._encoded = idle.tick
            self.encoded_frames += 1
            return shared


class IdleStreams:
    """The shared idle streams of this server, by avatar, frame size and codec."""

    def __init__(self) -> None:
        self._streams: dict[StreamKey, IdleStream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def viewers(self) -> int:
        return sum(stream.viewers for stream in self._streams.values())

    def join(self, viewer: Viewer, idle: IdleFrame, width: int, height: int,
             mime_type: str) -> IdleStream:
        """The stream showing `idle`'s avatar at this size and codec, with `viewer` added."""
        key = StreamKey(idle.avatar, width, height, mime_type.lower())
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = IdleStream(key, self)
            log.debug("idle stream opened avatar=%s size=%sx%s codec=%s",
                      getattr(idle.avatar, "id", "?"), width, height, mime_type)
        stream.add(viewer)
        return stream

    def drop(self, stream: IdleStream) -> None:
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]
