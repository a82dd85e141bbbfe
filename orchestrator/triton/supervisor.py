"""Is Triton ready now? One owner of the answer for the whole app, and the embedded server's keeper.

A background monitor probes the server and its models every PROBE_INTERVAL_S, each probe bounded
by PROBE_TIMEOUT_S, and keeps the last answer: /healthz, /metrics and the 503 gate of the speech
endpoints read that cached state and never wait on a server that does not answer (a SIGSTOPped
one). It logs one line per change of state, not per probe.

The embedded server is supervised: when its process exits (or hangs unanswering for
HUNG_RESTART_S) it is restarted on the same ports, after a backoff that doubles per crash in a
row up to RESTART_BACKOFF_MAX_S, its models are waited for (wait_models_ready), and each restart
is logged and counted (`on_restart`). An external server (--triton-url) is only watched: the
shared gRPC channel reconnects by itself once it is back (see triton_clients).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .client import TritonServerClient
from .server import EmbeddedTriton, TritonStartError

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 1.0
# A probe left unanswered this long (a stopped or hung server) makes Triton not ready; a single
# slow answer on a busy machine (the event loop or the server's CPU shared) does not. A refused
# connection or an exited process is not ready at once.
SLOW_ANSWER_GRACE_S = 2.0
# An embedded server alive but answering no probe for this long is killed and restarted.
HUNG_RESTART_S = 30.0
RESTART_BACKOFF_FIRST_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
# close() cancels the monitor again after this long if a cancellation was lost.
CLOSE_RECANCEL_S = 0.5
# Up this long since it (re)started: the next crash starts a new streak (no backoff).
STABLE_AFTER_S = 60.0
# wait_ready after a failed call: time for the monitor to notice an outage before it is asked
# (an exited process is seen at once, an unanswered probe within PROBE_INTERVAL_S + timeout).
NOTICE_OUTAGE_S = PROBE_INTERVAL_S + PROBE_TIMEOUT_S


class TritonSupervisor:
    """Watches the Triton at `url` (and keeps `embedded` running when given).

    `status` is the last probe's answer: {"live", "ready", "models": {name: ready}} plus "error"
    when the server did not answer, "restarting" while the embedded server is being restarted.
    """

    def __init__(self, url: str, models: list[str], embedded: EmbeddedTriton | None = None,
                 on_restart: Callable[[], None] = lambda: None,
                 hung_restart_s: float = HUNG_RESTART_S) -> None:
        self.url = url
        self.models = list(models)
        self.embedded = embedded
        self.hung_restart_s = hung_restart_s
        self.restarts = 0
        self._on_restart = on_restart
        self._client = TritonServerClient(url)
        self._status: dict = {"live": False, "ready": False, "models": {}, "error": "not probed yet"}
        self._unanswered_since: float | None = None
        self._crash_streak = 0
        self._up_since = time.monotonic()  # when the current server process was started
        self._task: asyncio.Task | None = None
        self._exit_watch: asyncio.Task | None = None  # the embedded process's wait()
        self._exit_watch_pid: int | None = None

    @property
    def status(self) -> dict:
        return dict(self._status)

    @property
    def ready(self) -> bool:
        return bool(self._status.get("ready"))

    @property
    def reason(self) -> str:
        """Why Triton is not ready, in a few words ("" when it is)."""
        if self.ready:
            return ""
        if self._status.get("restarting"):
            return "the embedded server is restarting"
        if "error" in self._status:
            return f"not answering ({self._status['error']})"
        waiting = [m for m, ok in self._status.get("models", {}).items() if not ok]
        return f"models not ready: {', '.join(waiting)}" if waiting else "server not ready"

    async def wait_ready(self, timeout_s: float) -> bool:
        """After a call to Triton failed: True once Triton is ready again (the monitor is first
        given NOTICE_OUTAGE_S to notice an outage), False when it is not within `timeout_s`
        seconds."""
        deadline = time.monotonic() + timeout_s
        await asyncio.sleep(min(NOTICE_OUTAGE_S, timeout_s))
        while not self.ready:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(PROBE_INTERVAL_S)
        return True

    async def start(self) -> None:
        """One probe now (the state is known from the first request on), then the monitor."""
        await self._probe()
        self._task = asyncio.create_task(self._run(), name="triton-supervisor")

    async def close(self) -> None:
        """Stop watching (and restarting); the embedded server itself is its owner's to stop.

        The monitor is cancelled again until it has ended: a cancellation swallowed on its way
        (Python 3.11's asyncio.wait_for lost one that arrived as the call completed, gh-86296)
        once left close() waiting for good."""
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_RECANCEL_S)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("triton supervisor ended with %r", task.exception())
        if self._exit_watch is not None:
            self._exit_watch.cancel()
            await asyncio.gather(self._exit_watch, return_exceptions=True)
        await self._client.close()

    async def _run(self) -> None:
        while True:
            try:
                if self.embedded is not None and not self.embedded.running:
                    await self._restart_embedded()
                    continue
                await self._wait_interval()
                if self.embedded is not None and not self.embedded.running:
                    continue  # exited: restart without probing a server that is gone
                await self._probe()
                self._kill_if_hung()
            except asyncio.CancelledError:
                raise
            except Exception:  # the monitor must outlive any one failure
                log.exception("triton supervisor: unexpected failure; going on")
                await asyncio.sleep(PROBE_INTERVAL_S)

    async def _wait_interval(self) -> None:
        """PROBE_INTERVAL_S, cut short when the embedded process exits (logged here)."""
        if self.embedded is None or not self.embedded.running:
            await asyncio.sleep(PROBE_INTERVAL_S)
            return
        # One wait() per process, not one per interval: a cancelled wait() stays in asyncio's
        # list of the process's exit waiters.
        pid = self.embedded.pid
        if self._exit_watch is None or self._exit_watch_pid != pid:
            self._exit_watch = asyncio.ensure_future(self.embedded.wait_exited())
            self._exit_watch_pid = pid
        done, _ = await asyncio.wait({self._exit_watch}, timeout=PROBE_INTERVAL_S)
        if done:
            log.error("tritonserver pid=%s at %s exited with code %s", pid, self.url,
                      self._exit_watch.result())

    async def _probe(self) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                status = await self._client.server_status(self.models)
            self._unanswered_since = None
        except Exception as exc:
            if isinstance(exc, asyncio.TimeoutError):
                message = f"no answer within {PROBE_TIMEOUT_S:.0f} s"
            else:
                message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            status = {"live": False, "ready": False, "models": {}, "error": message}
            if self._unanswered_since is None:
                self._unanswered_since = time.monotonic()
            if (isinstance(exc, asyncio.TimeoutError) and self.ready
                    and time.monotonic() - self._unanswered_since < SLOW_ANSWER_GRACE_S):
                return  # one slow answer is not an outage: keep the last state
        self._set(status)

    def _kill_if_hung(self) -> None:
        if (self.embedded is None or not self.embedded.running
                or self._unanswered_since is None
                or time.monotonic() - self._unanswered_since < self.hung_restart_s):
            return
        log.error("tritonserver pid=%s at %s answered no probe for %.0f s: killing it",
                  self.embedded.pid, self.url, time.monotonic() - self._unanswered_since)
        self.embedded.kill()

    def _set(self, status: dict) -> None:
        was_ready, self._status = self.ready, status
        if self.ready and not was_ready:
            log.info("triton at %s is ready", self.url)
        elif was_ready and not self.ready:
            log.warning("triton at %s is not ready: %s", self.url, self.reason)

    async def _restart_embedded(self) -> None:
        """Restart until ready, with a capped doubling backoff between failed attempts."""
        if time.monotonic() - self._up_since >= STABLE_AFTER_S:
            self._crash_streak = 0
        self._set({"live": False, "ready": False, "models": {}, "restarting": True})
        self._unanswered_since = None
        while True:
            delay = (0.0 if self._crash_streak == 0 else
                     min(RESTART_BACKOFF_FIRST_S * 2 ** (self._crash_streak - 1),
                         RESTART_BACKOFF_MAX_S))
            self._crash_streak += 1
            log.warning("restarting tritonserver at %s in %.1f s (restart %d in a row)",
                        self.url, delay, self._crash_streak)
            await asyncio.sleep(delay)
            try:
                await self.embedded.restart()
            except (TritonStartError, OSError) as exc:
                log.error("tritonserver restart failed: %s", exc)
                continue
            break
        self._up_since = time.monotonic()
        self.restarts += 1
        self._on_restart()
        log.warning("tritonserver restarted at %s (pid=%s, %d restarts since start)",
                    self.url, self.embedded.pid, self.restarts)
        # Ready once the shared channel the models use answers too (it reconnects by itself).
        await self._probe()
