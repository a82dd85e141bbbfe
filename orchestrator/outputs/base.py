"""What every output shares: its interface is a sink of the session's ticks
(`media/sinks.py`: `Sink`, which the session hands every tick), and its series in /metrics.
"""

from __future__ import annotations


class OutputMetrics:
    """An output's series in /metrics (orchestrator/metrics.py `Metrics.output`): `up` (gauge,
    1 while connected and sending), `outages` (counter, each lost connection once),
    `dropped_ticks` (counter, ticks dropped because the output fell behind)."""

    def __init__(self, up, outages, dropped_ticks) -> None:
        self.up = up
        self.outages = outages
        self.dropped_ticks = dropped_ticks
