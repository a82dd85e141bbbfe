import asyncio
import math
import time

from orchestrator.media.clock import (
    AUDIO_PACKETS_PER_TICK,
    AUDIO_SAMPLES_PER_PACKET,
    AUDIO_SAMPLES_PER_TICK,
    MAX_LAG_TICKS,
    TICK_SECONDS,
    MediaClock,
)


def test_audio_and_video_pts_come_from_the_same_tick():
    for tick in (0, 1, 250, 12345):
        video_seconds = MediaClock.video_pts(tick) / 90000
        audio_seconds = MediaClock.audio_pts(tick, 0) / 16000
        assert video_seconds == audio_seconds
    assert MediaClock.audio_pts(3, 1) - MediaClock.audio_pts(3, 0) == AUDIO_SAMPLES_PER_PACKET
    assert AUDIO_PACKETS_PER_TICK * AUDIO_SAMPLES_PER_PACKET == AUDIO_SAMPLES_PER_TICK


async def test_pacing_is_computed_from_the_start_not_accumulated():
    clock = MediaClock()
    clock.start()
    start = time.monotonic()
    tick = 0
    while tick < 10:
        tick = await clock.wait_for_tick(tick) + 1
        await asyncio.sleep(0.005)  # work per frame must not add up
    assert 0.36 - 0.02 < time.monotonic() - start < 0.36 + 0.06


async def test_far_behind_skips_ahead():
    clock = MediaClock()
    clock.start()
    await asyncio.sleep(0.04 * (MAX_LAG_TICKS + 3))
    assert await clock.wait_for_tick(0) >= MAX_LAG_TICKS + 2
    assert await clock.wait_for_tick(clock.current_tick() - 1) == clock.current_tick() - 1


async def test_clocks_started_apart_agree_on_the_grid_tick():
    """Ticks of two sessions that play in the same 40 ms slot have the same wall tick: they show
    the same idle-loop frame (orchestrator/media/idle_stream.py)."""
    first, second = MediaClock(), MediaClock()
    first.start()
    await asyncio.sleep(0.13)
    second.start()
    for tick in range(0, 50, 7):
        slot = int(second.tick_time(tick) / TICK_SECONDS)
        assert second.wall_tick(tick) == slot
        # first's tick that plays in the same slot
        same = math.ceil((slot * TICK_SECONDS - first.tick_time(0)) / TICK_SECONDS)
        assert int(first.tick_time(same) / TICK_SECONDS) == slot
        assert first.wall_tick(same) == slot
    assert second.wall_tick(10) - second.wall_tick(0) == 10
