"""Server CPU per idle and per talking session, by codec, with and without shared idle streams
(issue 14), and for a checkout from before the change (`--before-repo`).

For each server version and codec: `python -m orchestrator` as its own process (embedded Triton,
no voice input); its CPU (orchestrator, tritonserver and its stubs, bench/server_process.py) over
`--seconds` with no session, then with `--idle` sessions connected (aiortc clients in this
process, offering only that codec), then with `--talking` more sessions speaking continuously.
Per idle session: (idle - none) / idle; per talking session: (with talkers - idle) / talking.
Delivered fps per session is kept beside each figure: a saturated machine delivers fewer frames
and so encodes less.
Writes bench/results/session_cpu.json and prints the table rows for bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import time
from pathlib import Path

from server_process import REPO, ServerProcess, start_server  # bench/ is the script's directory
from sessions import keep_talking

from orchestrator.client import AvatarClient, fps

RESULTS = Path(__file__).parent / "results"
SETTLE_S = 3.0  # after connecting or starting to talk, before measuring


async def cores(server: ServerProcess, seconds: float) -> tuple[float, float, float]:
    """(server cores, window start, window end) over `seconds`."""
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = server.cpu_seconds(), time.monotonic()
    return (cpu1 - cpu0) / (t1 - t0), t0, t1


def rates(clients: list[AvatarClient], t0: float, t1: float) -> list[float]:
    return [round(fps(c.received.video_times, t0, t1), 2) for c in clients]


async def measure(repo: Path, extra: tuple[str, ...], codec: str, idle: int, talking: int,
                  seconds: float) -> dict:
    server = await start_server("--max-session", str(idle + talking + 1), "--no-voice-input",
                                *extra, repo=repo)
    idlers = [AvatarClient(server.base_url, keep_video=False, video_codecs=(f"video/{codec}",))
              for _ in range(idle)]
    talkers = [AvatarClient(server.base_url, keep_video=False, video_codecs=(f"video/{codec}",))
               for _ in range(talking)]
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    try:
        await asyncio.sleep(SETTLE_S)
        none, _, _ = await cores(server, seconds)
        for client in idlers:
            await client.connect()
        for client in idlers:
            await client.wait_for_video(10)
        if idlers:
            await asyncio.sleep(SETTLE_S)
            with_idle, t0, t1 = await cores(server, seconds)
        else:
            with_idle, t0, t1 = none, 0.0, 1.0
        idle_fps = rates(idlers, t0, t1)
        for client in talkers:
            await client.connect()
        for client in talkers:
            await client.wait_for_video(10)
        tasks = [asyncio.create_task(keep_talking(c, stop)) for c in talkers]
        await asyncio.sleep(SETTLE_S)
        with_talk, t0, t1 = await cores(server, seconds)
        return {
            "codec": codec,
            "server_cores_no_session": none,
            "server_cores_idle": with_idle,
            "server_cores_idle_and_talking": with_talk,
            "cores_per_idle_session": (with_idle - none) / idle if idle else None,
            "cores_per_talking_session": (with_talk - with_idle) / talking,
            "idle_fps_alone": idle_fps,
            "idle_fps_with_talkers": rates(idlers, t0, t1),
            "talking_fps": rates(talkers, t0, t1),
        }
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in [*idlers, *talkers]:
            await client.close()
        server.stop()


def commit(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()


async def run(args: argparse.Namespace) -> dict:
    versions = []
    if args.before_repo:
        versions.append(("before (aiortc encoders, one per session)", args.before_repo, ()))
    versions += [
        ("own encoders, no sharing (--no-shared-idle)", REPO, ("--no-shared-idle",)),
        ("own encoders + shared idle streams (default)", REPO, ()),
    ]
    rows = []
    for label, repo, extra in versions:
        for codec in args.codecs:
            row = {"server": label, "commit": commit(repo), "flags": list(extra),
                   **await measure(repo, extra, codec, args.idle, args.talking, args.seconds)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"benchmark": "session_cpu", "machine": {"cpus": os.cpu_count(),
                                                    "platform": platform.platform()},
            "idle_sessions": args.idle, "talking_sessions": args.talking,
            "seconds": args.seconds, "rows": rows,
            "note": "clients (aiortc, decoding every frame) run in the benchmark process on the "
                    "same cores"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=int, default=8)
    parser.add_argument("--talking", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--codecs", nargs="+", default=["VP8", "H264"], choices=["VP8", "H264"])
    parser.add_argument("--before-repo", type=Path, default=None,
                        help="a checkout from before issue 14 (e.g. a worktree of main) to compare")
    parser.add_argument("--out", default="session_cpu.json", help="file name in bench/results/")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2))
    for r in result["rows"]:
        idle = r["cores_per_idle_session"]
        print(f"| {r['server']} | {r['codec']} | {'-' if idle is None else f'{idle:.3f}'} | "
              f"{r['cores_per_talking_session']:.3f} | {min(r['idle_fps_alone'], default=0):.1f} | "
              f"{min(r['talking_fps']):.1f} |")


if __name__ == "__main__":
    main()
