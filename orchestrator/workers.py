"""Many orchestrator processes on one host (`--workers N`): one HTTP port, one Triton.

One orchestrator process runs one event loop, about one core: on a GPU box with 16 cores that
leaves most of the CPU side idle. With `--workers N` this process is the host's parent: it
binds the HTTP port, starts the embedded Triton once (or passes `--triton-url` through), and
runs N workers, each a whole orchestrator (`python -m orchestrator` with the same flags and
WORKER_ROLE_ENV) that reaches that Triton with `--triton-url`. The parent serves nothing
itself; it keeps the workers running and stops them.

**The port: one listening socket, inherited.** The parent binds it once and every worker
serves that same socket (as gunicorn's and uvicorn's workers do): one accept queue, so a
connection waits in it while a worker restarts instead of being refused or reset, the port
stays bound through restarts, no other process can join it (SO_REUSEPORT lets any process of
the user bind the port and take a share), and a worker whose event loop is busy accepts later,
so new connections go to the less busy ones. A front process that hands sockets over would have
to read each request to know its session, and put one event loop back in front of every
request.

**Sessions: one worker each, requests routed by their id.** Worker j of host instance h
(`--instance-id`, 0 without one) issues session ids of instance h * N + j (session/ids.py).
Each worker also serves a private loopback port (bound by the parent, kept through restarts);
a request for another worker's session (JSON body, query, path: wherever the session is looked
up) is forwarded there (http/instance_forward.py), `/metrics`, `/api/admin/sessions` and
`/healthz` are answered for the whole host (http/host_view.py). WebRTC media needs nothing:
each worker's peers use its own UDP ports. `--max-session` is per worker. The server session
(sessionid 0: `--transport rtmp`, `whep`) is opened by worker 0 only; WHEP resource ids carry
their worker's instance (outputs/whep.py).

**Lifetime.** SIGTERM is passed to every worker, which drains (drain.py); the parent waits for
all of them, stops Triton and exits 0 (a second SIGTERM, or SIGINT, stops every worker at
once). A worker that dies is restarted after a backoff (doubling per crash in a row, up to
RESTART_BACKOFF_MAX_S): its sessions are gone (their peers stop receiving), the host's counts
and lists drop them, and one log line says so. A worker that exits before it ever answered
(a bad flag, a port it cannot serve) stops the host with exit code 1 instead of a restart loop.
Workers die with the parent (the parent-death signal).

`--workers 1` runs no parent: `python -m orchestrator` serves in its own process, as always.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, replace

import aiohttp

from .http.host_view import WORKER_ONLY_HEADER
from .http.instance_forward import WORKER_HOST
from .services import start_shared_triton, triton_model_names
from .settings import Settings
from .triton.process import die_with_parent
from .triton.supervisor import TritonSupervisor

log = logging.getLogger(__name__)

WORKER_ROLE_ENV = "LIVEHUMAN_WORKER_ROLE"  # set by the parent: what a worker process is
LISTEN_BACKLOG = 1024
READY_TIMEOUT_S = 300.0  # a worker's start: imports, warm-up, Triton's models
READY_PROBE_S = 2.0
RESTART_BACKOFF_FIRST_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # up this long: its next crash starts a new streak (no backoff)
SESSIONS_PROBE_S = 1.0  # how often the parent reads each worker's session count (its log)
# After the workers' drain time: a worker still running this long after it is killed.
STOP_MARGIN_S = 30.0


@dataclass(frozen=True)
class WorkerRole:
    """What the parent tells worker `index` of `count`: the inherited socket of the HTTP port
    (`listen_fd`), its own private one (`private_fd`), and every worker's private port."""

    index: int
    count: int
    listen_fd: int
    private_fd: int
    private_ports: tuple[int, ...]

    def to_env(self) -> str:
        return json.dumps({"index": self.index, "count": self.count, "listen_fd": self.listen_fd,
                           "private_fd": self.private_fd,
                           "private_ports": list(self.private_ports)})

    @classmethod
    def from_environment(cls) -> WorkerRole | None:
        """This process's role when the parent started it; None otherwise. SystemExit when
        WORKER_ROLE_ENV is malformed (set by hand)."""
        text = os.environ.get(WORKER_ROLE_ENV)
        if not text:
            return None
        try:
            fields = json.loads(text)
            return cls(int(fields["index"]), int(fields["count"]), int(fields["listen_fd"]),
                       int(fields["private_fd"]), tuple(int(p) for p in fields["private_ports"]))
        except (ValueError, KeyError, TypeError):
            raise SystemExit(f"{WORKER_ROLE_ENV} is set by the orchestrator's --workers parent, "
                             "not by hand") from None

    def settings(self, settings: Settings) -> Settings:
        """The worker's settings: its instance id, host instance h * count + index."""
        return replace(settings, instance_id=worker_instance_id(settings.instance_id, self.index,
                                                                self.count))

    def sockets(self) -> list[socket.socket]:
        """The HTTP port's socket and the private one, from the inherited descriptors."""
        return [socket.socket(fileno=fd) for fd in (self.listen_fd, self.private_fd)]


