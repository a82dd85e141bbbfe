"""Streaming audio in (`GET /audio_stream`, issue 23): how soon and how smoothly a voice agent's
speech becomes a talking avatar.

A fresh `python -m orchestrator` (embedded Triton) and one aiortc client that decodes everything.
Piper's speech (22050 Hz, through the server's own Triton) is streamed in 20 ms chunks at real
time, `--runs` times, one segment each:
- first frame: from the first chunk sent to the first decoded picture whose mouth differs from
  the closed mouth (mean absolute difference over the mouth box > MOUTH_MOVED), and to the
  first audio packet with speech energy at the client;
- stalls: (playback_finished - playback_started, at the client) - position_s: how much longer
  than the audio the playback took, i.e. ticks the player waited for frames (0 = no gaps);
- A/V offset: the lag (in 40 ms frames) where the mouth's motion best correlates with the
  loudness of the audio that arrived with it (0: in sync);
- clear: a segment cut 1 s in: from sending `clear` to the last loud audio packet at the client;
- burst: `--burst-s` seconds of audio sent as fast as the socket takes it: how much was accepted
  in 10 s (back-pressure holds the sender at the 120 s buffer) and the server's RSS before and
  after (MiB).
`--pipecat` adds the first-audio figure through integrations/pipecat in a real pipecat
pipeline (its own session): first TTS frame queued → first avatar audio frame downstream.

    python bench/audio_stream.py [--runs 5] [--burst-s 600] [--pipecat]

Writes bench/results/audio_stream.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

import aiohttp
import numpy as np
from server_process import start_server  # bench/ is the script's directory

from orchestrator.avatar.store import AvatarStore
from orchestrator.client import AvatarClient, lagged_correlations, mouth_window
from orchestrator.settings import Settings
from orchestrator.tts import PiperEngine, Voice, synthesize_all

RESULTS = Path(__file__).parent / "results"
TEXT = ("A voice agent streams its answer to the avatar while it is still being synthesised, "
        "and the face speaks it as it arrives.")
CHUNK_S = 0.02
MOUTH_MOVED = 6.0  # mean absolute difference (0-255) from the closed mouth
SPEECH_RMS = 0.01


def pcm_bytes(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


async def send_real_time(ws, audio: np.ndarray, rate: int, stop_after_s: float | None = None,
                         ) -> float:
    """20 ms chunks at real time; returns when the first was sent (monotonic)."""
    step = int(CHUNK_S * rate)
    started = time.monotonic()
    for k, start in enumerate(range(0, audio.size, step)):
        if stop_after_s is not None and k * CHUNK_S >= stop_after_s:
            break
        await ws.send_bytes(pcm_bytes(audio[start : start + step]))
        await asyncio.sleep(max(0.0, started + (k + 1) * CHUNK_S - time.monotonic()))
    return started


async def until(ws, wanted: str, times: dict) -> dict:
    async with asyncio.timeout(60):
        while True:
            message = await ws.receive_json()
            times[message["type"]] = time.monotonic()
            if message["type"] == wanted:
                return message


async def one_segment(base_url: str, client: AvatarClient, rest: np.ndarray,
                      audio: np.ndarray, rate: int) -> dict:
    r = client.received
    video_from, audio_from = len(r.video), len(r.audio)
    times: dict[str, float] = {}
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{base_url}/audio_stream", params={"sessionid": str(client.sessionid)}) as ws:
        await ws.send_json({"type": "start", "sample_rate": rate, "channels": 1,
                            "format": "pcm_s16le"})
        reader = asyncio.create_task(until(ws, "playback_finished", times))
        sent = await send_real_time(ws, audio, rate)
        await ws.send_json({"type": "end"})
        finished = await reader
    await asyncio.sleep(0.5)
    moved = next((t for t, image in zip(r.video_times[video_from:], r.video[video_from:])
                  if np.abs(image.astype(np.float32) - rest).mean() > MOUTH_MOVED), None)
    heard = next((t for t, rms in zip(r.audio_times[audio_from:], r.audio_rms[audio_from:])
                  if t >= sent and rms > SPEECH_RMS), None)
    # A/V: per picture, the loudness of the audio that arrived in the 40 ms before it.
    pictures = list(zip(r.video_times[video_from:], r.video[video_from:]))
    audio_times = np.array(r.audio_times[audio_from:])
    levels = np.array(r.audio_rms[audio_from:])
    motion, loudness = [], []
    for t, image in pictures:
        near = levels[(audio_times > t - 0.04) & (audio_times <= t)]
        motion.append(np.abs(image.astype(np.float32) - rest).mean())
        loudness.append(20 * np.log10((near.max() if near.size else 0.0) + 1e-3))
    correlations = lagged_correlations(np.array(motion), np.array(loudness), 5,
                                       len(motion) - 5, range(-5, 6))
    return {
        "first_mouth_ms": None if moved is None else round(1000 * (moved - sent), 1),
        "first_audio_ms": None if heard is None else round(1000 * (heard - sent), 1),
        "stall_s": round(times["playback_finished"] - times["playback_started"]
                         - finished["position_s"], 3),
        "position_s": finished["position_s"],
        "audio_s": round(audio.size / rate, 3),
        "av_offset_frames": max(correlations, key=correlations.get),
        "av_correlation": round(max(correlations.values()), 3),
    }


async def clear_run(base_url: str, client: AvatarClient, audio: np.ndarray, rate: int) -> dict:
    r = client.received
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{base_url}/audio_stream", params={"sessionid": str(client.sessionid)}) as ws:
        await ws.send_json({"type": "start", "sample_rate": rate})
        times: dict[str, float] = {}
        await ws.send_bytes(pcm_bytes(audio))  # all of it: still speaking when cut
        await until(ws, "playback_started", times)
        await asyncio.sleep(1.0)
        await ws.send_json({"type": "clear"})
        cleared = time.monotonic()
        finished = await until(ws, "playback_finished", times)
    await asyncio.sleep(1.0)
    loud = [t for t, rms in zip(r.audio_times, r.audio_rms) if t >= cleared and rms > SPEECH_RMS]
    return {"clear_to_silence_ms": round(1000 * ((max(loud) if loud else cleared) - cleared), 1),
            "position_s": finished["position_s"], "interrupted": finished["interrupted"]}


async def burst_run(base_url: str, server, sessionid: int, seconds: float, rate: int) -> dict:
    """`seconds` of audio offered as fast as possible for 10 s: what the server took, and its
    memory."""
    before = server.memory_kib()["rss_kib"] / 1024
    tone = 0.2 * np.sin(2 * np.pi * 180 * np.arange(rate) / rate)  # 1 s
    chunk = pcm_bytes(tone)
    accepted_s = 0.0
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{base_url}/audio_stream", params={"sessionid": str(sessionid)}) as ws:
        await ws.send_json({"type": "start", "sample_rate": rate})
        deadline = time.monotonic() + 10.0
        while accepted_s < seconds and time.monotonic() < deadline:
            try:
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await ws.send_bytes(chunk)  # aiohttp waits for the socket to drain
            except TimeoutError:
                break
            accepted_s += 1.0
        peak = server.memory_kib()["rss_kib"] / 1024
        await ws.send_json({"type": "clear"})
    return {"offered_s": seconds, "sent_in_10_s": accepted_s,
            "server_rss_mib_before": round(before, 1), "server_rss_mib_during": round(peak, 1)}


async def pipecat_first_audio(base_url: str, audio: np.ndarray, rate: int, runs: int) -> dict:
    from livehuman_pipecat import LivehumanVideoService
    from pipecat.frames.frames import (
        EndFrame,
        OutputAudioRawFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    heard: list[float] = []

    class Sink(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, OutputAudioRawFrame):
                heard.append(time.monotonic())
            await self.push_frame(frame, direction)

    service = LivehumanVideoService(base_url)
    worker = PipelineWorker(Pipeline([service, Sink()]), params=PipelineParams(),
                            idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    step = int(CHUNK_S * rate)
    firsts = []
    try:
        await asyncio.sleep(3.0)  # connected, idle frames flowing
        for _ in range(runs):
            heard.clear()
            await worker.queue_frame(TTSStartedFrame())
            started = time.monotonic()
            for k in range(0, pcm.size, step):
                await worker.queue_frame(TTSAudioRawFrame(pcm[k : k + step].tobytes(), rate, 1))
                await asyncio.sleep(max(0.0, started + (k // step + 1) * CHUNK_S
                                        - time.monotonic()))
            await worker.queue_frame(TTSStoppedFrame())
            await asyncio.sleep(1.5)
            if heard:
                firsts.append(round(1000 * (heard[0] - started), 1))
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, 20)
    return {"first_audio_ms": firsts,
            "first_audio_ms_p50": statistics.median(firsts) if firsts else None}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--burst-s", type=float, default=600.0)
    parser.add_argument("--pipecat", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "audio_stream.json")
    args = parser.parse_args()
    server = await start_server()
    try:
        piper = await PiperEngine.open(server.triton_url)
        try:
            audio = await synthesize_all(piper, TEXT, Voice.named("joe"))
            rate = piper.sample_rate_hz
        finally:
            await piper.close()
        region = mouth_window(AvatarStore(Settings().avatar_dir).load("default"))
        client = AvatarClient(server.base_url, video_region=region)
        await client.connect()
        await client.wait_for_video(25, timeout=30)
        await asyncio.sleep(1.0)
        rest = np.mean(client.received.video[-10:], axis=0)
        segments = [await one_segment(server.base_url, client, rest, audio, rate)
                    for _ in range(args.runs)]
        cleared = await clear_run(server.base_url, client, audio, rate)
        burst = await burst_run(server.base_url, server, client.sessionid, args.burst_s, rate)
        await client.close()
        through_pipecat = (await pipecat_first_audio(server.base_url, audio, rate, args.runs)
                           if args.pipecat else None)
    finally:
        server.stop()

    def p(values, q):
        values = sorted(v for v in values if v is not None)
        return values[min(len(values) - 1, int(q * len(values)))] if values else None

    result = {
        "machine": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "audio_s": round(audio.size / rate, 3), "rate_hz": rate, "segments": segments,
        "first_mouth_ms_p50": p([s["first_mouth_ms"] for s in segments], 0.5),
        "first_mouth_ms_p95": p([s["first_mouth_ms"] for s in segments], 0.95),
        "first_audio_ms_p50": p([s["first_audio_ms"] for s in segments], 0.5),
        "first_audio_ms_p95": p([s["first_audio_ms"] for s in segments], 0.95),
        "stall_s_max": max(s["stall_s"] for s in segments),
        "av_offset_frames": [s["av_offset_frames"] for s in segments],
        "clear": cleared, "burst": burst, "pipecat": through_pipecat,
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "segments"}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
