"""A real aiortc peer over loopback against the whole server: video, audio, echo, interrupt."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from server_fixtures import livehuman  # noqa: F401  (fixture)

from orchestrator.client import AvatarClient, fps, mean_window, mouth_motion, mouth_window

SPEECH_RMS = 0.01
SENTENCE = "Hello! I am livehuman, a talking avatar. I can speak any text you send me."


def audio_envelope_at(times: np.ndarray, client: AvatarClient) -> np.ndarray:
    """Audio RMS around each given arrival time (40 ms window)."""
    at = np.array(client.received.audio_times)
    rms = np.array(client.received.audio_rms)
    return np.array([rms[(at >= t - 0.04) & (at < t)].mean() if ((at >= t - 0.04) & (at < t)).any()
                     else 0.0 for t in times])


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

        speech_times = np.array([t for t in r.video_times if first <= t < first + 3.0])
        speech_frames = [f for t, f in zip(r.video_times, r.video) if first <= t < first + 3.0]
        motion = mouth_motion(speech_frames, region, reference)
        envelope = audio_envelope_at(speech_times, client)
        # The mouth moves while speaking, well beyond the idle animation...
        assert motion.max() > 4 * max(idle_motion.max(), 0.5)
        # ...and follows the loudness of the audio that plays with it.
        best = max(
            np.corrcoef(motion[max(0, lag):len(motion) + min(0, lag)],
                        envelope[max(0, -lag):len(envelope) - max(0, lag)])[0, 1]
            for lag in range(-2, 3)
        )
        assert best > 0.5, f"mouth/audio correlation {best:.2f}"
    finally:
        await client.close()


async def test_interrupt_stops_speech_and_closes_mouth(livehuman):  # noqa: F811
    base_url, services = livehuman
    client = AvatarClient(base_url)
    try:
        await client.connect()
        await client.wait_for_video(10)
        region = mouth_window(services.avatars.load("default"))
        reference = mean_window(client.received.video[-5:], region)
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
        closed = [f for t, f in zip(r.video_times, r.video) if t > cut + 0.25]
        assert mouth_motion(closed, region, reference).max() < 3.0

        # interrupt flag on /human replaces current speech with the new text
        await client.post("/human", type="echo", text=long_text)
        await client.wait_for_speech(time.monotonic(), SPEECH_RMS)
        status, answer = await client.post("/human", type="echo", text="Stop.", interrupt=True)
        assert status == 200
        events = [e["event"] for e in client_session(services, client).events.history]
        assert "interrupted" in events
    finally:
        await client.close()


def client_session(services, client):
    return services.registry.get(client.sessionid)


async def test_session_released_when_peer_closes(livehuman):  # noqa: F811
    base_url, services = livehuman
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
