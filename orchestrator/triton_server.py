"""The embedded Triton: the `tritonserver` shipped in the nvidia-pytriton wheel, run on loopback.

Used when no --triton-url is given (development, CI, `make run`). Production talks to the
official Triton container instead; both load the same `model_repository/`.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import tritonclient.grpc.aio as grpcclient

log = logging.getLogger(__name__)

# Selects <model>/configs/local.pbtxt where a model has one (CPU python adapter for ONNX models).
LOCAL_CONFIG_NAME = "local"
STOP_TIMEOUT_S = 10.0
READY_POLL_S = 0.25
PR_SET_PDEATHSIG = 1


class TritonStartError(RuntimeError):
    pass


def _bundled_server_dir() -> Path:
    import pytriton

    path = Path(pytriton.__file__).parent / "tritonserver"
    if not (path / "bin" / "tritonserver").exists():
        raise TritonStartError(f"no tritonserver in the nvidia-pytriton wheel at {path}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the orchestrator dies, even by SIGKILL."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _server_environment() -> dict[str, str]:
    """The python backend stub must load this interpreter's libpython and find its packages."""
    env = dict(os.environ)
    site_packages = Path(sysconfig.get_paths()["purelib"])
    libs = [sysconfig.get_config_var("LIBDIR"), str(site_packages / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [p for p in libs if p] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class EmbeddedTriton:
    """Start/stop a local tritonserver serving `model_repository` on free loopback ports."""

    def __init__(self, model_repository: Path, models: list[str], timeout_s: float = 120.0) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.models = list(models)
        self.timeout_s = timeout_s
        self.grpc_port = self.http_port = self.metrics_port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._workdir: Path | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _prepare_workdir(self) -> Path:
        """Backends dir with the stub built for this interpreter's Python version."""
        source = _bundled_server_dir()
        workdir = Path(tempfile.mkdtemp(prefix="livehuman-triton-"))
        backends = workdir / "backends" / "python"
        backends.mkdir(parents=True)
        for item in (source / "backends" / "python").iterdir():
            if item.is_file():
                shutil.copy2(item, backends / item.name)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = source / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise TritonStartError(f"the bundled python backend has no stub for Python {version}")
        shutil.copy2(stub, backends / stub.name)
        return workdir

    async def start(self) -> None:
        self._workdir = self._prepare_workdir()
        self.grpc_port, self.http_port, self.metrics_port = (_free_port() for _ in range(3))
        self.log_path = self._workdir / "tritonserver.log"
        server = _bundled_server_dir() / "bin" / "tritonserver"
        args = [
            str(server),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._workdir / 'backends'}",
            f"--model-config-name={LOCAL_CONFIG_NAME}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--strict-readiness=true",
            "--log-verbose=0",
        ]
        with open(self.log_path, "wb") as log_file:
            self._proc = await asyncio.create_subprocess_exec(
                *args, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                env=_server_environment(), preexec_fn=_die_with_parent,
            )
        log.info("tritonserver pid=%s grpc=%s starting", self._proc.pid, self.url)
        try:
            await wait_models_ready(self.url, self.models, self.timeout_s, process=self._proc)
        except Exception as exc:
            tail = self.log_tail()
            await self.stop()
            raise TritonStartError(f"{exc}\n--- tritonserver log (tail) ---\n{tail}") from None
        log.info("tritonserver ready at %s with models %s", self.url, ", ".join(self.models))

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""
        except FileNotFoundError:
            return ""

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    async def __aenter__(self) -> EmbeddedTriton:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def wait_models_ready(url: str, models: list[str], timeout_s: float,
                            process: asyncio.subprocess.Process | None = None) -> None:
    """Poll until the server is ready and every model in `models` is ready, or raise."""
    client = grpcclient.InferenceServerClient(url)
    deadline = time.monotonic() + timeout_s
    last_error = "not ready"
    try:
        while time.monotonic() < deadline:
            if process is not None and process.returncode is not None:
                raise TritonStartError(f"tritonserver exited with code {process.returncode}")
            try:
                if await client.is_server_ready():
                    waiting = [m for m in models if not await client.is_model_ready(m)]
                    if not waiting:
                        return
                    last_error = f"models not ready: {', '.join(waiting)}"
            except Exception as exc:  # still starting: connection refused and the like
                last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            await asyncio.sleep(READY_POLL_S)
    finally:
        await client.close()
    raise TritonStartError(f"Triton at {url} not ready after {timeout_s:.0f} s: {last_error}")
