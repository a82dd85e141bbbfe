"""Session churn: open, speak in and close N sessions against a server process, and compare its
RSS, open file descriptors, threads and asyncio tasks before and after.

A closed session must leave nothing behind (goal: RSS after 200 sessions within 5 % of the
start). `churn()` is reusable (bench/reliability.py calls it); as a script it starts its own
server:

    python bench/churn.py --sessions 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
from server_process import ServerProcess, start_server  # bench/ is the script's directory

from orchestrator.client import AvatarClient

# The first sessions load codecs, librosa kernels and gRPC channels once: not a leak.
WARM_UP_SESSIONS = 5
# Closed sessions finish closing, and freed memory goes back, before the last reading.
SETTLE_S = 3.0
SESSION_WAIT_S = 30.0
SAY = "Hello, and goodbye."


def process_status(pid: int) -> dict[str, int]:
    """RSS (bytes), threads and open file descriptors of one process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss_bytes": int(fields["VmRSS"].split()[0]) * 1024,
            "threads": int(fields["Threads"]),
            "fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


async def scrape(http: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    async with http.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line and not line.startswith("#") and "{" not in line}


async def snapshot(server: ServerProcess, http: aiohttp.ClientSession) -> dict[str, float]:
    metrics = await scrape(http, server.base_url)
    return {**process_status(server.process.pid),
            "tasks": metrics.get("livehuman_tasks", -1),
            "speech_tasks": metrics.get("livehuman_speech_tasks", -1),
            "sessions": metrics.get("livehuman_sessions", -1)}


async def one_session(base_url: str, http: aiohttp.ClientSession, say: str | None) -> None:
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(3, timeout=SESSION_WAIT_S)
        if say:
            await client.post("/human", type="echo", text=say)
            await client.wait_for_speech(time.monotonic() - 1.0, timeout=SESSION_WAIT_S)
    finally:
        await client.close()
    deadline = time.monotonic() + SESSION_WAIT_S
    while (await scrape(http, base_url)).get("livehuman_sessions", 0) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("a closed session was not released")
        await asyncio.sleep(0.05)


async def churn(server: ServerProcess, sessions: int, say: str | None = SAY) -> dict:
    """Open/close `sessions` sessions one after another (each connects, gets video, speaks
    `say` until its audio arrives, closes); the server's figures before and after."""
    async with aiohttp.ClientSession() as http:
        for _ in range(WARM_UP_SESSIONS):
            await one_session(server.base_url, http, say)
        await asyncio.sleep(SETTLE_S)
        before = await snapshot(server, http)
        started = time.monotonic()
        trace = []  # RSS along the way: a leak climbs steadily, warm-up levels off
        for i in range(sessions):
            await one_session(server.base_url, http, say)
            if (i + 1) % max(1, sessions // 10) == 0:
                trace.append((i + 1, process_status(server.process.pid)["rss_bytes"]))
        seconds = time.monotonic() - started
        await asyncio.sleep(SETTLE_S)
        after = await snapshot(server, http)
    return {"sessions": sessions, "seconds": round(seconds, 1), "before": before, "after": after,
            "rss_growth_pct": round(100.0 * (after["rss_bytes"] / before["rss_bytes"] - 1), 2),
            "rss_trace": trace}


async def main(sessions: int) -> None:
    server = await start_server()
    try:
        print(json.dumps(await churn(server, sessions)), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    asyncio.run(main(parser.parse_args().sessions))
