"""outputs/rtmp.py against a real nginx-rtmp: what it pushes reads back as H.264 + AAC, and a
server that hangs (accepts the connection, never answers: FFmpeg's connect then blocks holding
the GIL) costs the player no tick; its worker is killed and replaced until the server answers
again."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import av
import numpy as np
import pytest
from rtmp_server import READ_OPEN_TIMEOUT_S, NginxRtmp, read_stream, requires_nginx_rtmp

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


def read_timestamps(url: str, playing: threading.Event,
                    stop: threading.Event) -> list[tuple[str, float, float]]:
    """A player that stays connected until `stop`: (stream type, dts in seconds, monotonic
    time it arrived) of every packet, as FFmpeg's RTMP demuxer reads them; `playing` is set
    at the first (once FFmpeg has probed the stream)."""
    got = []
    with av.open(url, timeout=(READ_OPEN_TIMEOUT_S, 20.0)) as container:
        for packet in container.demux():
            if packet.dts is not None:
                got.append((packet.stream.type, float(packet.dts * packet.time_base),
                            time.monotonic()))
                playing.set()
            if stop.is_set():
                break
    return got


@pytest.mark.timeout(120)
async def test_timestamps_go_on_across_a_reconnect_for_a_player_that_stays(nginx):
    """Issue 22: each new connection stamped from 0, so a player that stayed connected saw time
    jump back (FFmpeg read 51.9 s -> 0.02 s as a wrap to 4,294,996 s). Timestamps are the
    session's clock: after the pusher reconnects they go on, forward by the outage."""
    push = RtmpPush(nginx.url("again"), WIDTH, HEIGHT)
    player = Player(push)
    player.start()
    playing, stop = threading.Event(), threading.Event()
    try:
        await wait_until(lambda: push.up, 10, "push never connected")
        reading = asyncio.ensure_future(asyncio.to_thread(read_timestamps, nginx.url("again"),
                                                          playing, stop))
        await wait_until(playing.is_set, 30, "the player got nothing")
        await asyncio.sleep(2.0)
        killed_at = time.monotonic()
        push._worker.kill()  # the pusher's connection ends; the push makes a new one
        await wait_until(lambda: push.connections == 2 and push.up, 30,
                         f"push never came back: {nginx.log()}")
        await asyncio.sleep(3.0)
        stop.set()
        packets = await asyncio.wait_for(reading, 30)
    finally:
        stop.set()
        await player.stop()
        await push.close()
    after = [p for p in packets if p[2] > killed_at + 0.5]
    assert after, "the player saw nothing after the reconnect (it was disconnected)"
    for kind in ("video", "audio"):
        stamps = [dts for k, dts, _ in packets if k == kind]
        backwards = [(a, b) for a, b in zip(stamps, stamps[1:]) if b < a - 0.001]
        assert not backwards, (kind, backwards[:3])
        assert stamps[-1] < 60, (kind, stamps[-1])  # no wrap to 4,294,996 s
    before = max(dts for k, dts, arrived in packets if k == "video" and arrived < killed_at)
    first_after = min(dts for k, dts, _ in after if k == "video")
    # forward by the outage: the clock went on while the push was reconnecting
    assert first_after > before, (before, first_after)
