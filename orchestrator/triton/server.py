"""The embedded Triton: the `tritonserver` shipped in the nvidia-pytriton wheel, run on loopback.

Used when no --triton-url is given (development, CI, `make run`). Production talks to the
official Triton container instead; both load the same `model_repository/`. The embedded server
starts with `--model-config-name=local`, so a model with `configs/local.pbtxt` (e.g. an ONNX
model served by a python-backend adapter, as this server has no onnxruntime backend) uses that
file here and `config.pbtxt` in the container.

`restart()` starts a new server process on the same ports (so the URL every client holds stays
valid); `triton_supervisor` decides when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import threadpoolctl
import tritonclient.grpc.aio as grpcclient

from .client import new_client
from .process import die_with_parent, reap_leftovers

log = logging.getLogger(__name__)

LOCAL_CONFIG_NAME = "local"
LOOPBACK = "127.0.0.1"
DEFAULT_START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
SERVER_EXIT_TIMEOUT_S = 5  # tritonserver's own grace period for in-flight requests on SIGTERM
READY_POLL_S = 0.1
PORT_ATTEMPTS = 3  # a free port can be taken between picking it and the server binding it
LOG_TAIL_CHARS = 4000
STUB_NAME = "triton_python_backend_stub"


class TritonStartError(RuntimeError):
    pass


def bundled_server_dir() -> Path:
    """`pytriton/tritonserver`: bin/tritonserver, backends/python, python_backend_stubs/3.X."""
    try:
        import pytriton
    except ImportError:
        raise TritonStartError(
            "the embedded Triton needs the nvidia-pytriton wheel (x86_64 Linux); "
            "or pass --triton-url of a running server") from None
    path = Path(pytriton.__file__).parent / "tritonserver"
    if not (path / "bin" / "tritonserver").exists():
        raise TritonStartError(f"no tritonserver in the nvidia-pytriton wheel at {path}")
    return path


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all bound at once, so the kernel cannot repeat one)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]


def single_threaded_blas() -> None:
    """Limit this process's BLAS (numpy's OpenBLAS) to one thread, before forking a server.

    OpenBLAS's fork handler waits for its worker threads: a fork while another thread is inside
    a multi-threaded BLAS call (a session's mel features in an executor) hangs the whole process
    for ever, which a Triton restart under live sessions did. Our matrices are small (mel basis
    80 x 513 times a sentence's frames): one thread costs nothing. Process-wide and idempotent.
    """
    threadpoolctl.threadpool_limits(1, user_api="blas")


def server_environment(server_dir: Path) -> dict[str, str]:
    """The python backend stub must load this interpreter's libpython and find its packages.

    LD_LIBRARY_PATH: this interpreter's LIBDIR first (else the stub may load the system's
    libpython of another patch version and fail in the stdlib) and the wheel's bundled libraries.
    PATH: this interpreter's bin dir (the virtualenv's) first: the stub imports numpy,
    onnxruntime, ... from the environment of the first `python3` on PATH.
    """
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR"), str(server_dir.parent.parent / "nvidia_pytriton.libs")]
    old = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + old)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env.pop("PYTHONHOME", None)
    return env


def _prepare_backends(server_dir: Path, workdir: Path) -> Path:
    """`workdir/backends/python`: the bundled python backend plus the stub for this Python."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / version / STUB_NAME
    if not stub.exists():
        raise TritonStartError(f"the bundled python backend has no stub for Python {version}")
    backends = workdir / "backends"
    python_backend = backends / "python"
    shutil.rmtree(backends, ignore_errors=True)
    shutil.copytree(server_dir / "backends" / "python", python_backend,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, python_backend / STUB_NAME)
    return backends


