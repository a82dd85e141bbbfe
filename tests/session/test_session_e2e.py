"""A real aiortc peer over loopback against the whole server: video, audio, echo, interrupt."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from server_fixtures import livehuman  # noqa: F401  (fixture)

from orchestrator.client import (
    AvatarClient,
    fps,
    lagged_correlations,
    loudness_per_video_frame,
    mean_window,
    mouth_motion,
    mouth_window,
)
from orchestrator.media.clock import VIDEO_FPS, VIDEO_PTS_PER_TICK
from orchestrator.session.stage import TRANSITION_FRAMES

SPEECH_RMS = 0.01
SENTENCE = "Hello! I am livehuman, a talking avatar. I can speak any text you send me."


async def test_stream_rate_speech_and_lipsync(livehuman):  # noqa: F811
    base_url, services = livehuman
    client = AvatarClient(base_url)
    try:
        await client.connect()
        await client.wait_for_video(10)
        t0 = time.monotonic()
        await asyncio.sleep(2.0)
        r = client.received
        assert fps(r.video_times, t0, t0 + 2.0) >= 24.0
        assert len(r.audio_times) > 0
        assert r.video[-1].shape == (512, 512, 3)
        idle = [f for t, f in zip(r.video_times, r.video) if t >= t0]
        assert max(r.audio_rms[-20:]) < SPEECH_RMS, "idle audio must be silent"

        region = mouth_window(services.avatars.load("default"))
        reference = mean_window(idle, region)
        idle_motion = mouth_motion(idle, region, reference)

        sent = time.monotonic()
        status, answer = await client.post("/human", type="echo", text=SENTENCE)
        assert status == 200 and answer["code"] == 0
        first = await client.wait_for_speech(sent, SPEECH_RMS)
        assert first - sent < 1.0
        status, answer = await client.post("/is_speaking")
        assert answer["data"] is True
        await asyncio.sleep(3.0)

        start = int(np.searchsorted(r.video_times, first)) - 5
        stop = start + 75
        # The mouth moves while speaking, well beyond the idle animation...
        speaking = mouth_motion(r.video[start:stop], region, reference)
        assert speaking.max() > 4 * max(idle_motion.max(), 0.5)
        # ...and follows the loudness of the audio that plays with it (in dB, as the model hears
        # it: log-mel). The tracks may start a frame apart, hence the small lag search; 120 ms
        # smoothing evens out Opus frame boundaries.
        motion = mouth_motion(r.video, region, reference)
        loudness = loudness_per_video_frame(r)
        best = max(lagged_correlations(motion, loudness, start, stop, range(-2, 3)).values())
        assert best > 0.6, f"mouth/audio correlation {best:.2f}"
    finally:
        await client.close()


async def test_interrupt_stops_speech_and_closes_mouth(livehuman):  # noqa: F811
    base_url, services = livehuman
    client = AvatarClient(base_url)
    try:
        await client.connect()
        await client.wait_for_video(10)
        await asyncio.sleep(2.0)
        avatar = services.avatars.load("default")
        region = mouth_window(avatar)
        idle = client.received.video[-50:]
        # A closed mouth is the idle loop's, at whatever pose the loop is when speech stops (the
        # loop shared by idle sessions has moved on meanwhile): the distance to the nearest loop
        # frame is the encoder's noise while idle, and grows when the mouth opens.
        idle_motion = closed_mouth_distance(idle, region, avatar.frames).max()
        long_text = " ".join(["This sentence goes on for a long while so that we can interrupt it."] * 6)
        sent = time.monotonic()
        await client.post("/human", type="echo", text=long_text)
        await client.wait_for_speech(sent, SPEECH_RMS)
        await asyncio.sleep(0.5)
        cut = time.monotonic()
        status, answer = await client.post("/interrupt_talk")
        assert status == 200 and answer["code"] == 0
        status, answer = await client.post("/is_speaking")
        assert answer["data"] is False
        await asyncio.sleep(1.0)
        r = client.received
        # Allow the frames already in flight on the wire (a few ticks), then silence.
        after = [rms for t, rms in zip(r.audio_times, r.audio_rms) if t > cut + 0.25]
        assert after and max(after) < SPEECH_RMS
        spoken = [f for t, f in zip(r.video_times, r.video) if sent < t < cut]
        # The mouth is closed once the frames in flight and the stage's cross-fade back to the
        # idle loop (TRANSITION_FRAMES ticks, added after this test) have gone by.
        closed = [f for t, f in zip(r.video_times, r.video)
                  if t > cut + 0.25 + TRANSITION_FRAMES / VIDEO_FPS]
        speaking_motion = closed_mouth_distance(spoken, region, avatar.frames).max()
        closed_motion = closed_mouth_distance(closed, region, avatar.frames).max()
        assert speaking_motion > 3 * idle_motion
        assert closed_motion < idle_motion + 2.0, (closed_motion, idle_motion)

        # interrupt flag on /human replaces current speech with the new text
        await client.post("/human", type="echo", text=long_text)
        await client.wait_for_speech(time.monotonic(), SPEECH_RMS)
        status, answer = await client.post("/human", type="echo", text="Stop.", interrupt=True)
        assert status == 200
        events = [e["event"] for e in client_session(services, client).events.history]
        assert "interrupted" in events
    finally:
        await client.close()


def closed_mouth_distance(frames: list[np.ndarray], window: tuple[slice, slice],
                          loop: np.ndarray) -> np.ndarray:
    """Per frame: mean absolute difference of its mouth window from the nearest frame of the
    avatar's idle loop (`loop`: uint8 [N, H, W, 3])."""
    rows, cols = window
    closed = loop[:, rows, cols].astype(np.float32)
    return np.array([np.abs(closed - f[rows, cols]).mean(axis=(1, 2, 3)).min() for f in frames])


