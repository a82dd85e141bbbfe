"""`GET /audio_stream`: a voice agent's speech audio streamed in (issue 23), through a real
server, real Triton, a real aiortc client and real Piper speech at Piper's own 22050 Hz."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import av
import numpy as np
import pytest
from piper_speech import piper_speech as speak
from server_fixtures import livehuman  # noqa: F401  (fixture)

from orchestrator.client import (
    AvatarClient,
    lagged_correlations,
    mean_window,
    mouth_motion,
    mouth_window,
)
from orchestrator.speech.streamed_audio import StreamClosed, StreamedAudio

TEXT = "Streaming speech reaches the avatar while the agent is still speaking, word by word."
CHUNK_S = 0.02  # what voice agents send: 20 ms frames
SPEECH_RMS = 0.01


@pytest.fixture
async def piper_speech(triton) -> tuple[np.ndarray, int]:
    return await speak(triton.url, TEXT)


def pcm_s16(audio: np.ndarray, channels: int = 1) -> bytes:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    return np.repeat(pcm, channels).tobytes() if channels > 1 else pcm.tobytes()


@contextlib.asynccontextmanager
async def session_and_socket(base_url: str, **client_options):
    """A connected client (its first frames in) and an /audio_stream socket to its session."""
    client = AvatarClient(base_url, **client_options)
    try:
        await client.connect()
        await client.wait_for_video(10)
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"{base_url}/audio_stream", params={"sessionid": str(client.sessionid)}) as ws:
            yield client, ws
    finally:
        await client.close()


async def messages_until(ws, wanted: str, timeout: float = 30.0) -> list[dict]:
    """Every JSON message up to and including the first of type `wanted`."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive_json()
            seen.append(message)
            if message["type"] == wanted:
                return seen


async def stream_at_real_time(ws, audio: np.ndarray, rate: int) -> None:
    step = int(CHUNK_S * rate)
    started = time.monotonic()
    for k, start in enumerate(range(0, audio.size, step)):
        await ws.send_bytes(pcm_s16(audio[start : start + step]))
        await asyncio.sleep(max(0.0, started + (k + 1) * CHUNK_S - time.monotonic()))


