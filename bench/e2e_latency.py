"""End-to-end latency of one session: POST /human → first speech audio at a WebRTC client,
for `echo` and for `chat` answered by a local fake LLM streaming at a fixed token rate.

Starts the fake OpenAI-compatible LLM (tests/support/fake_openai.py) and `python -m orchestrator`
(embedded Triton, --llm-base-url at the fake) on 127.0.0.1 as their own processes, connects a
real aiortc client, sends N echo utterances and then N chat questions, one after another (each
after the previous one ended), and reports:
- latency: POST /human → arrival of the first audio frame with speech energy, p50/p95, for
  echo and for chat;
- delivered fps over the whole run;
- audio/video offset, two ways: by arrival (first mouth movement minus first speech audio, per
  utterance, as a viewer sees them) and by media time (the lag that best aligns mouth motion with
  loudness, i.e. what the server put into the streams);
Writes bench/results/e2e_latency.json. With --frames DIR it also saves a closed-mouth (idle) and
an open-mouth frame as the client received them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np
from server_process import start_server  # bench/ is the script's directory

from orchestrator.avatar.store import AvatarStore
from orchestrator.client import (
    AvatarClient,
    fps,
    lagged_correlations,
    loudness_per_video_frame,
    mean_window,
    mouth_motion,
    mouth_window,
)
from orchestrator.settings import Settings

RESULTS = Path(__file__).parent / "results"
FAKE_LLM = Path(__file__).resolve().parent.parent / "tests" / "support" / "fake_openai.py"
LLM_TOKENS_PER_SECOND = 20.0
# The first sentence is 5 tokens (words): at 20 tokens/s the LLM alone takes ~0.25 s for it.
CHAT_REPLY = "Sure, we open at nine. On weekends we open at ten, and we close at six every day."
QUESTIONS = ["When do you open?", "What are your hours?", "Are you open on Sunday?"]
SPEECH_RMS = 0.01
IDLE_SECONDS = 2.0
# Mouth motion counts as speech once it exceeds the idle loop's own motion by this much.
MOTION_MARGIN = 4.0
UTTERANCES = [
    "Hello there.", "Welcome to livehuman.", "How can I help you today?",
    "The weather is nice.", "Our store opens at nine.", "Thank you for waiting.",
    "Let me check that for you.", "Your order has shipped.", "Please hold on a moment.",
    "That is a great question.", "We accept all major cards.", "Goodbye and take care.",
]
WHOLE_FRAME = (slice(None), slice(None))


def first_at_or_after(times: list[float], values: np.ndarray, since: float, threshold: float):
    start = int(np.searchsorted(times, since))
    above = np.nonzero(values[start:] > threshold)[0]
    return times[start + int(above[0])] if above.size else None


async def save_frames(base_url: str, region: tuple[slice, slice], out: Path) -> None:
    """One short utterance with whole frames kept: the idle frame and the widest-open frame."""
    client = AvatarClient(base_url)
    try:
        await client.connect()
        await client.wait_for_video(25)
        r = client.received
        reference = mean_window(r.video[-10:], region)
        sent = time.monotonic()
        await client.post("/human", type="echo", text="Welcome to livehuman!")
        await client.wait_for_speech(sent, SPEECH_RMS)
        await asyncio.sleep(1.5)
        motion = mouth_motion(r.video, region, reference)
        before = int(np.searchsorted(r.video_times, sent))
        closed, opened = int(motion[:before].argmin()), int(motion.argmax())
        out.mkdir(parents=True, exist_ok=True)
        for name, index in (("mouth_closed.png", closed), ("mouth_open.png", opened)):
            av.VideoFrame.from_ndarray(r.video[index], format="rgb24").to_image().save(out / name)
    finally:
        await client.close()


async def start_fake_llm() -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(FAKE_LLM), "--tokens-per-second", str(LLM_TOKENS_PER_SECOND),
        "--reply", CHAT_REPLY, stdout=asyncio.subprocess.PIPE)
    base_url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    return process, base_url


async def speak_all(client: AvatarClient, kind: str, texts: list[str], n: int,
                    reference: np.ndarray | None = None, threshold: float = 0.0):
    """Latencies (s) of n utterances; with a reference, also mouth-vs-voice arrival offsets."""
    r = client.received
    latencies, offsets = [], []
    for i in range(n):
        sent = time.monotonic()
        await client.post("/human", type=kind, text=texts[i % len(texts)])
        first_audio = await client.wait_for_speech(sent, SPEECH_RMS)
        latencies.append(first_audio - sent)
        while (await client.post("/is_speaking"))[1]["data"]:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        if reference is None:
            continue
        recent = max(0, len(r.video) - int((time.monotonic() - sent) * 25 + 25))
        motion = mouth_motion(r.video[recent:], WHOLE_FRAME, reference)
        first_motion = first_at_or_after(r.video_times[recent:], motion, sent, threshold)
        if first_motion is not None:
            offsets.append(first_motion - first_audio)
    return latencies, offsets


def summary_ms(latencies: list[float]) -> dict:
    ms = [1000 * x for x in latencies]
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "min": min(ms), "max": max(ms)}


async def run(n: int, frames_dir: Path | None) -> dict:
    settings = Settings()
    avatar = AvatarStore(settings.avatar_dir).load(settings.avatar_id)
    region = mouth_window(avatar)
    llm, llm_url = await start_fake_llm()
    server = await start_server("--llm-base-url", llm_url, "--llm-model", "fake")
    client = AvatarClient(server.base_url, video_region=region)
    try:
        await client.connect()
        await client.wait_for_video(25)
        await asyncio.sleep(IDLE_SECONDS)
        r = client.received
        idle = r.video[-int(IDLE_SECONDS * 25):]
        reference = mean_window(idle, WHOLE_FRAME)
        threshold = mouth_motion(idle, WHOLE_FRAME, reference).max() + MOTION_MARGIN
        t_start, speech_start = time.monotonic(), len(r.video_times)
        cpu_start = server.cpu_seconds()
        echo, arrival_offsets = await speak_all(client, "echo", UTTERANCES, n, reference, threshold)
        t_stop = time.monotonic()
        server_cores = (server.cpu_seconds() - cpu_start) / (t_stop - t_start)
        delivered = fps(r.video_times, t_start, t_stop)
        motion = mouth_motion(r.video, WHOLE_FRAME, reference)
        loudness = loudness_per_video_frame(r)
        correlations = lagged_correlations(motion, loudness, speech_start, len(loudness) - 10,
                                           range(-10, 11))
        best_lag = max(correlations, key=correlations.get)
        chat, _ = await speak_all(client, "chat", QUESTIONS, n)
        if frames_dir is not None:
            await save_frames(server.base_url, region, frames_dir)
    finally:
        await client.close()
        server.stop()
        llm.kill()
        await llm.wait()
    return {
        "benchmark": "e2e_latency",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "utterances": n,
        "latency_ms": summary_ms(echo),
        "chat_latency_ms": summary_ms(chat),
        "chat_llm": {"tokens_per_second": LLM_TOKENS_PER_SECOND, "reply": CHAT_REPLY,
                     "first_sentence_tokens": 5,
                     "note": "fake OpenAI-compatible server on loopback, streaming one word per token"},
        "delivered_fps": delivered,
        "server_cpu_cores": server_cores,
        "av_offset_ms": {
            "arrival_median": 1000 * statistics.median(arrival_offsets) if arrival_offsets else None,
            "arrival_note": "first mouth movement minus first speech audio, arrival at the client",
            "media_lag": 40 * best_lag,
            "media_correlation": correlations[best_lag],
            "media_note": "audio delay that best aligns mouth motion with loudness, by frame index",
        },
        "goal": {"latency_p50_ms": 300},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--frames", type=Path, help="save mouth_closed.png / mouth_open.png here")
    args = parser.parse_args()
    result = asyncio.run(run(args.utterances, args.frames))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e_latency.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
