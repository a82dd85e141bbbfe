"""`GET /metrics` in the Prometheus text format: sessions, session events (utterances by kind,
interruptions, errors, recordings), Triton readiness, speech frames sent to the lip-sync model or
skipped as silent, asyncio tasks and queued speech (so a leak or a runaway queue shows), and the
shared idle video streams, on a registry of this app's own; and where the time goes: the
event loop's lag (a probe task: how late a fixed sleep wakes) and each media stage's duration
(media/stage_timing.py), as histograms."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .lipsync.models import FRAMES_SKIPPED_SILENT, FRAMES_TO_MODEL
from .media import stage_timing
from .outputs.base import OutputMetrics
from .speech.pipeline import SPEECH_TASK_PREFIX

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LIPSYNC_FRAME_PATHS = (FRAMES_TO_MODEL, FRAMES_SKIPPED_SILENT)
# The event-loop probe sleeps this long, again and again, and records how late it woke: every
# stall longer than this shows (a 10 ms wake-up costs a few microseconds: ~0.1 % of a core).
LOOP_PROBE_INTERVAL_S = 0.010
# Fine around issue 20's goal (the longest stall <= 20 ms) and the 40 ms tick.
LOOP_LAG_BUCKETS_S = (0.001, 0.002, 0.005, 0.010, 0.015, 0.020, 0.030, 0.040, 0.060, 0.080,
                      0.120, 0.160, 0.250, 0.500, 1.0, 2.5)
# From an Opus packet (~0.3 ms) to a sentence's TTS (seconds).
STAGE_BUCKETS_S = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.010, 0.015, 0.020,
                   0.030, 0.050, 0.075, 0.100, 0.200, 0.500, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, open_sessions, max_sessions: int,
                 speech_queue_seconds: Callable[[], float] = lambda: 0.0) -> None:
        self.registry = CollectorRegistry()
        Gauge("livehuman_sessions", "Sessions open now", registry=self.registry
              ).set_function(open_sessions)
        Gauge("livehuman_max_sessions", "Session limit (--max-session)", registry=self.registry
              ).set(max_sessions)
        self.events = Counter("livehuman_session_events", "Session events by name and kind "
                              "(start = an utterance began playing)", ["event", "kind"],
                              registry=self.registry)
        self.triton_ready = Gauge("livehuman_triton_ready", "Triton and the models ready (1) or "
                                  "not (0), at the last scrape", registry=self.registry)
        self.triton_restarts = Counter("livehuman_triton_restarts", "Restarts of the embedded "
                                       "tritonserver after it exited or hung",
                                       registry=self.registry)
        self.lipsync_frames = Counter(
            "livehuman_lipsync_frames", "Speech frames by path: model = sent to the lip-sync "
            "model, silence = silent audio window, the avatar's own face (not sent; only for "
            "models whose closed mouth is their input)", ["path"], registry=self.registry)
        for path in LIPSYNC_FRAME_PATHS:  # both series from the start, 0 until counted
            self.lipsync_frames.labels(path)
        # Scraped in the event loop (the /metrics handler), where all_tasks() is this loop's.
        Gauge("livehuman_tasks", "asyncio tasks alive", registry=self.registry
              ).set_function(lambda: len(asyncio.all_tasks()))
        Gauge("livehuman_speech_tasks", "speech tasks alive (one per open session)",
              registry=self.registry).set_function(_speech_tasks)
        Gauge("livehuman_speech_queue_seconds", "Seconds of speech queued (waiting or being "
              "rendered) over all sessions, text estimated", registry=self.registry
              ).set_function(speech_queue_seconds)

        self.output_up = Gauge("livehuman_output_up", "An output (an RTMP or WHIP push URL, "
                               "its secrets hidden) is connected and sending (1) or "
                               "reconnecting (0)",
                               ["output"], registry=self.registry)
        self.output_outages = Counter("livehuman_output_outages", "Connections an output lost "
                                      "(or could not make), each outage once", ["output"],
                                      registry=self.registry)
        self.output_dropped_ticks = Counter("livehuman_output_dropped_ticks", "40 ms ticks an "
                                            "output dropped because it fell behind", ["output"],
                                            registry=self.registry)

        self.loop_lag = Histogram(
            "livehuman_event_loop_lag_seconds", "How late the event loop woke a task sleeping "
            f"{LOOP_PROBE_INTERVAL_S * 1000:g} ms (a stall of the loop delays every session)",
            buckets=LOOP_LAG_BUCKETS_S, registry=self.registry)
        self.stage_seconds = Histogram(
            "livehuman_stage_seconds", "Duration of each stage of the media path, by stage "
            "(orchestrator/media/stage_timing.py: tts_sentence and lipsync_request are awaited "
            "latencies, the others work done on the event loop or an encoder thread)",
            ["stage"], buckets=STAGE_BUCKETS_S, registry=self.registry)
        self._stage_series = {stage: self.stage_seconds.labels(stage)
                              for stage in stage_timing.STAGES}
        stage_timing.subscribe(self.observe_stage)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """stage_timing's subscriber (any thread: the histogram is thread-safe)."""
        series = self._stage_series.get(stage)
        if series is None:
            series = self._stage_series[stage] = self.stage_seconds.labels(stage)
        series.observe(seconds)

    def start_loop_probe(self) -> asyncio.Task:
        """The event-loop lag probe, running in this loop until the task is cancelled."""
        return asyncio.create_task(self._probe_loop(), name="event-loop-lag-probe")

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LOOP_PROBE_INTERVAL_S
            await asyncio.sleep(LOOP_PROBE_INTERVAL_S)
            self.loop_lag.observe(max(0.0, loop.time() - due))

    def watch_idle_streams(self, streams) -> None:
        """Gauges of the shared idle streams (orchestrator/idle_stream.IdleStreams)."""
        Gauge("livehuman_idle_streams", "Shared idle video streams (one encoder each) now",
              registry=self.registry).set_function(lambda: len(streams))
        Gauge("livehuman_idle_stream_viewers", "Sessions following or joining a shared idle "
              "stream now", registry=self.registry).set_function(streams.viewers)
        self.registry.register(_IdleStreamAsks(streams))

    def output(self, label: str) -> OutputMetrics:
        """The series of one output (thread-safe: pushes update them from their threads)."""
        return OutputMetrics(self.output_up.labels(label), self.output_outages.labels(label),
                             self.output_dropped_ticks.labels(label))

    def observe(self, item: dict[str, Any]) -> None:
        """Called for every session event (SessionEvents' observer)."""
        self.events.labels(item["event"], item.get("kind", "")).inc()

    def count_lipsync_frames(self, path: str, count: int) -> None:
        """LipSyncModels' `on_frames`: `count` speech frames took `path`."""
        self.lipsync_frames.labels(path).inc(count)

    def render(self, triton_ready: bool) -> bytes:
        self.triton_ready.set(1 if triton_ready else 0)
        return generate_latest(self.registry)


def _speech_tasks() -> int:
    return sum(1 for task in asyncio.all_tasks() if task.get_name().startswith(SPEECH_TASK_PREFIX))


class _IdleStreamAsks(Collector):
    """`livehuman_idle_stream_asks_total{frame}`: viewers' asks for a shared idle frame that
    found it encoded ahead (`ready`) or had to wait for its encode (`waited`)."""

    def __init__(self, streams) -> None:
        self._streams = streams

    def collect(self):
        family = CounterMetricFamily(
            "livehuman_idle_stream_asks", "Viewers' asks for a shared idle stream's frame: "
            "encoded ahead (ready) or not yet (waited: the viewer waited for the encode)",
            labels=["frame"])
        waits = self._streams.waits
        family.add_metric(["ready"], self._streams.asks - waits)
        family.add_metric(["waited"], waits)
        yield family
