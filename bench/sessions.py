"""How many talking sessions one machine holds: N concurrent sessions, each speaking continuously.

For N = 1, 2, ... starts N aiortc clients against an in-process server (embedded Triton), keeps
every session talking, and measures delivered fps per session, CPU seconds per second (server and
Triton processes together, per session), and the batch sizes Triton's dynamic batcher formed for
the lip-sync model (from its statistics). Stops at the first N below the fps goal.
Writes bench/results/sessions.json and prints a summary line for bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import tritonclient.grpc.aio as grpcclient
from aiohttp import web

from orchestrator.app import create_app
from orchestrator.client import AvatarClient, fps
from orchestrator.services import start_services
from orchestrator.settings import Settings

RESULTS = Path(__file__).parent / "results"
FPS_GOAL = 24.5
TEXT = ("Welcome to our store. Today everything is on sale, and our team is happy to help you "
        "find what you need. Ask me anything about our products.")


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU of these processes and their children that were waited for."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(v) for v in fields[11:13]) / tick
    return total


def triton_pids(server_pid: int) -> list[int]:
    """tritonserver and its python-backend stub processes."""
    pids = [server_pid]
    for pid in list(pids):
        try:
            pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except FileNotFoundError:
            pass
    return pids


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


async def measure(base: str, services, n: int, seconds: float) -> dict:
    clients = [AvatarClient(base, keep_video=False) for _ in range(n)]
    stop = asyncio.Event()
    try:
        for client in clients:
            await client.connect()
        for client in clients:
            await client.wait_for_video(10)
        talkers = [asyncio.create_task(keep_talking(c, stop)) for c in clients]
        await asyncio.sleep(2.0)  # let speech start everywhere
        pids = [os.getpid()]
        if services.embedded_triton is not None:
            pids += triton_pids(services.embedded_triton.pid)
        before = await batch_histogram(services.triton_url, services.settings.lipsync_model)
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = cpu_seconds(pids), time.monotonic()
        after = await batch_histogram(services.triton_url, services.settings.lipsync_model)
        stop.set()
        await asyncio.gather(*talkers, return_exceptions=True)
        rates = [fps(c.received.video_times, t0, t1) for c in clients]
        batches = {b: after.get(b, 0) - before.get(b, 0) for b in after}
        executions = sum(batches.values())
        return {
            "sessions": n,
            "fps_per_session": rates,
            "min_fps": min(rates),
            "cpu_cores_total": (cpu1 - cpu0) / (t1 - t0),
            "cpu_cores_per_session": (cpu1 - cpu0) / (t1 - t0) / n,
            "lipsync_batches": {str(k): v for k, v in sorted(batches.items()) if v},
            "mean_batch": (sum(b * c for b, c in batches.items()) / executions) if executions else 0,
        }
    finally:
        stop.set()
        for client in clients:
            await client.close()
        await asyncio.sleep(1.0)


async def run(max_sessions: int, seconds: float) -> dict:
    settings = replace(Settings(), ice_hosts=("127.0.0.1",), max_sessions=max_sessions)
    services = await start_services(settings)
    runner = web.AppRunner(create_app(settings, services))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    rows = []
    try:
        for n in range(1, max_sessions + 1):
            row = await measure(base, services, n, seconds)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if row["min_fps"] < FPS_GOAL:
                break
    finally:
        await runner.cleanup()
        await services.close()
    held = [r["sessions"] for r in rows if r["min_fps"] >= FPS_GOAL]
    return {"benchmark": "sessions", "cpus": os.cpu_count(), "fps_goal": FPS_GOAL,
            "largest_n_at_goal": max(held) if held else 0, "rows": rows}


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
              f"{best['cpu_cores_per_session']:.2f} cores/session, mean lip-sync batch "
              f"{best['mean_batch']:.1f}")


if __name__ == "__main__":
    main()