async def test_a_streamed_segment_is_lip_synced_as_it_arrives(livehuman, piper_speech):  # noqa: F811
    base_url, services = livehuman
    audio, rate = piper_speech
    async with session_and_socket(base_url, keep_video=False) as (client, ws):
        # What the server rendered, exactly (its recording): the client's own A/V timing
        # depends on its machine's load.
        status, answer = await client.post("/record", type="start_record")
        assert status == 200, answer
        await asyncio.sleep(0.6)  # idle frames first: the closed-mouth reference
        await ws.send_json({"type": "start", "sample_rate": rate, "channels": 1,
                            "format": "pcm_s16le", "id": "answer-1"})
        sent = time.monotonic()
        await stream_at_real_time(ws, audio, rate)
        await ws.send_json({"type": "end"})
        seen = await messages_until(ws, "playback_finished")
        assert [m["type"] for m in seen] == ["playback_started", "playback_finished"], seen
        assert seen[0]["id"] == seen[1]["id"] == "answer-1"
        assert seen[1]["interrupted"] is False
        # Every frame of the segment played (padded up to a whole 40 ms frame).
        assert abs(seen[1]["position_s"] - audio.size / rate) <= 0.04 + 1e-6, seen[1]
        first_audio = await client.wait_for_speech(sent, SPEECH_RMS)
        assert first_audio - sent < 5.0  # it is spoken as it arrives, not after the end
        await asyncio.sleep(0.3)
        status, answer = await client.post("/record", type="end_record")
        assert status == 200, answer
    with av.open(str(services.settings.data_dir / answer["data"]["path"])) as container:
        heard = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])
        container.seek(0)
        video = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    # The mouth follows the voice with no lag: video frames against the loudness of their
    # 40 ms of audio (48 kHz AAC in the MP4).
    region = mouth_window(services.avatars.load("default"))
    motion = mouth_motion(video, region, mean_window(video[:10], region))
    per_frame = heard[: heard.size // 1920 * 1920].reshape(-1, 1920)
    loudness = 20 * np.log10(np.sqrt((per_frame**2).mean(axis=1)) + 1e-3)
    n = min(len(motion), len(loudness))
    correlations = lagged_correlations(motion, loudness, 5, n - 5, range(-3, 4))
    best = max(correlations, key=correlations.get)
    assert best == 0 and correlations[0] > 0.6, correlations


async def test_clear_silences_the_avatar_and_the_socket_stays_usable(livehuman, piper_speech):  # noqa: F811
    base_url, _ = livehuman
    audio, rate = piper_speech
    async with session_and_socket(base_url, keep_video=False) as (client, ws):
        await ws.send_json({"type": "start", "sample_rate": rate, "id": "long"})
        # A burst: the whole answer at once, faster than real time.
        await ws.send_bytes(pcm_s16(audio))
        await messages_until(ws, "playback_started")
        await asyncio.sleep(0.5)
        await ws.send_json({"type": "clear"})
        cleared = time.monotonic()
        finished = (await messages_until(ws, "playback_finished"))[-1]
        assert finished["id"] == "long" and finished["interrupted"] is True
        assert 0.2 < finished["position_s"] < audio.size / rate - 0.5, finished
        # Audio after the clear (from 0.3 s on: what was in flight) is silence.
        await asyncio.sleep(1.0)
        r = client.received
        after = [rms for t, rms in zip(r.audio_times, r.audio_rms) if t > cleared + 0.3]
        assert after and max(after) < 0.002, max(after)
        # The rest of the interrupted segment is refused, then a new one plays.
        await ws.send_bytes(pcm_s16(audio[:rate]))
        error = await ws.receive_json(timeout=5)
        assert error["type"] == "error" and error["code"] == 400 and "start" in error["msg"]
        await ws.send_json({"type": "start", "sample_rate": rate, "id": "again"})
        await ws.send_bytes(pcm_s16(audio[: rate // 2]))
        await ws.send_json({"type": "end"})
        seen = await messages_until(ws, "playback_finished")
        assert seen[-1]["id"] == "again" and seen[-1]["interrupted"] is False


@pytest.mark.parametrize(("message", "field"), [
    ({"type": "start", "sample_rate": 7999}, "sample_rate"),
    ({"type": "start", "sample_rate": 96000}, "sample_rate"),
    ({"type": "start", "sample_rate": "16000"}, "sample_rate"),
    ({"type": "start", "sample_rate": 16000, "channels": 3}, "channels"),
    ({"type": "start", "sample_rate": 16000, "format": "f32le"}, "format"),
    ({"type": "start", "sample_rate": 16000, "id": 7}, "id"),
    ({"type": "pause"}, "type"),
    ({"type": "end"}, "type"),
    ([1, 2], "JSON object"),
])
async def test_bad_messages_get_an_error_naming_the_field(livehuman, message, field):  # noqa: F811
    base_url, _ = livehuman
    async with session_and_socket(base_url, keep_video=False) as (client, ws):
        await ws.send_str(json.dumps(message))
        error = await ws.receive_json(timeout=5)
        assert error["type"] == "error" and error["code"] == 400 and field in error["msg"]
        # Still usable: a stereo 48 kHz segment of a tone plays to its end.
        tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(24000) / 48000)
        await ws.send_json({"type": "start", "sample_rate": 48000, "channels": 2})
        await ws.send_bytes(pcm_s16(tone, channels=2)[:-1])  # a sample split in two...
        await ws.send_bytes(pcm_s16(tone, channels=2)[-1:])  # ...messages is kept whole
        await ws.send_json({"type": "end"})
        finished = (await messages_until(ws, "playback_finished"))[-1]
        assert finished["interrupted"] is False
        assert abs(finished["position_s"] - 0.5) <= 0.04 + 1e-6


async def test_unknown_session_is_refused_before_the_upgrade(livehuman):  # noqa: F811
    base_url, _ = livehuman
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/audio_stream", params={"sessionid": "424242"}) as resp:
            assert resp.status == 404 and "sessionid" in (await resp.json())["msg"]
        async with http.get(f"{base_url}/audio_stream") as resp:
            assert resp.status == 400 and "sessionid" in (await resp.json())["msg"]


async def test_a_closed_socket_ends_its_segment_and_it_plays_out(livehuman, piper_speech):  # noqa: F811
    base_url, services = livehuman
    audio, rate = piper_speech
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(5)
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"{base_url}/audio_stream", params={"sessionid": str(client.sessionid)}) as ws:
            await ws.send_json({"type": "start", "sample_rate": rate})
            await ws.send_bytes(pcm_s16(audio[:rate]))  # one second, no 'end'
        session = services.registry.get(client.sessionid)
        async with asyncio.timeout(15):
            while not any(e["event"] == "end" and e.get("kind") == "stream"
                          for e in session.events.history):
                await asyncio.sleep(0.05)
        end = next(e for e in session.events.history if e["event"] == "end")
        assert abs(end["played_s"] - 1.0) <= 0.04 + 1e-6
    finally:
        await client.close()


async def test_a_full_stream_holds_its_producer_back():
    stream = StreamedAudio(16000, max_buffered_s=1.0)
    await stream.push(np.zeros(16000, np.float32))
    blocked = asyncio.create_task(stream.push(np.zeros(160, np.float32)))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # a second is buffered: the producer waits
    reader = stream.chunks()
    first = await anext(reader)
    assert first.size == 8000  # at most MAX_READ_S at a time
    await asyncio.wait_for(blocked, 1)  # room again
    assert stream.buffered_s == pytest.approx((8000 + 160) / 16000)
    await stream.cancel()
    with pytest.raises(StreamClosed):
        await stream.push(np.zeros(10, np.float32))
    assert [c async for c in reader] == []
