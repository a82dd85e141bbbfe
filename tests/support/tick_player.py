"""A session's player in miniature, for testing a sink (media/sinks.py) without a session: the
media clock's ticks, a grey frame and a 440 Hz tone."""

from __future__ import annotations

import asyncio

import numpy as np

from orchestrator.media.clock import AUDIO_SAMPLE_RATE_HZ, AUDIO_SAMPLES_PER_TICK, MediaClock

TONE_HZ = 440.0
TONE_PEAK = 8000  # int16: 0.17 RMS as float


class TickPlayer:
    """Hands `sink.add` a (height, width) grey frame and the tone's 640 samples every tick."""

    def __init__(self, sink, width: int, height: int) -> None:
        self.sink = sink
        self.width, self.height = width, height
        self.clock = MediaClock()
        self.ticks = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.clock.start()
        self._task = asyncio.create_task(self._play())

    async def _play(self) -> None:
        image = np.full((self.height, self.width, 3), 128, np.uint8)
        t = np.arange(AUDIO_SAMPLES_PER_TICK) / AUDIO_SAMPLE_RATE_HZ
        tick = 0
        while True:
            tick = await self.clock.wait_for_tick(tick)
            phase = 2 * np.pi * TONE_HZ * tick * AUDIO_SAMPLES_PER_TICK / AUDIO_SAMPLE_RATE_HZ
            pcm = (TONE_PEAK * np.sin(2 * np.pi * TONE_HZ * t + phase)).astype(np.int16)
            self.sink.add(tick, image, pcm)
            self.ticks += 1
            tick += 1

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
