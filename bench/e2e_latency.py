"""End-to-end latency of one session: POST /human (echo) → first speech audio at a WebRTC client.

Starts the embedded Triton and the server in-process on 127.0.0.1, connects a real aiortc client,
sends N utterances one after another, and reports p50/p95 latency, delivered fps and the
audio/video offset (speech onset in the audio vs mouth motion onset in the video, as received).
Writes bench/results/e2e_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from aiohttp import web

from orchestrator.app import create_app
from orchestrator.client import AvatarClient, fps, mean_window, mouth_motion, mouth_window
from orchestrator.services import start_services
from orchestrator.settings import Settings

RESULTS = Path(__file__).parent / "results"
SPEECH_RMS = 0.01
UTTERANCES = [
    "Hello there.", "Welcome to livehuman.", "How can I help you today?",
    "The weather is nice.", "Our store opens at nine.", "Thank you for waiting.",
    "Let me check that for you.", "Your order has shipped.", "Please hold on a moment.",
    "That is a great question.", "We accept all major cards.", "Goodbye and take care.",
]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def onset_after(times: list[float], values: list[float], since: float, threshold: float) -> float | None:
    for t, v in zip(times, values):
        if t >= since and v > threshold:
            return t
    return None


async def run(n: int) -> dict:
    settings = replace(Settings(), ice_hosts=("127.0.0.1",))
    services = await start_services(settings)
    runner = web.AppRunner(create_app(settings, services))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    client = AvatarClient(base)
    window = mouth_window(services.avatars.load("default"))
    latencies, offsets = [], []
    try:
        await client.connect()
        await client.wait_for_video(25)
        r = client.received
        reference = mean_window(r.video[-10:], window)
        t_start = time.monotonic()
        for i in range(n):
            text = UTTERANCES[i % len(UTTERANCES)]
            sent = time.monotonic()
            await client.post("/human", type="echo", text=text)
            first_audio = await client.wait_for_speech(sent, SPEECH_RMS)
            latencies.append(first_audio - sent)
            while (await client.post("/is_speaking"))[1]["data"]:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            motion = mouth_motion(r.video, window, reference).tolist()
            first_motion = onset_after(r.video_times, motion, sent, 4.0)
            if first_motion is not None:
                offsets.append(first_motion - first_audio)
        t_stop = time.monotonic()
        delivered = fps(r.video_times, t_start, t_stop)
    finally:
        await client.close()
        await runner.cleanup()
        await services.close()
    return {
        "benchmark": "e2e_latency",
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "utterances": n,
        "latency_ms": {"p50": 1000 * percentile(latencies, 50), "p95": 1000 * percentile(latencies, 95),
                       "min": 1000 * min(latencies), "max": 1000 * max(latencies)},
        "delivered_fps": delivered,
        "av_offset_ms": {"median": 1000 * statistics.median(offsets) if offsets else None,
                         "note": "video mouth-motion onset minus audio speech onset, at the client"},
        "goal": {"latency_p50_ms": 300},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--utterances", type=int, default=20)
    args = parser.parse_args()
    result = asyncio.run(run(args.utterances))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e_latency.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
