"""First frame after start: `POST /offer` → the first video frame at an aiortc client, for the
first session a freshly started server opens and for the sessions after it.

Starts `python -m orchestrator` (embedded Triton) as its own process on 127.0.0.1 and waits for
/healthz to answer ready; then, one after another, connects `--sessions` clients (each closed
before the next, so every one starts from the same state: no other viewer, no shared idle stream
running) and times each from the POST of its offer to its first decoded video frame, and to the
/offer answer. Repeats that with `--starts` fresh servers (the first session happens once per
start). Reports the first sessions' times, the later ones' p50, and how long the server took from
its start to a ready /healthz. `--repo DIR` measures another checkout (the version before a
change), `--server-args` passes flags to the server. Writes bench/results/first_frame.json
(or `--out`).

    .venv/bin/python bench/first_frame.py [--starts 3] [--sessions 6] [--repo DIR] [--out F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

from aiortc import RTCConfiguration, RTCPeerConnection
from server_process import REPO, start_server  # bench/ is the script's directory

from orchestrator.client import AvatarClient
from orchestrator.media.ice import restrict_host_candidates

RESULTS = Path(__file__).parent / "results"
FIRST_FRAME_TIMEOUT_S = 30.0
# A fresh server settles (its Triton's first requests, the executor's threads) for this long
# before the first offer, as it would between a readiness probe passing and a first user.
SETTLE_S = 1.0


async def one_session(base_url: str) -> dict[str, float]:
    """ms from posting the offer to its answer and to the first video frame."""
    client = AvatarClient(base_url, keep_video=False)
    try:
        posted = time.monotonic()
        await client.connect()
        answered = time.monotonic()
        await client.wait_for_video(1, FIRST_FRAME_TIMEOUT_S)
        return {"answer_ms": (answered - posted) * 1000,
                "first_frame_ms": (client.received.video_times[0] - posted) * 1000}
    finally:
        await client.close()


async def warm_client() -> None:
    """The client's own first-time costs (aiortc's certificate, ICE gathering, imports) paid
    before any measurement, so that the first session measures the server's."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    await pc.close()


async def one_start(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    server = await start_server(*shlex.split(args.server_args), repo=args.repo)
    try:
        ready_s = time.monotonic() - started
        await asyncio.sleep(SETTLE_S)
        sessions = [await one_session(server.base_url) for _ in range(args.sessions)]
    finally:
        server.stop()
    return {"ready_s": ready_s, "sessions": sessions}


def p50(values: list[float]) -> float:
    return statistics.median(values)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="fresh server starts (default 3)")
    parser.add_argument("--sessions", type=int, default=6,
                        help="sessions per start, one after another (default 6: the first and "
                        "five later ones)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose server runs")
    parser.add_argument("--server-args", default="", help="more server flags, one string")
    parser.add_argument("--out", type=Path, default=RESULTS / "first_frame.json")
    args = parser.parse_args()
    if args.sessions < 2:
        parser.error("--sessions must be at least 2 (the first one and a later one)")

    restrict_host_candidates(("127.0.0.1",))  # the client's ICE candidates stay on loopback
    await warm_client()
    starts = [await one_start(args) for _ in range(args.starts)]
    first = [s["sessions"][0]["first_frame_ms"] for s in starts]
    later = [x["first_frame_ms"] for s in starts for x in s["sessions"][1:]]
    result = {
        "repo": str(args.repo), "server_args": args.server_args,
        "machine": {"cpus": len(os.sched_getaffinity(0)),
                    "python": platform.python_version()},
        "starts": starts,
        "first_session_first_frame_ms": first,
        "first_session_first_frame_ms_p50": p50(first),
        "later_sessions_first_frame_ms_p50": p50(later),
        "first_session_answer_ms_p50": p50([s["sessions"][0]["answer_ms"] for s in starts]),
        "later_sessions_answer_ms_p50": p50([x["answer_ms"] for s in starts
                                             for x in s["sessions"][1:]]),
        "ready_s_p50": p50([s["ready_s"] for s in starts]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("starts", "machine")},
                     indent=2))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
