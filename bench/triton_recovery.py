"""Triton killed → seconds until the avatar speaks again (goal ≤ 15 s).

Starts `python -m orchestrator` (embedded Triton) as its own process, connects a real aiortc
client, kills the tritonserver with SIGKILL and then asks to speak every POLL_S until the server
accepts (503 while Triton is not ready) and speech audio arrives at the client. Reports, from
the kill: when /healthz turned 503, when it was 200 again, when /human was accepted and when
speech was heard. With --external the server uses --triton-url of a tritonserver this script
runs (and restarts on the same ports after the kill): what counts then is the time from that
server being ready again to speech. Writes bench/results/triton_recovery[_external].json.

`triton_kill_recovery(base_url, triton_pid)` is the measurement alone, for other benchmarks
(bench/reliability.py) that run their own server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

import aiohttp
from server_process import process_tree, start_server  # bench/ is the script's directory

from orchestrator.client import AvatarClient
from orchestrator.settings import Settings
from orchestrator.triton.server import EmbeddedTriton

RESULTS = Path(__file__).parent / "results"
POLL_S = 0.1
SPEECH_RMS = 0.01
GOAL_S = 15.0


def tritonserver_pid(server_pid: int) -> int:
    """The tritonserver among the orchestrator's descendants."""
    for pid in process_tree(server_pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver":
                return pid
        except (FileNotFoundError, ProcessLookupError):
            continue
    raise LookupError(f"no tritonserver under pid {server_pid}")


async def _health(http: aiohttp.ClientSession, base_url: str) -> int:
    try:
        async with http.get(f"{base_url}/healthz") as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


async def triton_kill_recovery(base_url: str, triton_pid: int, timeout_s: float = 120.0,
                               restart=None) -> dict:
    """SIGKILL `triton_pid` under a live session; seconds from the kill to each recovery step.

    {"unready_s", "ready_s", "accepted_s", "speech_s", "refused" (503 answers), "failed"
    (accepted but never heard: before the server noticed, or after it said ready)};
    TimeoutError after `timeout_s`. `restart` (a coroutine function), when given, is awaited
    right after the kill (an external server started again by the caller); "restarted_s" is
    when it returned.
    """
    client = AvatarClient(base_url, keep_video=False)
    timeout = aiohttp.ClientTimeout(total=5)
    try:
        await client.connect()
        await client.wait_for_video(10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            killed = time.monotonic()
            os.kill(triton_pid, signal.SIGKILL)
            deadline = killed + timeout_s
            result: dict = {"refused": 0, "failed": 0}
            health = asyncio.create_task(_watch_health(http, base_url, killed, result, deadline))
            if restart is not None:
                await restart()
                result["restarted_s"] = round(time.monotonic() - killed, 3)
            try:
                while True:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no speech {timeout_s} s after the kill: {result}")
                    sent = time.monotonic()
                    status, answer = await client.post("/human", type="echo", text="Back again.")
                    if status == 503:
                        result["refused"] += 1
                        await asyncio.sleep(POLL_S)
                        continue
                    if status != 200:
                        raise RuntimeError(f"/human answered {status}: {answer}")
                    if result["refused"] == 0:  # accepted before the server noticed the kill
                        result["failed"] += 1
                        await asyncio.sleep(POLL_S)
                        continue
                    try:
                        heard = await client.wait_for_speech(sent, SPEECH_RMS, timeout=10.0)
                    except TimeoutError:
                        result["failed"] += 1  # accepted, then not spoken
                        continue
                    result["accepted_s"] = round(sent - killed, 3)
                    result["speech_s"] = round(heard - killed, 3)
                    break
            finally:
                await health
            return result
    finally:
        await client.close()


async def _watch_health(http: aiohttp.ClientSession, base_url: str, killed: float,
                        result: dict, deadline: float) -> None:
    """Fills "unready_s" (first /healthz 503) and "ready_s" (first 200 after it)."""
    while time.monotonic() < deadline and "speech_s" not in result:
        status = await _health(http, base_url)
        now = round(time.monotonic() - killed, 3)
        if status == 503 and "unready_s" not in result:
            result["unready_s"] = now
        elif status == 200 and "unready_s" in result and "ready_s" not in result:
            result["ready_s"] = now
            return
        await asyncio.sleep(POLL_S / 2)


async def main(rounds: int, external: bool) -> None:
    triton = None
    if external:
        settings = Settings()
        triton = EmbeddedTriton(settings.model_repository,
                                [settings.tts_model, settings.lipsync_model])
        await triton.start()
    try:
        server = await start_server(*(["--triton-url", triton.url] if triton else []))
        try:
            runs = []
            for _ in range(rounds):
                if triton is not None:
                    runs.append(await triton_kill_recovery(server.base_url, triton.pid,
                                                           restart=triton.restart))
                    runs[-1]["after_ready_s"] = round(
                        runs[-1]["speech_s"] - runs[-1]["restarted_s"], 3)
                else:
                    pid = tritonserver_pid(server.process.pid)
                    runs.append(await triton_kill_recovery(server.base_url, pid))
                print(json.dumps(runs[-1]), flush=True)
        finally:
            server.stop()
    finally:
        if triton is not None:
            await triton.stop()
    worst = max(r["speech_s"] for r in runs)
    report = {"external": external, "runs": runs, "worst_speech_s": worst, "goal_s": GOAL_S,
              "meets_goal": worst <= GOAL_S,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    if external:
        report["worst_after_ready_s"] = max(r["after_ready_s"] for r in runs)
    RESULTS.mkdir(exist_ok=True)
    name = "triton_recovery_external.json" if external else "triton_recovery.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="kills in a row (default 3)")
    parser.add_argument("--external", action="store_true",
                        help="kill and restart a tritonserver given to the server by --triton-url")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.rounds, args.external))
    except KeyboardInterrupt:
        sys.exit(130)
