"""Reliability under hostile clients and faults, against a server process (embedded Triton).

Four measurements, one server each, in this order:
- fuzz: COUNT hostile requests (tests/support/hostile_requests.py: every route of the app, every kind
  of input that once got a 500) at CONCURRENCY while a legitimate session streams and talks;
  counts answers by status (goal: none >= 500), the slowest answer, and the session's delivered
  fps during the storm;
- half-open offers: --max-session offers whose peers go away before connecting (one of them
  without `a=end-of-candidates`, as Chromium sends a gathered offer); seconds until every slot is
  free again and a new client connects (goal <= 15 s, the default --setup-timeout);
- churn: 200 sessions opened, spoken in and closed one after another (bench/churn.py); RSS, fds,
  threads and tasks before and after (goal: RSS within 5 % of the start);
- Triton kill: SIGKILL of the embedded tritonserver under a live session; seconds until speech is
  heard again (bench/triton_recovery.py; goal <= 15 s).
Writes bench/results/reliability.json and prints one JSON line per measurement.

    python bench/reliability.py [--fuzz 20000] [--churn 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection
from churn import churn  # bench/ is the script's directory
from server_process import REPO, start_server
from triton_recovery import triton_kill_recovery, tritonserver_pid

from orchestrator.app import create_app
from orchestrator.client import AvatarClient, fps
from orchestrator.settings import DEFAULT_MAX_SESSIONS, Settings

sys.path.insert(0, str(REPO / "tests" / "support"))
from hostile_requests import HostileRequest, hostile_requests, route_table, send  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FUZZ_SEED = 2026
CONCURRENCY = 16
SLOT_WAIT_S = 120.0
TALK = ("Thank you for waiting. Our store opens at nine and closes at six, and today everything "
        "is on sale.")


async def _keep_talking(client: AvatarClient, stop: asyncio.Event) -> None:
    while not stop.is_set():
        status, answer = await client.post("/is_speaking")
        if status == 200 and not answer["data"]:
            await client.post("/human", type="echo", text=TALK)
        await asyncio.sleep(0.2)


async def fuzz(count: int) -> dict:
    """`count` hostile requests while a legitimate session talks."""
    routes = route_table(create_app(Settings()))
    # The storm and the legitimate session share 127.0.0.1: without this the miss limit would
    # answer most of the storm 429 at the session lookup, and the fuzz would not get past it.
    server = await start_server("--max-session-misses", str(count))
    client = AvatarClient(server.base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(10, timeout=30)
        requests = list(hostile_requests(routes, FUZZ_SEED, count, (client.sessionid,)))
        stop = asyncio.Event()
        talker = asyncio.create_task(_keep_talking(client, stop))
        gate = asyncio.Semaphore(CONCURRENCY)
        cpu0 = server.cpu_seconds()
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            async def one(request: HostileRequest):
                async with gate:
                    return request, *(await send(http, server.base_url, request))
            results = await asyncio.gather(*(one(r) for r in requests))
        stopped = time.monotonic()
        cpu = server.cpu_seconds() - cpu0
        stop.set()
        await talker
        statuses = Counter(str(status) for _, status, _ in results)
        slowest = max(results, key=lambda r: r[2])
        server_errors = [f"{s} {r.kind} {r.method} {r.path[:80]}" for r, s, _ in results
                         if isinstance(s, int) and s >= 500]
        since = time.monotonic()
        status, _ = await client.post("/human", type="echo", interrupt=True,
                                      text="Still here after the storm.")
        heard = await client.wait_for_speech(since, timeout=30) if status == 200 else None
        return {
            "requests": count, "seconds": round(stopped - started, 1),
            "requests_per_s": round(count / (stopped - started), 1),
            "server_cores": round(cpu / (stopped - started), 2),
            "statuses": dict(sorted(statuses.items())), "responses_5xx": len(server_errors),
            "examples_5xx": server_errors[:10],
            "slowest_s": round(slowest[2], 3),
            "slowest": f"{slowest[0].kind} {slowest[0].method} {slowest[0].path[:80]}",
            "routes": len(routes),
            "session_fps_during": round(fps(client.received.video_times, started, stopped), 2),
            "speaks_after": heard is not None,
        }
    finally:
        await client.close()
        server.stop()


async def _abandoned_offer(base_url: str, strip_end_of_candidates: bool) -> int:
    """POST a real, fully gathered offer, then leave without applying the answer."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    if strip_end_of_candidates:
        sdp = "".join(line for line in sdp.splitlines(keepends=True)
                      if not line.startswith("a=end-of-candidates"))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}/offer", json={"type": "offer", "sdp": sdp}) as resp:
                return resp.status
    finally:
        await pc.close()


