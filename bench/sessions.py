"""How many talking sessions one machine holds: N concurrent sessions, each speaking continuously.

Starts `python -m orchestrator` (embedded Triton) as its own process; for N = 1, 2, ... connects
N aiortc clients from this process, keeps every session talking, and measures delivered fps per
session, the server's CPU (orchestrator, tritonserver and its backend stubs together) and the
batch sizes Triton's dynamic batcher formed for the lip-sync model (from its statistics). Stops
at the first N below the fps goal.
Writes bench/results/sessions.json and prints a summary line for bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import tritonclient.grpc.aio as grpcclient
from server_process import ServerProcess, start_server  # bench/ is the script's directory

from orchestrator.client import AvatarClient, fps
from orchestrator.settings import Settings

RESULTS = Path(__file__).parent / "results"
FPS_GOAL = 24.5
TEXT = ("Welcome to our store. Today everything is on sale, and our team is happy to help you "
        "find what you need. Ask me anything about our products.")


async def batch_histogram(url: str, model: str) -> dict[int, int]:
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = await client.get_inference_statistics(model, as_json=True)
    finally:
        await client.close()
    histogram: dict[int, int] = {}
    for model_stats in stats.get("model_stats", []):
        for batch in model_stats.get("batch_stats", []):
            histogram[int(batch["batch_size"])] = int(batch["compute_infer"]["count"])
    return histogram


async def keep_talking(client: AvatarClient, stop: asyncio.Event) -> None:
    while not stop.is_set():
        status, answer = await client.post("/is_speaking")
        if status == 200 and not answer["data"]:
            await client.post("/human", type="echo", text=TEXT)
        await asyncio.sleep(0.2)


async def measure(server: ServerProcess, model: str, n: int, seconds: float) -> dict:
    clients = [AvatarClient(server.base_url, keep_video=False) for _ in range(n)]
    stop = asyncio.Event()
    try:
        for client in clients:
            await client.connect()
        for client in clients:
            await client.wait_for_video(10)
        talkers = [asyncio.create_task(keep_talking(c, stop)) for c in clients]
        await asyncio.sleep(2.0)  # let speech start everywhere
        before = await batch_histogram(server.triton_url, model)
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = server.cpu_seconds(), time.monotonic()
        after = await batch_histogram(server.triton_url, model)
        stop.set()
        await asyncio.gather(*talkers, return_exceptions=True)
        rates = [fps(c.received.video_times, t0, t1) for c in clients]
        batches = {b: after.get(b, 0) - before.get(b, 0) for b in after}
        executions = sum(batches.values())
        cores = (cpu1 - cpu0) / (t1 - t0)
        return {
            "sessions": n,
            "fps_per_session": rates,
            "min_fps": min(rates),
            "server_cpu_cores": cores,
            "server_cpu_cores_per_session": cores / n,
            "lipsync_batches": {str(k): v for k, v in sorted(batches.items()) if v},
            "mean_batch": (sum(b * c for b, c in batches.items()) / executions) if executions else 0,
        }
    finally:
        stop.set()
        for client in clients:
            await client.close()
        await asyncio.sleep(1.0)


async def run(max_sessions: int, seconds: float) -> dict:
    server = await start_server("--max-session", str(max_sessions))
    model = Settings().lipsync_model
    rows = []
    try:
        for n in range(1, max_sessions + 1):
            row = await measure(server, model, n, seconds)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if row["min_fps"] < FPS_GOAL:
                break
    finally:
        server.stop()
    held = [r["sessions"] for r in rows if r["min_fps"] >= FPS_GOAL]
    return {"benchmark": "sessions", "cpus": os.cpu_count(), "fps_goal": FPS_GOAL,
            "largest_n_at_goal": max(held) if held else 0, "rows": rows,
            "note": "clients (VP8/Opus decoding) run in the benchmark process on the same cores"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-sessions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.max_sessions, args.seconds))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sessions.json").write_text(json.dumps(result, indent=2))
    best = next((r for r in result["rows"] if r["sessions"] == result["largest_n_at_goal"]), None)
    if best:
        print(f"sessions: {best['sessions']} at >= {FPS_GOAL} fps on {result['cpus']} cores, "
              f"{best['server_cpu_cores_per_session']:.2f} server cores/session, mean lip-sync batch "
              f"{best['mean_batch']:.1f}")


if __name__ == "__main__":
    main()
