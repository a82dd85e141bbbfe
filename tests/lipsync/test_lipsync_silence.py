"""Silent frames skip the lip-sync model when the model's closed mouth is its input: the skip
path gives what the model gives, a silent utterance sends Triton nothing, a spoken one does, and a
model that does not declare it (Wav2Lip) sees every frame."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import aiohttp
import numpy as np
from server_fixtures import livehuman  # noqa: F401  (fixture)

from export.default_lipsync import astronaut_example
from export.wav2lip_configs import ModelSignature, container_config, local_config
from orchestrator.client import AvatarClient
from orchestrator.lipsync.base import SILENCE_RETURNS_FACE, silence_returns_face
from orchestrator.lipsync.default import DEFAULT_LIPSYNC_MODEL as LIPSYNC_MODEL
from orchestrator.lipsync.mel import (
    SAMPLE_RATE_HZ,
    SILENCE_PEAK,
    VIDEO_FPS,
    mel_windows,
    melspectrogram,
    silent_frames,
)
from orchestrator.lipsync.models import FRAMES_SKIPPED_SILENT, FRAMES_TO_MODEL, LipSyncModels
from orchestrator.media.wav_file import wav_bytes

SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // VIDEO_FPS
SILENT_SECONDS = 2.0
WAIT_S = 20.0


def silent_audio(seconds: float) -> np.ndarray:
    """+-1 LSB of 16-bit dither: silent by definition (below SILENCE_PEAK), not digital zero."""
    rng = np.random.default_rng(9)
    return (rng.choice([-1.0, 0.0, 1.0], int(seconds * SAMPLE_RATE_HZ)) / 32768).astype(np.float32)


def spoken_audio(seconds: float) -> np.ndarray:
    """A voiced buzz (120 Hz and its harmonics, rolling off above 1 kHz) in syllables, with a
    pause in the middle."""
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    harmonics = np.arange(1, 60)
    voice = sum(min(1.0, (1000.0 / (120.0 * k)) ** 1.5) * np.sin(2 * np.pi * 120.0 * k * t + k)
                for k in harmonics)
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) * (np.abs(t - seconds / 2) > 0.4)
    return (0.3 * envelope * voice / np.abs(voice).max()).astype(np.float32)


def crops_and_windows(audio: np.ndarray) -> tuple[np.ndarray, ...]:
    """The astronaut's uint8 RGB crop and mouth, one per frame of `audio`, its mel windows and
    silence flags."""
    frames = audio.size // SAMPLES_PER_FRAME
    face, mouth = astronaut_example()
    crop = np.clip(face.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return (mel_windows(melspectrogram(audio), frames), silent_frames(audio, frames),
            np.repeat(crop[None], frames, axis=0), np.repeat(mouth[None], frames, axis=0))


async def frames_inferred(model) -> int:
    """Frames Triton has run through the model (its inference statistics)."""
    stats = await model.client._client.get_inference_statistics(model.name, as_json=True)
    return int(stats["model_stats"][0].get("inference_count", 0))


def test_only_models_that_say_so_skip_silence():
    assert silence_returns_face({"parameters": {SILENCE_RETURNS_FACE: {"string_value": "true"}}})
    assert not silence_returns_face({"parameters": {SILENCE_RETURNS_FACE: {"string_value": "0"}}})
    assert not silence_returns_face({})
    # Wav2Lip redraws the lower face from the audio: silent or not, its output is not its input.
    signature = ModelSignature("wav2lip96", 96, 16)
    for text in (container_config(signature, "model.onnx", False), local_config(signature)):
        assert SILENCE_RETURNS_FACE not in text


async def test_skip_path_gives_what_the_model_gives(triton):
    counted: dict[str, int] = {}
    models = LipSyncModels(triton.url, on_frames=lambda path, n: counted.update(
        {path: counted.get(path, 0) + n}))
    try:
        model = await models.get(LIPSYNC_MODEL)
        assert model.silence_returns_face, f"{LIPSYNC_MODEL}'s configs declare it"
        mel, silent, crops, mouth = crops_and_windows(silent_audio(0.6))
        assert silent.all()
        from_model = await model.render(mel, crops, mouth)  # straight to Triton
        before = await frames_inferred(model)
        skipped = await models.render(model, mel, silent, crops, mouth)
        assert await frames_inferred(model) == before, "no silent frame went to Triton"
        np.testing.assert_array_equal(skipped, from_model)  # bit for bit, uint8
        np.testing.assert_array_equal(skipped, crops)
        assert counted == {FRAMES_TO_MODEL: 0, FRAMES_SKIPPED_SILENT: len(mel)}

        # Speech with a pause: only the spoken frames go; the result is the model's for all.
        mel, silent, crops, mouth = crops_and_windows(spoken_audio(2.0))
        assert 0 < silent.sum() < len(silent)
        from_model = await model.render(mel, crops, mouth)
        before = await frames_inferred(model)
        mixed = await models.render(model, mel, silent, crops, mouth)
        assert await frames_inferred(model) - before == (~silent).sum()
        np.testing.assert_array_equal(mixed, from_model)
        assert np.any(mixed != crops), "the spoken frames moved the mouth"

        # A model that does not declare it gets every frame, silent or not.
        undeclared = dataclasses.replace(model, silence_returns_face=False)
        before = await frames_inferred(model)
        await models.render(undeclared, mel, silent, crops, mouth)
        assert await frames_inferred(model) - before == len(mel)
    finally:
        await models.close()




async def scrape(base_url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def lipsync_frames(metrics: dict, path: str) -> float:
    return metrics.get(("livehuman_lipsync_frames_total", (("path", path),)), 0.0)


async def speak_upload(base_url: str, sessionid: int, audio: np.ndarray) -> None:
    """POST /humanaudio, then wait for its `end` (the server counts session events)."""
    ended = ("livehuman_session_events_total", (("event", "end"), ("kind", "echo")))
    before = (await scrape(base_url)).get(ended, 0.0)
    form = aiohttp.FormData()
    form.add_field("sessionid", str(sessionid))
    form.add_field("file", wav_bytes(audio, SAMPLE_RATE_HZ), filename="speech.wav",
                   content_type="application/octet-stream")
    async with aiohttp.ClientSession() as http, http.post(f"{base_url}/humanaudio",
                                                          data=form) as resp:
        assert resp.status == 200, await resp.text()
    deadline = time.monotonic() + WAIT_S
    while (await scrape(base_url)).get(ended, 0.0) <= before:
        assert time.monotonic() < deadline, "the utterance did not end"
        await asyncio.sleep(0.1)


async def test_a_silent_utterance_sends_no_frames_to_triton(livehuman):  # noqa: F811
    base_url, services = livehuman
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(5)
        deadline = time.monotonic() + WAIT_S  # sessions of earlier tests may still be closing
        while (await scrape(base_url))[("livehuman_sessions", ())] > 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        model = await services.lipsync_models.get(LIPSYNC_MODEL)

        audio = silent_audio(SILENT_SECONDS)
        assert np.abs(audio).max() < SILENCE_PEAK
        before, inferred = await scrape(base_url), await frames_inferred(model)
        await speak_upload(base_url, client.sessionid, audio)
        after = await scrape(base_url)
        assert await frames_inferred(model) == inferred, "a silent utterance reached Triton"
        frames = -(-audio.size // SAMPLES_PER_FRAME)  # the last one padded
        skipped = lipsync_frames(after, FRAMES_SKIPPED_SILENT) - lipsync_frames(
            before, FRAMES_SKIPPED_SILENT)
        assert skipped == frames
        assert lipsync_frames(after, FRAMES_TO_MODEL) == lipsync_frames(before, FRAMES_TO_MODEL)

        audio = spoken_audio(1.5)
        before, inferred = after, await frames_inferred(model)
        await speak_upload(base_url, client.sessionid, audio)
        after = await scrape(base_url)
        sent = lipsync_frames(after, FRAMES_TO_MODEL) - lipsync_frames(before, FRAMES_TO_MODEL)
        assert sent > 0 and await frames_inferred(model) - inferred == sent
        assert lipsync_frames(after, FRAMES_SKIPPED_SILENT) - lipsync_frames(
            before, FRAMES_SKIPPED_SILENT) == -(-audio.size // SAMPLES_PER_FRAME) - sent
    finally:
        await client.close()