def worker_instance_id(host_instance: int | None, index: int, count: int) -> int:
    """The instance id worker `index` of `count` puts into its session ids."""
    return (host_instance or 0) * count + index


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket the workers inherit (IPv6 for an address with ':')."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


class Host:
    """The parent: the sockets, Triton, and N worker processes kept running until stopped."""

    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv
        self.count = settings.workers
        self.stopping = asyncio.Event()
        self.failed = False  # a worker could not start: the host stops
        self.listener = bind(settings.host, settings.port)
        self.privates = [bind(WORKER_HOST, 0) for _ in range(self.count)]
        self.private_ports = tuple(s.getsockname()[1] for s in self.privates)
        self.processes: list[asyncio.subprocess.Process | None] = [None] * self.count
        self.restarts = 0
        self.exit_codes: list[int | None] = [None] * self.count
        # Each worker's sessions at its last probe: what a crash closed, for the log.
        self.sessions: list[int | None] = [None] * self.count

    def role(self, index: int) -> WorkerRole:
        return WorkerRole(index, self.count, self.listener.fileno(),
                          self.privates[index].fileno(), self.private_ports)

    async def spawn(self, index: int, triton_url: str) -> asyncio.subprocess.Process:
        role = self.role(index)
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator", *self.argv, "--triton-url", triton_url,
            stdin=asyncio.subprocess.DEVNULL, pass_fds=(role.listen_fd, role.private_fd),
            env={**os.environ, WORKER_ROLE_ENV: role.to_env()},
            preexec_fn=die_with_parent(os.getpid()))

    async def wait_answering(self, index: int, process: asyncio.subprocess.Process) -> bool:
        """Whether worker `index` answers HTTP on its private port (any status) before it exits
        or READY_TIMEOUT_S passes."""
        url = f"http://{WORKER_HOST}:{self.private_ports[index]}/healthz"
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=READY_PROBE_S)) as http:
            while time.monotonic() < deadline and process.returncode is None:
                try:
                    async with http.get(url, headers={WORKER_ONLY_HEADER: "1"}):
                        return True
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.2)
        return False

    async def watch_sessions(self) -> None:
        """Read every live worker's session count each SESSIONS_PROBE_S (its own /healthz)."""
        headers = {WORKER_ONLY_HEADER: "1"}
        if self.settings.api_token:  # --protect-metrics: /healthz wants it too
            headers["Authorization"] = f"Bearer {self.settings.api_token}"
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=READY_PROBE_S)) as http:

            async def probe(index: int) -> None:
                url = f"http://{WORKER_HOST}:{self.private_ports[index]}/healthz"
                try:
                    async with http.get(url, headers=headers) as response:
                        self.sessions[index] = int((await response.json())["data"]["sessions"])
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
                    pass  # starting, stopping or gone: the last count stands

            while not self.stopping.is_set():
                live = [i for i, p in enumerate(self.processes)
                        if p is not None and p.returncode is None]
                await asyncio.gather(*(probe(i) for i in live))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SESSIONS_PROBE_S):
                        await self.stopping.wait()

    async def keep(self, index: int, triton_url: str, first: asyncio.Future) -> None:
        """Run worker `index` until the host stops: restart it when it dies. `first` gets
        whether its first start answered (None: the host stopped before it started)."""
        try:
            await self._keep(index, triton_url, first)
        finally:
            if not first.done():
                first.set_result(None)

    async def _keep(self, index: int, triton_url: str, first: asyncio.Future) -> None:
        backoff_s = RESTART_BACKOFF_FIRST_S
        while not self.stopping.is_set():
            started = time.monotonic()
            process = self.processes[index] = await self.spawn(index, triton_url)
            if not first.done():
                answering = asyncio.create_task(self.wait_answering(index, process))
                exited = asyncio.create_task(process.wait())
                await asyncio.wait({answering, exited}, return_when=asyncio.FIRST_COMPLETED)
                ok = answering.done() and answering.result()
                first.set_result(ok)
                exited.cancel()
                await asyncio.gather(answering, exited, return_exceptions=True)
                if not ok:  # never answered: the host stops (serve_workers), no restart loop
                    self.exit_codes[index] = await process.wait()
                    return
            code = self.exit_codes[index] = await process.wait()
            if self.stopping.is_set():
                return
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff_s = RESTART_BACKOFF_FIRST_S
            self.restarts += 1
            lost, self.sessions[index] = self.sessions[index], None
            log.warning("worker %d (pid %d) exited with %s: its %s session(s) are closed "
                        "(their peers stop receiving; the host's counts drop them); restarting "
                        "it in %.0f s", index, process.pid, code,
                        "unknown number of" if lost is None else lost, backoff_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff_s):
                    await self.stopping.wait()
            backoff_s = min(2 * backoff_s, RESTART_BACKOFF_MAX_S)

    def signal_workers(self, signum: int) -> None:
        for process in self.processes:
            if process is not None and process.returncode is None:
                try:
                    process.send_signal(signum)
                except ProcessLookupError:
                    pass

    def close(self) -> None:
        for sock in (self.listener, *self.privates):
            sock.close()


