"""One media clock per session: video and audio timestamps are both derived from the tick count."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

VIDEO_FPS = 25
VIDEO_CLOCK_RATE_HZ = 90000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE_HZ)
VIDEO_PTS_PER_TICK = VIDEO_CLOCK_RATE_HZ // VIDEO_FPS
TICK_SECONDS = 1 / VIDEO_FPS
AUDIO_SAMPLE_RATE_HZ = 16000
AUDIO_TIME_BASE = Fraction(1, AUDIO_SAMPLE_RATE_HZ)
AUDIO_SAMPLES_PER_TICK = AUDIO_SAMPLE_RATE_HZ // VIDEO_FPS  # 640 samples = 40 ms
AUDIO_PTIME_SECONDS = 0.020
AUDIO_SAMPLES_PER_PACKET = int(AUDIO_SAMPLE_RATE_HZ * AUDIO_PTIME_SECONDS)  # 320
AUDIO_PACKETS_PER_TICK = AUDIO_SAMPLES_PER_TICK // AUDIO_SAMPLES_PER_PACKET
# Past this many ticks behind, skip ahead instead of bursting frames to catch up.
MAX_LAG_TICKS = 5


class MediaClock:
    """Wall-clock pacing computed from a start time and a tick count, never accumulated sleeps.

    Each tick also has a number on one process-wide grid of 40 ms slots counted from the
    monotonic clock's zero (`wall_tick`): sessions started at different times agree on it, so
    they can show the same idle-loop frame at the same moment (orchestrator/media/idle_stream.py).
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._first_wall_tick = 0

    @property
    def started(self) -> bool:
        return self._start is not None

    def start(self) -> None:
        self._start = time.monotonic()
        self._first_wall_tick = int(self._start / TICK_SECONDS)

    def wall_tick(self, tick: int) -> int:
        """The grid slot tick `tick` plays in: floor((start + tick · 40 ms) / 40 ms)."""
        return self._first_wall_tick + tick

    def tick_time(self, tick: int) -> float:
        assert self._start is not None, "clock not started"
        return self._start + tick * TICK_SECONDS

    def current_tick(self) -> int:
        assert self._start is not None, "clock not started"
        return int((time.monotonic() - self._start) / TICK_SECONDS)

    async def wait_for_tick(self, tick: int) -> int:
        """Sleep until `tick` is due; return the tick to render (later, if we fell far behind)."""
        delay = self.tick_time(tick) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
            return tick
        now_tick = self.current_tick()
        return now_tick if now_tick - tick > MAX_LAG_TICKS else tick

    @staticmethod
    def video_pts(tick: int) -> int:
        return tick * VIDEO_PTS_PER_TICK

    @staticmethod
    def audio_pts(tick: int, packet: int) -> int:
        return tick * AUDIO_SAMPLES_PER_TICK + packet * AUDIO_SAMPLES_PER_PACKET