class EmbeddedTriton:
    """A local tritonserver serving `model_repository` on free loopback ports.

    `models` are the models `start()` waits for; every model in the repository is loaded, and one
    that fails to load does not stop the others (it is reported if it is one of `models`).
    """

    def __init__(self, model_repository: Path | str, models: list[str] | tuple[str, ...] = (),
                 *, timeout_s: float = DEFAULT_START_TIMEOUT_S,
                 workdir: Path | str | None = None) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.models = list(models)
        self.timeout_s = timeout_s
        self.grpc_port = self.http_port = self.metrics_port = 0
        self._given_workdir = Path(workdir) if workdir is not None else None
        self._workdir: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._server_dir: Path | None = None
        self._backends: Path | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        """gRPC address, as tritonclient.grpc takes it: "127.0.0.1:PORT"."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def _args(self, server_dir: Path, backends: Path) -> list[str]:
        return [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--model-config-name={LOCAL_CONFIG_NAME}",
            f"--grpc-address={LOOPBACK}", f"--grpc-port={self.grpc_port}",
            f"--http-address={LOOPBACK}", f"--http-port={self.http_port}",
            f"--metrics-address={LOOPBACK}", f"--metrics-port={self.metrics_port}",
            # one broken model must not take the others down; readiness is checked per model
            "--exit-on-error=false",
            "--strict-readiness=false",
            f"--exit-timeout-secs={SERVER_EXIT_TIMEOUT_S}",
            "--log-verbose=0",
        ]

    async def start(self) -> None:
        """Start the server and wait for `models`; TritonStartError (with the log's tail) if not."""
        if self._proc is not None:
            raise RuntimeError("EmbeddedTriton already started")
        if not self.model_repository.is_dir():
            raise TritonStartError(f"model repository {self.model_repository} is not a directory")
        server_dir = self._server_dir = bundled_server_dir()
        if self._given_workdir is not None:
            self._given_workdir.mkdir(parents=True, exist_ok=True)
            self._workdir = self._given_workdir
        else:
            self._workdir = Path(tempfile.mkdtemp(prefix="livehuman-triton-"))
        started = time.monotonic()
        try:
            backends = self._backends = _prepare_backends(server_dir, self._workdir)
            for attempt in range(1, PORT_ATTEMPTS + 1):
                self.grpc_port, self.http_port, self.metrics_port = _free_ports(3)
                if await self._start_once(server_dir, backends, last=attempt == PORT_ATTEMPTS):
                    break
                log.warning("tritonserver could not bind its ports; retrying with others")
        except BaseException:
            await self.stop()
            raise
        log.info("tritonserver pid=%s ready at %s in %.1f s, models: %s", self.pid, self.url,
                 time.monotonic() - started, ", ".join(self.models) or "-")

    async def restart(self) -> None:
        """A new server process on the same ports, after the old one exited or was killed.

        Waits for `models` like start(); TritonStartError (with the log's tail) if they do not
        get ready, the process then stopped. The log file is appended to, not replaced, so what
        the previous process wrote before it died stays readable.
        """
        if self._server_dir is None or self._backends is None or self._workdir is None:
            raise RuntimeError("EmbeddedTriton.restart() before start()")
        await self._terminate()
        started = time.monotonic()
        try:
            await self._start_once(self._server_dir, self._backends, last=True, append_log=True)
        except BaseException:
            await self._terminate()
            raise
        log.info("tritonserver pid=%s ready again at %s in %.1f s", self.pid, self.url,
                 time.monotonic() - started)

    async def wait_exited(self) -> int:
        """Wait until the current server process exits; its exit code (-N: killed by signal N)."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("EmbeddedTriton is not running")
        return await proc.wait()

    def kill(self) -> None:
        """SIGKILL the server process (a hung one that no longer answers); restart() follows."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def _start_once(self, server_dir: Path, backends: Path, last: bool,
                          append_log: bool = False) -> bool:
        """True when ready; False when the ports were taken (and `last` is False)."""
        self.log_path = self._workdir / "tritonserver.log"
        single_threaded_blas()  # a fork under concurrent BLAS work would hang this process
        with open(self.log_path, "ab" if append_log else "wb") as log_file:
            self._proc = await asyncio.create_subprocess_exec(
                *self._args(server_dir, backends),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self._workdir, env=server_environment(server_dir),
                preexec_fn=die_with_parent(os.getpid()),
                # Its own process group, which its python backend stubs join: a server killed
                # abruptly leaves them running (~100 MB each), and the group finds them.
                process_group=0,
            )
        log.info("tritonserver pid=%s starting: grpc %s, log %s", self._proc.pid, self.url,
                 self.log_path)
        try:
            await wait_models_ready(self.url, self.models, self.timeout_s, process=self._proc)
        except TritonStartError as exc:
            tail = self.log_tail()
            await self._terminate()
            if not last and "already in use" in tail:
                return False
            raise TritonStartError(
                f"{exc}\n--- {self.log_path} (tail) ---\n{tail}") from None
        return True

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""
        except OSError:
            return ""

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is not None:  # it died by itself: what it left behind
            reap_leftovers(proc.pid)
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            log.warning("tritonserver pid=%s ignored SIGTERM for %.0f s: killing it", proc.pid,
                        STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        except BaseException:  # cancelled while waiting: do not leave it running
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        finally:
            if proc.returncode is not None:
                reap_leftovers(proc.pid)

    async def stop(self) -> None:
        """Terminate the server (SIGKILL after STOP_TIMEOUT_S); remove a temporary work dir."""
        pid = self.pid
        await self._terminate()
        if pid is not None:
            log.info("tritonserver pid=%s stopped", pid)
        if self._workdir is not None and self._given_workdir is None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None

    async def __aenter__(self) -> EmbeddedTriton:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()


async def wait_models_ready(url: str, models: list[str] | tuple[str, ...], timeout_s: float,
                            process: asyncio.subprocess.Process | None = None) -> None:
    """Poll the Triton at `url` (gRPC) until it and every model in `models` are ready.

    Raises TritonStartError when `timeout_s` passes, when `process` (the server) exits, or when a
    model failed to load (Triton reports it UNAVAILABLE with the reason).
    """
    client = new_client(url)
    deadline = time.monotonic() + timeout_s
    last_state = "not reachable"
    try:
        while True:
            if process is not None and process.returncode is not None:
                raise TritonStartError(f"tritonserver exited with code {process.returncode}")
            try:
                last_state = await _readiness(client, models)
            except TritonStartError:
                raise
            except Exception as exc:  # still starting: connection refused and the like
                last_state = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if last_state == "":
                return
            if time.monotonic() >= deadline:
                raise TritonStartError(
                    f"Triton at {url} not ready after {timeout_s:.0f} s: {last_state}")
            await asyncio.sleep(READY_POLL_S)
    finally:
        await client.close()


async def _readiness(client: grpcclient.InferenceServerClient, models) -> str:
    """An empty string when the server and `models` are ready, else what is missing."""
    if not await client.is_server_ready():
        return "server not ready"
    waiting = [m for m in models if not await client.is_model_ready(m)]
    if not waiting:
        return ""
    index = await client.get_model_repository_index(as_json=True)
    states = {m.get("name"): m for m in index.get("models", [])}
    failed = [f"{m}: {states[m].get('reason')}" for m in waiting
              if states.get(m, {}).get("state") == "UNAVAILABLE"
              and states[m].get("reason") not in (None, "", "unloaded")]
    if failed:
        raise TritonStartError("model(s) failed to load: " + "; ".join(failed))
    missing = [m for m in waiting if m not in states]
    if missing:
        raise TritonStartError(f"not in the model repository: {', '.join(missing)}")
    return f"models not ready: {', '.join(waiting)}"
