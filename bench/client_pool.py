"""Client worker processes, each holding many light aiortc sessions against one server.

The density benchmark must not measure its own clients: they run in their own processes (not
the server's process tree, not its event loop), and decode nothing (`AvatarClient(decode=False)`
notes each complete encoded frame as it leaves the jitter buffer). Their cost is still real CPU
on the same machine, so each worker reports what it used and how late its event loop ran: a
saturated worker delivers frames late, and the fps it reports is then its own limit.

Protocol over one `multiprocessing` pipe per worker, one answer per request:
    {"op": "open", "talking": [bool, ...]}   -> {"opened": int, "failed": [str, ...]}
    {"op": "window_start"}                   -> {}
    {"op": "window_end", "t0": s, "t1": s}   -> {"cpu_cores", "loop_lag_p95_ms",
                                                 "loop_lag_max_ms", "sessions": [dict, ...]}
    {"op": "close"}                          -> {} (the worker exits)
Times are `time.monotonic()` seconds, one clock for every process on the machine (Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from orchestrator.client import AvatarClient
from orchestrator.media.clock import VIDEO_PTS_PER_TICK
from orchestrator.media.ice import restrict_host_candidates

LOOPBACK = "127.0.0.1"
# ~10 s of speech: long enough that posting the next one is rare, short enough to start soon.
TEXT = ("Welcome to our store. Today everything is on sale, and our team is happy to help you "
        "find what you need. Ask me anything about our products.")
# A talking session keeps this many utterances queued: the next is there when one ends.
QUEUED_UTTERANCES = 2
CONNECTS_AT_ONCE = 4  # per worker: offers in flight together
FIRST_FRAME_TIMEOUT_S = 30.0
LOOP_PROBE_S = 0.010  # the event-loop lag probe's sleep
FPS_BIN_S = 1.0


@dataclass
class HeldSession:
    client: AvatarClient
    talking: bool
    speaking: list[list[float]] = field(default_factory=list)  # [start, end] of each utterance
    utterances_posted: int = 0
    posts_refused: int = 0
    task: asyncio.Task | None = None


def frame_rate_bins(times: list[float], t0: float, t1: float) -> list[float]:
    """Frames per second in each whole FPS_BIN_S bin of [t0, t1)."""
    bins = int((t1 - t0) // FPS_BIN_S)
    arrivals = np.asarray(times)
    counts = np.histogram(arrivals, bins=bins, range=(t0, t0 + bins * FPS_BIN_S))[0]
    return (counts / FPS_BIN_S).tolist()


def skipped_ticks(rtp: list[int], times: list[float], t0: float, t1: float) -> int:
    """Frames missing from the media timeline between frames that arrived in [t0, t1): the
    server skipped ticks it was late for, or the network lost whole frames."""
    stamps = np.asarray([s for s, t in zip(rtp, times) if t0 <= t < t1], np.int64)
    steps = np.diff(stamps) // VIDEO_PTS_PER_TICK
    return int(np.clip(steps - 1, 0, None).sum())


def speaking_fraction(intervals: list[list[float]], t0: float, t1: float) -> float:
    now = time.monotonic()
    spoken = sum(max(0.0, min(end or now, t1) - max(start, t0)) for start, end in intervals)
    return spoken / (t1 - t0)


def session_stats(held: HeldSession, t0: float, t1: float) -> dict:
    r = held.client.received
    rates = frame_rate_bins(r.video_times, t0, t1)
    stats = {
        "talking": held.talking,
        "median_fps": float(np.median(rates)) if rates else 0.0,
        "min_bin_fps": min(rates, default=0.0),
        "mean_fps": sum(1 for t in r.video_times if t0 <= t < t1) / (t1 - t0),
        "skipped_ticks": skipped_ticks(r.video_rtp, r.video_times, t0, t1),
        "audio_packets_per_s": sum(1 for t in r.audio_times if t0 <= t < t1) / (t1 - t0),
    }
    if held.talking:
        stats |= {"speaking_fraction": speaking_fraction(held.speaking, t0, t1),
                  "utterances_posted": held.utterances_posted,
                  "posts_refused": held.posts_refused}
    return stats


async def keep_talking(held: HeldSession) -> None:
    """Speak without pause: QUEUED_UTTERANCES queued, one more posted as each ends (SSE)."""
    client = held.client

    async def post() -> None:
        status, _ = await client.post("/human", type="echo", text=TEXT)
        held.utterances_posted += status == 200
        held.posts_refused += status != 200

    no_limit = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with client.http.get(f"{client.base_url}/sse", params={"sessionid": client.sessionid},
                               timeout=no_limit) as events:
        await events.content.readline()  # ": connected": subscribed before the first start
        for _ in range(QUEUED_UTTERANCES):
            await post()
        async for line in events.content:
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:]).get("event")
            if event == "start":
                held.speaking.append([time.monotonic(), None])
            elif event in ("end", "error"):
                if held.speaking and held.speaking[-1][1] is None:
                    held.speaking[-1][1] = time.monotonic()
                await post()


class LoopLag:
    """How late the event loop wakes a LOOP_PROBE_S sleep: ms over the nominal, with times."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LOOP_PROBE_S)
            after = time.monotonic()
            self.samples.append((after, (after - before - LOOP_PROBE_S) * 1000))
            if len(self.samples) > 100_000:
                del self.samples[:50_000]

    def between(self, t0: float, t1: float) -> list[float]:
        return [lag for t, lag in self.samples if t0 <= t < t1]


