"""RTMP push: a session's ticks as H.264 + AAC in FLV to an RTMP server (a live platform's
ingest, nginx-rtmp, SRS), the way LiveTalking's `--transport rtmp` pushes to `--push_url`.

The encoding and the connection live in a worker process (outputs/rtmp_worker.py, one per
connection): PyAV connects, writes the FLV header and trailer holding the GIL and without a
timeout, so a server that hangs would otherwise freeze every session of this server. This side
only copies ticks into the worker's pipe and watches it.

Threads, never the event loop: the player's `add` puts the tick in a deque of
MAX_PIPE_QUEUED_TICKS; a feeder thread writes ticks to the worker while it is connected (the
worker queues 2 s more on its side); a supervisor thread starts workers and reads their events.
What falls behind is dropped, oldest first, and counted (`livehuman_output_dropped_ticks`); the
player never waits. While not connected nothing is sent: a new connection starts with the live
picture.

Timestamps come from the session's media clock, counted from the first tick the push sent
(`origin_tick`, given to every later worker): a new connection after an outage goes on from
where the clock is, so a player that stays connected to the RTMP server through the outage sees
time go forward (by the outage), never back to 0.

Outages: when a worker's connection fails (its `down` event, or it dies) the supervisor starts
a new one after RECONNECT_BACKOFF_S, doubling up to MAX_RECONNECT_BACKOFF_S. A worker that makes
no progress for `stall_timeout_s` (connecting, or connected and not sending: a server that
stopped reading, a network that drops everything) is killed and replaced the same way. Each
outage is logged once, and once more when the push is back; `livehuman_output_outages` counts
them, `livehuman_output_up` is 0 meanwhile. The stream key (the URL's last path part) never
appears in logs, metrics or /api/admin/sessions.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..media.clock import AUDIO_SAMPLE_RATE_HZ, AUDIO_SAMPLES_PER_TICK, VIDEO_FPS
from ..settings import redact_stream_key
from . import rtmp_worker
from .base import MAX_RECONNECT_BACKOFF_S, RECONNECT_BACKOFF_S, OutputMetrics, PushLink

log = logging.getLogger(__name__)

WORKER = Path(rtmp_worker.__file__)
VIDEO_BITRATE = 1_500_000  # bits/s
# Platforms ask for a keyframe at most every 2-4 s; a viewer joining sees a picture that soon.
KEYFRAME_INTERVAL_TICKS = 2 * VIDEO_FPS
AUDIO_RATE_HZ = 44100  # what every RTMP ingest takes
AUDIO_BITRATE = 128_000  # bits/s
WORKER_QUEUED_TICKS = 2 * VIDEO_FPS  # 2 s behind at most in the worker, oldest dropped first
MAX_PIPE_QUEUED_TICKS = 4  # here, while a write to the worker waits

STALL_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0


class RtmpPush(PushLink):
    """A sink (media/sinks.py) pushing a session to one RTMP URL, reconnecting for ever."""

    def __init__(self, url: str, width: int, height: int, metrics: OutputMetrics | None = None,
                 stall_timeout_s: float = STALL_TIMEOUT_S) -> None:
        self.label = redact_stream_key(url)
        self._config = rtmp_worker.Config(
            url=url, label=self.label, width=width, height=height, fps=VIDEO_FPS,
            audio_rate_hz=AUDIO_SAMPLE_RATE_HZ, samples_per_tick=AUDIO_SAMPLES_PER_TICK,
            video_bitrate=VIDEO_BITRATE, keyframe_interval_ticks=KEYFRAME_INTERVAL_TICKS,
            out_audio_rate_hz=AUDIO_RATE_HZ, audio_bitrate=AUDIO_BITRATE,
            max_queued_ticks=WORKER_QUEUED_TICKS)
        self.stall_timeout_s = stall_timeout_s
        self._ticks: collections.deque[tuple[int, np.ndarray, np.ndarray]] = collections.deque(
            maxlen=MAX_PIPE_QUEUED_TICKS)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._worker: subprocess.Popen | None = None
        self._alive_at = time.monotonic()  # the worker's last sign of progress
        self._kill_reason: str | None = None
        self._init_link(metrics)
        self.dropped_ticks = 0
        self._worker_dropped = 0
        self._origin_tick: int | None = None  # the first tick sent to a worker: timestamp 0
        self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                            name=f"rtmp-supervisor {self.label}")
        self._feeder = threading.Thread(target=self._feed, daemon=True,
                                        name=f"rtmp-feeder {self.label}")
        self._supervisor.start()
        self._feeder.start()

    # --- the event loop side -------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self.state == "up"

    def describe(self) -> dict:
        """For /api/admin/sessions: the URL without its stream key, and how the push goes."""
        return {"type": "rtmp", "url": self.label, "state": self.state,
                "connections": self.connections, "outages": self.outages,
                "dropped_ticks": self.dropped_ticks}

    def add(self, tick: int, image: np.ndarray, pcm: np.ndarray) -> None:
        self._check_stall()
        if self.state != "up":
            return
        if len(self._ticks) == self._ticks.maxlen:
            self._dropped(1)
        self._ticks.append((tick, image, pcm))
        self._wake.set()

    def _check_stall(self) -> None:
        worker = self._worker
        if (worker is None or self._kill_reason is not None
                or time.monotonic() - self._alive_at < self.stall_timeout_s):
            return
        self._kill_reason = (f"no progress for {self.stall_timeout_s:g} s while "
                             f"{'sending' if self.state == 'up' else 'connecting'} "
                             "(server or network stalled)")
        worker.kill()  # the supervisor sees it end, and starts the next one

    async def close(self) -> None:
        """Stop pushing: the worker flushes and closes the stream (waited for at most
        CLOSE_TIMEOUT_S: a stalled network cannot hold the shutdown)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._supervisor.join, CLOSE_TIMEOUT_S)
        if self._supervisor.is_alive():
            log.warning("rtmp push url=%s did not finish within %g s; killed", self.label,
                        CLOSE_TIMEOUT_S)
            worker = self._worker
            if worker is not None:
                worker.kill()
            await loop.run_in_executor(None, self._supervisor.join, CLOSE_TIMEOUT_S)
        await loop.run_in_executor(None, self._feeder.join, CLOSE_TIMEOUT_S)
        self.state = "down"
        if self._metrics is not None:
            self._metrics.up.set(0)

    # --- the supervisor thread: one worker after the other -----------------------------------
    def _supervise(self) -> None:
        while not self._stopping.is_set():
            worker = self._start_worker()
            why = self._follow(worker)
            worker.wait()
            with self._lock:
                self._worker = None
            if self._stopping.is_set():
                return
            self._lost(why or f"the worker ended (exit status {worker.returncode})")
            if self._stopping.wait(self._next_backoff_s()):
                return

    def _start_worker(self) -> subprocess.Popen:
        # -I: the worker imports nothing from the working directory or the environment.
        # Its own session: the terminal's Ctrl-C stops the server, which stops the worker.
        worker = subprocess.Popen([sys.executable, "-I", str(WORKER)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, start_new_session=True)
        # Every connection stamps the session's clock from the push's first tick sent; the
        # first worker, before it is known, counts from the first one it writes (that one).
        config = replace(self._config, origin_tick=self._origin_tick)
        worker.stdin.write(json.dumps(asdict(config)).encode() + b"\n")
        worker.stdin.flush()
        with self._lock:
            self._kill_reason = None
            self._alive_at = time.monotonic()
            self._worker_dropped = 0
            self._worker = worker
        return worker

    def _follow(self, worker: subprocess.Popen) -> str | None:
        """The worker's events until it ends; why it ended (None: it did not say)."""
        why = None
        for line in worker.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self._alive_at = time.monotonic()
            if event.get("event") == "up":
                self._connected()
            elif event.get("event") == "sent":
                dropped = int(event.get("dropped", 0))
                self._dropped(dropped - self._worker_dropped)
                self._worker_dropped = dropped
            elif event.get("event") == "down":
                why = str(event.get("error", ""))
        return self._kill_reason or why

    def _connected(self) -> None:
        with self._lock:
            down_s = self._link_up()
        if down_s is not None:
            log.info("rtmp push back url=%s after %.1f s", self.label, down_s)
        else:
            log.info("rtmp push connected url=%s", self.label)

    def _lost(self, why: str) -> None:
        """The connection (or the attempt) failed: log and count once per outage."""
        with self._lock:
            self._ticks.clear()
            if not self._link_down():
                log.debug("rtmp push url=%s still down: %s", self.label, why[:300])
                return
        log.warning("rtmp push url=%s lost: %s; reconnecting (backoff %g-%g s)", self.label,
                    why[:300], RECONNECT_BACKOFF_S, MAX_RECONNECT_BACKOFF_S)

    def _dropped(self, ticks: int) -> None:
        if ticks > 0:
            self.dropped_ticks += ticks
            if self._metrics is not None:
                self._metrics.dropped_ticks.inc(ticks)

    # --- the feeder thread: ticks into the worker's pipe --------------------------------------
    def _feed(self) -> None:
        while not self._stopping.is_set():
            try:
                tick, image, pcm = self._ticks.popleft()
            except IndexError:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            worker = self._worker
            if worker is None or self.state != "up":
                continue
            if self._origin_tick is None:
                self._origin_tick = tick
            try:
                worker.stdin.write(rtmp_worker.TICK_HEADER.pack(tick) + image.tobytes()
                                   + pcm.tobytes())
                worker.stdin.flush()
            except (OSError, ValueError):  # the worker ended: the supervisor starts another
                pass
        worker = self._worker
        if worker is not None:  # end of input: the worker flushes and closes the stream
            try:
                worker.stdin.close()
            except (OSError, ValueError):
                pass
