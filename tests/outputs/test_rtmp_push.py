"""outputs/rtmp.py against a real nginx-rtmp: what it pushes reads back as H.264 + AAC, and a
server that hangs (accepts the connection, never answers: FFmpeg's connect then blocks holding
the GIL) costs the player no tick; its worker is killed and replaced until the server answers
again."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from rtmp_server import NginxRtmp, read_stream, requires_nginx_rtmp

from orchestrator.media.clock import AUDIO_SAMPLES_PER_TICK, MediaClock
from orchestrator.outputs.rtmp import RtmpPush

pytestmark = requires_nginx_rtmp

WIDTH, HEIGHT = 320, 240
TONE_HZ = 440.0
STALL_TIMEOUT_S = 1.0


class Player:
    """A session's player in miniature: the media clock's ticks, a grey frame and a tone."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.clock = MediaClock()
        self.ticks = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.clock.start()
        self._task = asyncio.create_task(self._play())

    async def _play(self) -> None:
        image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
        t = np.arange(AUDIO_SAMPLES_PER_TICK) / 16000
        tick = 0
        while True:
            tick = await self.clock.wait_for_tick(tick)
            phase = 2 * np.pi * TONE_HZ * tick * AUDIO_SAMPLES_PER_TICK / 16000
            pcm = (8000 * np.sin(2 * np.pi * TONE_HZ * t + phase)).astype(np.int16)
            self.sink.add(tick, image, pcm)
            self.ticks += 1
            tick += 1

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


@pytest.fixture
def nginx(tmp_path):
    server = NginxRtmp(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.resume()  # a test that failed mid-pause
    server.stop()


@pytest.mark.timeout(120)
async def test_push_reads_back_as_video_of_the_frame_size_and_the_tone(nginx):
    push = RtmpPush(nginx.url("tone"), WIDTH, HEIGHT)
    player = Player(push)
    player.start()
    try:
        await wait_until(lambda: push.up, 10, "push never connected")
        got = await asyncio.to_thread(read_stream, nginx.url("tone"), 2.0, 10)
    finally:
        await player.stop()
        await push.close()
    assert set(got.video_sizes) == {(WIDTH, HEIGHT)}, got.video_sizes[:5]
    assert got.audio_rate_hz == 44100 and got.audio_seconds >= 2.0
    # 8000/32768 peak is 0.17 rms; AAC keeps the tone's level within a few percent
    assert 0.12 < float(np.median(got.audio_rms)) < 0.22, got.audio_rms[:10]
    assert push.outages == 0 and push.connections == 1


@pytest.mark.timeout(120)
async def test_a_hung_server_is_given_up_and_the_player_never_waits(nginx, caplog):
    caplog.set_level(logging.INFO, logger="orchestrator.outputs.rtmp")
    nginx.pause()  # the kernel still accepts the connection; nginx never answers the handshake
    push = RtmpPush(nginx.url("hung"), WIDTH, HEIGHT, stall_timeout_s=STALL_TIMEOUT_S)
    player = Player(push)
    player.start()
    try:
        await asyncio.sleep(4 * STALL_TIMEOUT_S)
        # The player kept its clock: ~100 ticks in 4 s (a blocked push would have stopped it).
        assert player.ticks >= 60, player.ticks
        assert push.state == "down" and push.outages == 1 and push.connections == 0
        lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
        assert len(lost) == 1, lost  # once per outage, however many workers were replaced
        assert "no progress" in lost[0] and "hung" not in lost[0]  # the stream key stays out
        nginx.resume()
        await wait_until(lambda: push.up, 30, f"push never came back: {nginx.log()}")
        got = await asyncio.to_thread(read_stream, nginx.url("hung"), 1.0, 5)
        assert set(got.video_sizes) == {(WIDTH, HEIGHT)}
        assert any("rtmp push back" in r.getMessage() for r in caplog.records)
    finally:
        await player.stop()
        await push.close()
