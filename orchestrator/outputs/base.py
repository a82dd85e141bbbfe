"""What every output shares: its interface is a sink of the session's ticks
(`media/sinks.py`: `Sink`, which the session hands every tick), its series in /metrics, and,
for a push to a server (RTMP, WHIP), the state of its link and its reconnect backoff.
"""

from __future__ import annotations

import time

# A push that lost its server tries again after RECONNECT_BACKOFF_S, doubling each failed try
# up to MAX_RECONNECT_BACKOFF_S.
RECONNECT_BACKOFF_S = 0.5
MAX_RECONNECT_BACKOFF_S = 10.0


class OutputMetrics:
    """An output's series in /metrics (orchestrator/metrics.py `Metrics.output`): `up` (gauge,
    1 while connected and sending), `outages` (counter, each lost connection once),
    `dropped_ticks` (counter, ticks dropped because the output fell behind)."""

    def __init__(self, up, outages, dropped_ticks) -> None:
        self.up = up
        self.outages = outages
        self.dropped_ticks = dropped_ticks


class PushLink:
    """A push's link to its server, shared by outputs/rtmp.py and outputs/whip.py: `state`
    (connecting, up, down), `connections` made (1 + reconnects), `outages` (each lost link
    once), the reconnect backoff, and the `up`/`outages` series of its OutputMetrics. The push
    calls `_link_up` when a connection starts sending and `_link_down` when one ends (under its
    own lock where threads share it), and logs what they return."""

    def _init_link(self, metrics: OutputMetrics | None) -> None:
        self._metrics = metrics
        self.state = "connecting"  # connecting, up, down
        self.connections = 0
        self.outages = 0
        self._down_since: float | None = None
        self._backoff_s = RECONNECT_BACKOFF_S

    def _link_up(self) -> float | None:
        """A connection is sending: seconds the link was down before it, None on a first
        connection (or after `connecting`)."""
        was, self.state = self.state, "up"
        self.connections += 1
        self._backoff_s = RECONNECT_BACKOFF_S
        if self._metrics is not None:
            self._metrics.up.set(1)
        if was != "down":
            return None
        return time.monotonic() - self._down_since if self._down_since else 0.0

    def _link_down(self) -> bool:
        """A connection (or an attempt) ended: True when this starts an outage (counted
        once), False while the link was already down."""
        was, self.state = self.state, "down"
        if was == "down":
            return False
        self._down_since = time.monotonic()
        self.outages += 1
        if self._metrics is not None:
            self._metrics.up.set(0)
            self._metrics.outages.inc()
        return True

    def _next_backoff_s(self) -> float:
        """How long to wait before the next try; the one after waits twice as long (at most
        MAX_RECONNECT_BACKOFF_S)."""
        delay_s, self._backoff_s = self._backoff_s, min(self._backoff_s * 2,
                                                        MAX_RECONNECT_BACKOFF_S)
        return delay_s
