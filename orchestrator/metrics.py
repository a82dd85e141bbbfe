"""`GET /metrics` in the Prometheus text format: sessions, session events (utterances by kind,
interruptions, errors, recordings) and Triton readiness, on a registry of this app's own."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, open_sessions, max_sessions: int) -> None:
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

    def observe(self, item: dict[str, Any]) -> None:
        """Called for every session event (SessionEvents' observer)."""
        self.events.labels(item["event"], item.get("kind", "")).inc()

    def render(self, triton_ready: bool) -> bytes:
        self.triton_ready.set(1 if triton_ready else 0)
        return generate_latest(self.registry)