def client_session(services, client):
    return services.registry.get(client.sessionid)


async def test_session_released_when_peer_closes(livehuman):  # noqa: F811
    base_url, services = livehuman
    for _ in range(100):  # sessions of earlier tests finish closing first
        if len(services.registry) == 0:
            break
        await asyncio.sleep(0.05)
    before = len(services.registry)
    client = AvatarClient(base_url, keep_video=False)
    await client.connect()
    await client.wait_for_video(5)
    assert len(services.registry) == before + 1
    await client.close()
    for _ in range(100):
        if len(services.registry) == before:
            break
        await asyncio.sleep(0.05)
    assert len(services.registry) == before


@pytest.mark.timeout(60)  # a stop swallowed by the counter hangs close() in a thread join
async def test_light_client_counts_frames_without_decoding(livehuman):  # noqa: F811
    """decode=False (the density benchmark's client) sees every frame the server sends, at the
    rate it sends them, by arrival time and RTP timestamp, and decodes none; closing it ends
    the receivers' decoder threads (a counter that swallowed the stop would hang close)."""
    base_url, _ = livehuman
    threads_before = {t.ident for t in threading.enumerate()}
    client = AvatarClient(base_url, decode=False)
    try:
        await client.connect()
        await client.wait_for_video(10)
        t0 = time.monotonic()
        await asyncio.sleep(2.0)
        r = client.received
        assert fps(r.video_times, t0, t0 + 2.0) >= 24.0
        assert fps(r.audio_times, t0, t0 + 2.0) >= 48.0  # 20 ms Opus packets
        assert r.video == [] and r.audio == [] and r.audio_rms == []
        steps = np.diff(r.video_rtp)
        assert len(r.video_rtp) == len(r.video_times)
        assert np.median(steps) == VIDEO_PTS_PER_TICK
        decoders = [t for t in threading.enumerate()
                    if t.ident not in threads_before and t.name.endswith("-decoder")]
        assert len(decoders) == 2
    finally:
        await client.close()
    assert not any(t.is_alive() for t in decoders)
