"""integrations/pipecat (pipecat-livehuman): a real pipecat Pipeline run by pipecat's own
WorkerRunner, Piper speech played in as TTS frames, a real livehuman server (real Triton), the
avatar's frames back over real WebRTC (issue 23)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from piper_speech import piper_speech as speak
from server_fixtures import livehuman  # noqa: F401  (fixture)

from orchestrator.client import lagged_correlations, mouth_window

pipecat = pytest.importorskip("pipecat", reason="pipecat-ai is in the test extra")
from livehuman_pipecat import LivehumanVideoService  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

TEXT = "The avatar speaks what the agent's voice says, and it stops when the user interrupts."
TTS_CHUNK_S = 0.02
# Where a strip of frames around the interruption is written when asked (the closing note).
STRIP_ENV = "LIVEHUMAN_PIPECAT_STRIP"


@dataclass
class Recorded:
    images: list[tuple[float, np.ndarray]] = field(default_factory=list)
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)  # int16 mono
    audio_rate: int = 0


class Sink(FrameProcessor):
    """The end of the pipeline: what a transport would show and play, with arrival times."""

    def __init__(self, recorded: Recorded, region: tuple[slice, slice]) -> None:
        super().__init__()
        self.recorded, self.region = recorded, region

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        now = time.monotonic()
        if isinstance(frame, OutputImageRawFrame):
            width, height = frame.size
            image = np.frombuffer(frame.image, np.uint8).reshape(height, width, 3)
            self.recorded.images.append((now, image[self.region].copy()))
        elif isinstance(frame, OutputAudioRawFrame):
            self.recorded.audio.append((now, np.frombuffer(frame.audio, np.int16).copy()))
            self.recorded.audio_rate = frame.sample_rate
        await self.push_frame(frame, direction)


@pytest.fixture
async def piper_speech(triton) -> tuple[np.ndarray, int]:
    return await speak(triton.url, TEXT)


def tts_frames(audio: np.ndarray, rate: int) -> list[TTSAudioRawFrame]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    step = int(TTS_CHUNK_S * rate)
    return [TTSAudioRawFrame(audio=pcm[k : k + step].tobytes(), sample_rate=rate, num_channels=1)
            for k in range(0, pcm.size, step)]


async def play_tts(worker: PipelineWorker, audio: np.ndarray, rate: int,
                   stop_after_s: float | None = None) -> None:
    """As a streaming TTS service does: started, 20 ms chunks at real time, stopped."""
    await worker.queue_frame(TTSStartedFrame())
    started = time.monotonic()
    for k, frame in enumerate(tts_frames(audio, rate)):
        if stop_after_s is not None and k * TTS_CHUNK_S >= stop_after_s:
            return
        await worker.queue_frame(frame)
        await asyncio.sleep(max(0.0, started + (k + 1) * TTS_CHUNK_S - time.monotonic()))
    await worker.queue_frame(TTSStoppedFrame())


def loudness_at(recorded: Recorded, times: list[float]) -> np.ndarray:
    """dB of the avatar audio that arrived in the 40 ms before each picture."""
    audio_times = np.array([t for t, _ in recorded.audio])
    levels = np.array([np.sqrt(np.mean((a / 32768.0) ** 2)) for _, a in recorded.audio])
    out = []
    for t in times:
        near = levels[(audio_times > t - 0.04) & (audio_times <= t)]
        out.append(20 * np.log10((near.max() if near.size else 0.0) + 1e-3))
    return np.array(out)


def mouth_motion(images: list[np.ndarray], rest: np.ndarray) -> np.ndarray:
    return np.array([np.abs(i.astype(np.float32) - rest).mean() for i in images])


async def run_pipelines(*pipelines: Pipeline) -> tuple[WorkerRunner, list[PipelineWorker],
                                                         asyncio.Task]:
    workers = [PipelineWorker(p, params=PipelineParams(), idle_timeout_secs=None)
               for p in pipelines]
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(*workers)
    return runner, workers, asyncio.create_task(runner.run())


async def test_pipecat_service_lip_syncs_tts_and_an_interruption_silences_it(
        livehuman, piper_speech):  # noqa: F811
    base_url, services = livehuman
    audio, rate = piper_speech
    region = mouth_window(services.avatars.load("default"))
    speaking, silent = Recorded(), Recorded()
    a = LivehumanVideoService(base_url)
    b = LivehumanVideoService(base_url)  # a second avatar in the same process, never speaking
    runner, (worker_a, worker_b), running = await run_pipelines(
        Pipeline([a, Sink(speaking, region)]), Pipeline([b, Sink(silent, region)]))
    try:
        async with asyncio.timeout(30):
            while len(speaking.images) < 25 or len(silent.images) < 25:
                await asyncio.sleep(0.05)
        assert a.sessionid != b.sessionid
        rest = np.mean([i for _, i in speaking.images[-10:]], axis=0)
        # The whole utterance, at real time.
        sent = time.monotonic()
        await play_tts(worker_a, audio, rate)
        async with asyncio.timeout(30):
            while not any(m["type"] == "playback_finished" for m in a.playback):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert [m["type"] for m in a.playback] == ["playback_started", "playback_finished"]
        assert a.playback[1]["interrupted"] is False
        # Speech came back as the avatar's audio, and the mouth follows it.
        window = [(t, i) for t, i in speaking.images if t >= sent]
        times = [t for t, _ in window]
        motion = mouth_motion([i for _, i in window], rest)
        loudness = loudness_at(speaking, times)
        assert (loudness > -30).sum() > 25, "the avatar's speech came down the pipeline"
        correlations = lagged_correlations(motion, loudness, 3, len(motion) - 3, range(-3, 4))
        best = max(correlations, key=correlations.get)
        assert best in (-2, -1, 0, 1, 2) and correlations[best] > 0.4, correlations
        # No frames leak: the other service's avatar stayed silent, its mouth closed.
        assert not silent.audio, "audio reached the pipeline of the service that never spoke"
        other = [i for t, i in silent.images if t >= sent]
        other_rest = np.mean(other[:10], axis=0)
        assert len(other) > 50 and mouth_motion(other, other_rest).max() < motion.max() / 3

        # An interruption frame silences it.
        a.playback.clear()
        speaking.audio.clear()
        speaking.images.clear()
        await play_tts(worker_a, audio, rate, stop_after_s=1.5)
        async with asyncio.timeout(10):
            while not a.playback:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.6)
        await worker_a.queue_frame(InterruptionFrame())
        interrupted = time.monotonic()
        async with asyncio.timeout(10):
            while not any(m["type"] == "playback_finished" for m in a.playback):
                await asyncio.sleep(0.02)
        assert a.playback[-1]["interrupted"] is True
        await asyncio.sleep(1.0)
        late = [t for t, pcm in speaking.audio if t > interrupted + 0.3 and np.abs(pcm).max() > 300]
        assert not late, f"speech {len(late)} frames after the interruption"
        if os.environ.get(STRIP_ENV):
            write_strip(Path(os.environ[STRIP_ENV]), speaking, interrupted)
    finally:
        await worker_a.queue_frame(EndFrame())
        await worker_b.queue_frame(EndFrame())
        async with asyncio.timeout(20):
            await running
        del runner


def write_strip(path: Path, recorded: Recorded, interrupted: float) -> None:
    """The mouth region of every 4th picture from 1 s before to 1 s after the interruption
    (a red bar under the first picture after it)."""
    import cv2

    near = [(t, i) for t, i in recorded.images if interrupted - 1.0 <= t <= interrupted + 1.0]
    picked = near[::4]
    first_after = next((k for k, (t, _) in enumerate(picked) if t >= interrupted), None)
    tiles = []
    for k, (_, image) in enumerate(picked):
        tile = cv2.resize(np.ascontiguousarray(image), (96, 96))
        bar = np.zeros((6, 96, 3), np.uint8)
        if k == first_after:
            bar[:, :, 0] = 255
        tiles.append(np.vstack([tile, bar]))
    strip = np.hstack(tiles)
    cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))


async def test_direct_mode_speaks_in_the_browsers_session(livehuman, piper_speech):  # noqa: F811
    from orchestrator.client import AvatarClient

    base_url, _ = livehuman
    audio, rate = piper_speech
    browser = AvatarClient(base_url, keep_video=False)  # stands in for the user's page
    recorded = Recorded()
    try:
        await browser.connect()
        await browser.wait_for_video(10)
        service = LivehumanVideoService(base_url, mode="direct", sessionid=browser.sessionid)
        runner, (worker,), running = await run_pipelines(
            Pipeline([service, Sink(recorded, (slice(None), slice(None)))]))
        try:
            await asyncio.sleep(1.0)
            sent = time.monotonic()
            await play_tts(worker, audio, rate, stop_after_s=2.0)
            await worker.queue_frame(TTSStoppedFrame())
            await browser.wait_for_speech(sent, 0.01, timeout=15)
            async with asyncio.timeout(15):
                while not any(m["type"] == "playback_finished" for m in service.playback):
                    await asyncio.sleep(0.05)
            assert service.playback[-1]["interrupted"] is False
            # Nothing comes back through the pipeline: the browser watches the session itself.
            assert not recorded.images and not recorded.audio
        finally:
            await worker.queue_frame(EndFrame())
            async with asyncio.timeout(20):
                await running
            del runner
    finally:
        await browser.close()