async def _sessions(http: aiohttp.ClientSession, base_url: str) -> int:
    async with http.get(f"{base_url}/healthz") as resp:
        return int((await resp.json())["data"]["sessions"])


async def half_open_offers() -> dict:
    """Fill every slot with offers that never connect; seconds from each offer's answer until
    its slot is free (sessions are released in the order they were opened)."""
    server = await start_server()
    try:
        async with aiohttp.ClientSession() as http:
            answered, statuses = [], []
            for i in range(DEFAULT_MAX_SESSIONS):
                statuses.append(await _abandoned_offer(server.base_url, i % 2 == 1))
                answered.append(time.monotonic())
            held = await _sessions(http, server.base_url)
            refused = await _abandoned_offer(server.base_url, False)
            released: list[float] = []
            while (open_now := await _sessions(http, server.base_url)) > 0:
                if time.monotonic() - answered[0] > SLOT_WAIT_S:
                    raise TimeoutError(f"half-open sessions still held after {SLOT_WAIT_S} s")
                released += [time.monotonic()] * (held - len(released) - open_now)
                await asyncio.sleep(0.05)
            released += [time.monotonic()] * (held - len(released))
        client = AvatarClient(server.base_url, keep_video=False)
        try:
            await client.connect()
            await client.wait_for_video(5, timeout=30)
        finally:
            await client.close()
        held_s = [round(r - a, 2) for a, r in zip(answered, released)]
        return {"offers": len(statuses), "accepted": statuses.count(200), "sessions_held": held,
                "next_offer_while_full": refused, "slot_held_s": held_s,
                "slot_free_max_s": max(held_s), "new_client_connects": True}
    finally:
        server.stop()


async def session_churn(sessions: int) -> dict:
    server = await start_server()
    try:
        return await churn(server, sessions)
    finally:
        server.stop()


async def triton_kill() -> dict:
    server = await start_server()
    try:
        return await triton_kill_recovery(server.base_url, tritonserver_pid(server.process.pid))
    finally:
        server.stop()


async def main(fuzz_count: int, churn_sessions: int) -> None:
    report: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    for name, run in (("fuzz", lambda: fuzz(fuzz_count)),
                      ("half_open_offers", half_open_offers),
                      ("churn", lambda: session_churn(churn_sessions)),
                      ("triton_kill", triton_kill)):
        report[name] = await run()
        print(json.dumps({name: report[name]}), flush=True)
    report["goals"] = {
        "no_5xx": report["fuzz"]["responses_5xx"] == 0,
        "half_open_slot_free_le_15s": report["half_open_offers"]["slot_free_max_s"] <= 15.0,
        "churn_rss_within_5pct": abs(report["churn"]["rss_growth_pct"]) <= 5.0,
        "speech_after_triton_kill_le_15s": report["triton_kill"]["speech_s"] <= 15.0,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["goals"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz", type=int, default=20000, help="hostile requests (default 20000)")
    parser.add_argument("--churn", type=int, default=200, help="sessions opened and closed")
    args = parser.parse_args()
    asyncio.run(main(args.fuzz, args.churn))
