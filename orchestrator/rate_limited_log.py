"""Log lines bounded per kind: lines a client can cause (malformed requests) and expected
failures of servers outside this process (TTS, LLM, ASR, pushes: errors.ExternalServiceError),
one line each with the cause, never a traceback. A flood must not flood the log, and what was
left out is still counted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_LINES_PER_WINDOW = 20
DEFAULT_WINDOW_S = 60.0
MAX_KINDS = 256  # kinds are route templates and exception names; a bound all the same


@dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """At most `lines_per_window` lines per kind in each `window_s`; past that, lines are
    counted, and the kind's first line after the window says how many were suppressed."""

    def __init__(self, logger: logging.Logger, lines_per_window: int = DEFAULT_LINES_PER_WINDOW,
                 window_s: float = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._lines = lines_per_window
        self._window_s = window_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def log(self, kind: str, level: int, msg: str, *args: object) -> bool:
        """Log one line (no traceback) unless this kind is over its limit; True if logged."""
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window.start >= self._window_s:
            if window is not None and window.suppressed:
                self._logger.log(level, "%s: suppressed %d similar lines in %.0f s", kind,
                                 window.suppressed, self._window_s)
            if window is None and len(self._windows) >= MAX_KINDS:
                self._windows.pop(next(iter(self._windows)))
            window = self._windows[kind] = _Window(now)
        if window.logged >= self._lines:
            window.suppressed += 1
            return False
        window.logged += 1
        self._logger.log(level, msg, *args)
        return True
