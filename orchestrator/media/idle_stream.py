"""Shared idle streams: sessions that show the same avatar idle receive one encoder's frames.

An idle session's picture is a frame of its avatar's idle loop at a position every session agrees
on (the tick on the process-wide grid, media_clock.MediaClock.wall_tick). Encoding that picture
once per session would spend the same work N times (aiortc's VP8 took 0.10 cores per idle
session here), so one `IdleStream` per (avatar, frame size, codec) encodes each grid tick once
and every viewer's track sends those bytes under its own RTP timestamps
(orchestrator/media/video_track.py).

The grid is known in advance, so the stream encodes ahead: once a viewer asked for tick T, its
producer task encodes T+1 .. T+ENCODE_AHEAD_TICKS on the stream's own encoder thread, and a
viewer's tick finds its frame already there. No viewer waits on another tick's encode, and the
stream's encodes never queue behind other work in the loop's default executor (talking
sessions' encodes, speech features): issue 20 measured idle viewers chained on one encode for
100-570 ms (the encode itself took <= 27 ms) while talkers started speaking. Only a tick the
producer has not reached yet (a fresh stream, a producer fallen behind) is waited for; a tick
the producer skipped to catch up is passed over (None), like a frame the encoder dropped.

A viewer can only start decoding a shared stream at a keyframe: it asks for one
(`request_keyframe`), rate-limited to one per KEYFRAME_MIN_INTERVAL_TICKS for all viewers
together, and meanwhile encodes the same pictures with its own encoder. A fresh stream's first
frame is a keyframe. Each frame says which encoded tick came before it, so a viewer that missed
one (its queue overflowed, its clock skipped) sees the gap and goes back to its own encoder
instead of showing a corrupt picture.

The stream's encoder (and its thread) exists only while it has viewers; with none it is closed
and the stream leaves the registry. Nothing is encoded further ahead than ENCODE_AHEAD_TICKS
past the latest tick a viewer asked for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import stage_timing
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
# Ticks encoded ahead of the latest one a viewer asked for (80 ms at 25 fps): covers an encode
# (<= 27 ms on a loaded 2-core machine) plus viewers' clocks a tick apart, so every viewer's tick
# finds its frame done. Each tick ahead is one more frame encoded after the last viewer left, and
# one tick more before a requested keyframe goes out.
ENCODE_AHEAD_TICKS = 2

EncoderFactory = Callable[[str, int, int], VideoEncoder]  # (mime type, width, height)


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

    def at(self, tick: int) -> IdleFrame:
        """The same loop's frame at another grid tick (what the stream encodes ahead)."""


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
    """One avatar's idle loop at one frame size, encoded once per grid tick for all viewers,
    ahead of the viewers' ticks (ENCODE_AHEAD_TICKS) by a producer task of its own."""

    def __init__(self, key: StreamKey, streams: IdleStreams) -> None:
        self.key = key
        self._streams = streams
        self._viewers: set[Viewer] = set()
        self._encoder: VideoEncoder | None = None
        self._thread: ThreadPoolExecutor | None = None  # the encoder's own thread
        # Each tick asked for or being encoded: its frame once encoded (None: nothing for it).
        self._frames: dict[int, asyncio.Future[SharedFrame | None]] = {}
        self._template: IdleFrame | None = None  # the latest idle frame a viewer asked for
        self._asked: int | None = None  # the latest tick a viewer asked for
        self._next: int | None = None  # the next tick the producer may encode
        self._encoded: int | None = None  # the latest tick that gave a frame
        self._last_keyframe: int | None = None
        self._keyframe_wanted = False
        self._wake = asyncio.Event()  # a viewer asked for a tick
        self._producer: asyncio.Task | None = None
        self.encoded_frames = 0
        self.keyframes = 0
        self.waits = 0  # viewers' asks that found their tick's frame not encoded yet

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def add(self, viewer: Viewer) -> None:
        self._viewers.add(viewer)

    def remove(self, viewer: Viewer) -> None:
        self._viewers.discard(viewer)
        if not self._viewers:
            self._close()

    def _close(self) -> None:
        self._streams.drop(self)
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.cancel()
        for future in self._frames.values():
            if not future.done():
                future.set_result(None)
        self._frames.clear()
        encoder, self._encoder = self._encoder, None
        thread, self._thread = self._thread, None
        if thread is not None:
            if encoder is not None:  # after an encode in flight, without blocking the loop
                thread.submit(encoder.close)
            thread.shutdown(wait=False)
        elif encoder is not None:
            encoder.close()

    def kept(self, tick: int) -> bool:
        """Whether a frame for `tick` would still be here, had it been encoded."""
        return self._next is None or tick >= self._next - KEPT_TICKS

    def request_keyframe(self) -> None:
        """The next frame encoded is a keyframe, once KEYFRAME_MIN_INTERVAL_TICKS have passed
        since the last one (up to ENCODE_AHEAD_TICKS after the ticks viewers ask for now)."""
        self._keyframe_wanted = True

    async def frame(self, idle: IdleFrame) -> SharedFrame | None:
        """The stream's frame for `idle.tick`: at once when it was encoded ahead, else once the
        producer has encoded it. None when that tick was passed over (the producer skipped
        ahead of it), is too old, or the stream has no viewers."""
        tick = idle.tick
        if not self._viewers:
            return None
        if self._asked is None or tick > self._asked:  # the producer may go further ahead
            self._asked, self._template = tick, idle
            self._wake.set()
        future = self._frames.get(tick)
        if future is None:
            if self._next is not None and tick < self._next:
                return None
            future = self._frames[tick] = asyncio.get_running_loop().create_future()
            self._wake.set()
        if self._producer is None:
            self._producer = asyncio.create_task(
                self._produce(), name=f"idle-stream-{getattr(self.key.avatar, 'id', '?')}")
        self._streams.asks += 1
        if not future.done():
            self.waits += 1
            self._streams.waits += 1
        # One viewer giving up (its session closing) must not cancel the others' frame.
        return await asyncio.shield(future)

    def _due(self) -> int | None:
        """The next tick to encode: the earliest one asked for and not started (skipping to it
        when the producer fell behind), else the next one ahead, else None (nothing to do)."""
        pending = [t for t, f in self._frames.items()
                   if not f.done() and (self._next is None or t >= self._next)]
        if pending:
            return min(pending)
        if (self._next is not None and self._asked is not None
                and self._next <= self._asked + ENCODE_AHEAD_TICKS):
            return self._next
        return None

    async def _produce(self) -> None:
        while self._viewers:
            tick = self._due()
            if tick is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._next = tick + 1
            future = self._frames.get(tick)
            if future is None:
                future = self._frames[tick] = asyncio.get_running_loop().create_future()
            for old in [t for t in self._frames if t < tick - KEPT_TICKS]:
                del self._frames[old]
            try:
                shared = await self._encode(self._template.at(tick))
            except asyncio.CancelledError:
                raise
            except Exception:  # a frame that failed is a frame not sent; the stream goes on
                log.exception("idle stream encode failed tick=%s", tick)
                shared = None
            if not future.done():
                future.set_result(shared)

    async def _encode(self, idle: IdleFrame) -> SharedFrame | None:
        if self._encoder is None:
            key = self.key
            self._encoder = self._streams.open_encoder(key.mime_type, key.width, key.height)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="idle-encode")
        encoder = self._encoder
        due = (self._keyframe_wanted and (
            self._last_keyframe is None
            or idle.tick - self._last_keyframe >= KEYFRAME_MIN_INTERVAL_TICKS))
        # The viewers' lowest estimate bounds what all of them receive.
        encoder.target_bitrate_bps = min(v.target_bitrate_bps for v in self._viewers)
        encoded = await asyncio.get_running_loop().run_in_executor(
            self._thread, self._encode_picture, encoder, idle, due)
        if encoded is None or encoder is not self._encoder:  # nothing, or closed meanwhile
            return None
        if encoded.keyframe:
            self._last_keyframe, self._keyframe_wanted = idle.tick, False
            self.keyframes += 1
        shared = SharedFrame(idle.tick, self._encoded, encoded)
        self._encoded = idle.tick
        self.encoded_frames += 1
        return shared

    def _encode_picture(self, encoder: VideoEncoder, idle: IdleFrame,
                        keyframe: bool) -> EncodedFrame | None:
        """On the stream's thread: the picture (fit to the stream's size) and its encoding."""
        with stage_timing.timed(stage_timing.IDLE_ENCODE):
            return encoder.encode(idle.image(self.key.width, self.key.height), keyframe)


class IdleStreams:
    """The shared idle streams of this server, by avatar, frame size and codec.

    `open_encoder(mime_type, width, height)`: each stream's encoder (the codec's real-time one
    by default).
    """

    def __init__(self, open_encoder: EncoderFactory = open_encoder) -> None:
        self.open_encoder = open_encoder
        self._streams: dict[StreamKey, IdleStream] = {}
        # Viewers' asks for a frame since start, and those that found it not encoded yet.
        self.asks = 0
        self.waits = 0

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