async def serve_workers(settings: Settings, argv: list[str]) -> int:
    """Run the host's workers until SIGTERM (drain each) or SIGINT (stop at once); the exit
    code: 0 when every worker ended cleanly, 1 when one could not start or did not end so."""
    host = Host(settings, argv)
    embedded = supervisor = None
    keepers: list[asyncio.Task] = []
    loop = asyncio.get_running_loop()
    terms: list[int] = []

    def on_sigterm() -> None:
        terms.append(1)
        host.stopping.set()
        # The first: every worker drains; the second: every worker stops at once.
        host.signal_workers(signal.SIGTERM if len(terms) == 1 else signal.SIGINT)

    def on_sigint() -> None:
        host.stopping.set()
        host.signal_workers(signal.SIGINT)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        if settings.triton_url:
            triton_url = settings.triton_url
        else:
            embedded = await start_shared_triton(settings)
            triton_url = embedded.url
            # Restarted when it crashes or hangs, as a single orchestrator's own would be.
            supervisor = TritonSupervisor(triton_url, triton_model_names(settings), embedded)
            await supervisor.start()
        firsts = [loop.create_future() for _ in range(host.count)]
        keepers = [asyncio.create_task(host.keep(i, triton_url, firsts[i]), name=f"worker-{i}")
                   for i in range(host.count)]
        keepers.append(asyncio.create_task(host.watch_sessions(), name="worker-sessions"))
        started = await asyncio.gather(*firsts)
        failed = [i for i, answered in enumerate(started) if answered is False]
        if failed:
            host.failed = True
            log.error("worker(s) %s exited before they answered: stopping", failed)
            host.stopping.set()
            host.signal_workers(signal.SIGINT)
        elif not host.stopping.is_set():
            print(f"livehuman: serving on http://{settings.host}:{settings.port} with "
                  f"{host.count} workers (pids {[p.pid for p in host.processes if p]}), Triton "
                  f"at {triton_url}", flush=True)
        await host.stopping.wait()
        try:
            async with asyncio.timeout(settings.drain_timeout_s + STOP_MARGIN_S):
                await asyncio.gather(*keepers, return_exceptions=True)
        except TimeoutError:
            log.warning("workers still running %.0f s after the drain time: killing them",
                        STOP_MARGIN_S)
            host.signal_workers(signal.SIGKILL)
            await asyncio.gather(*keepers, return_exceptions=True)
    finally:
        host.stopping.set()
        host.signal_workers(signal.SIGINT)
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        if supervisor is not None:
            await supervisor.close()
        if embedded is not None:
            await embedded.stop()
        host.close()
    clean = all(code == 0 for code in host.exit_codes)
    log.info("all %d workers stopped (exit codes %s)", host.count, host.exit_codes)
    return 1 if host.failed or not clean else 0