class Worker:
    def __init__(self, conn, base_url: str) -> None:
        self.conn = conn
        self.base_url = base_url
        self.sessions: list[HeldSession] = []
        self.lag = LoopLag()
        self.cpu0 = self.wall0 = 0.0

    async def open_one(self, talking: bool, gate: asyncio.Semaphore) -> HeldSession:
        client = AvatarClient(self.base_url, keep_video=False, decode=False)
        held = HeldSession(client, talking)
        self.sessions.append(held)  # closed at the end even when it failed to connect
        async with gate:
            await client.connect()
        await client.wait_for_video(1, FIRST_FRAME_TIMEOUT_S)
        if talking:
            held.task = asyncio.create_task(keep_talking(held))
        return held

    async def open(self, talking: list[bool]) -> dict:
        gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
        results = await asyncio.gather(*(self.open_one(t, gate) for t in talking),
                                       return_exceptions=True)
        failed = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
        return {"opened": len(talking) - len(failed), "failed": failed}

    def window_end(self, t0: float, t1: float) -> dict:
        cores = (time.process_time() - self.cpu0) / (time.monotonic() - self.wall0)
        lags = self.lag.between(t0, t1)
        live = [h for h in self.sessions if h.client.received.video_times]
        return {
            "cpu_cores": cores,
            "loop_lag_p95_ms": float(np.percentile(lags, 95)) if lags else 0.0,
            "loop_lag_max_ms": max(lags, default=0.0),
            "sessions": [session_stats(h, t0, t1) for h in live],
            "talker_errors": [repr(h.task.exception()) for h in live
                              if h.task and h.task.done() and not h.task.cancelled()
                              and h.task.exception()],
        }

    async def close(self) -> None:
        for held in self.sessions:
            if held.task:
                held.task.cancel()
                with contextlib.suppress(BaseException):
                    await held.task
        await asyncio.gather(*(h.client.close() for h in self.sessions), return_exceptions=True)

    async def serve(self) -> None:
        probe = asyncio.create_task(self.lag.run())
        loop = asyncio.get_running_loop()
        try:
            while True:
                request = await loop.run_in_executor(None, self.conn.recv)
                op = request["op"]
                if op == "open":
                    answer = await self.open(request["talking"])
                elif op == "window_start":
                    self.cpu0, self.wall0 = time.process_time(), time.monotonic()
                    answer = {}
                elif op == "window_end":
                    answer = self.window_end(request["t0"], request["t1"])
                elif op == "close":
                    await self.close()
                    self.conn.send({})
                    return
                else:
                    answer = {"error": f"unknown op {op!r}"}
                self.conn.send(answer)
        finally:
            probe.cancel()


def worker_main(conn, base_url: str) -> None:
    restrict_host_candidates((LOOPBACK,))  # the clients' ICE candidates stay on loopback too
    asyncio.run(Worker(conn, base_url).serve())


class ClientPool:
    """`workers` client processes (spawned: no inherited event loop or server state)."""

    def __init__(self, workers: int, base_url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns, self.processes = [], []
        for _ in range(workers):
            ours, theirs = context.Pipe()
            process = context.Process(target=worker_main, args=(theirs, base_url), daemon=True)
            process.start()
            self.conns.append(ours)
            self.processes.append(process)
        self.held = [0] * workers  # sessions per worker, to place new ones on the emptiest

    async def _ask(self, conn, request: dict) -> dict:
        conn.send(request)
        return await asyncio.to_thread(conn.recv)

    async def ask_all(self, request: dict) -> list[dict]:
        return await asyncio.gather(*(self._ask(c, request) for c in self.conns))

    async def open(self, talking: list[bool]) -> dict:
        """Open one session per entry, spread so every worker holds as many sessions and as
        many talkers as the others (within one)."""
        plan: list[list[bool]] = [[] for _ in self.conns]
        for role in sorted(talking, reverse=True):  # talkers first: they spread evenly too
            i = min(range(len(plan)), key=lambda w: (self.held[w] + len(plan[w]), w))
            plan[i].append(role)
        answers = await asyncio.gather(*(self._ask(c, {"op": "open", "talking": roles})
                                         for c, roles in zip(self.conns, plan) if roles))
        for i, roles in enumerate(plan):
            self.held[i] += len(roles)
        return {"opened": sum(a["opened"] for a in answers),
                "failed": [f for a in answers for f in a["failed"]]}

    async def close(self) -> None:
        with contextlib.suppress(EOFError, BrokenPipeError, OSError):
            await asyncio.wait_for(self.ask_all({"op": "close"}), 60)
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
