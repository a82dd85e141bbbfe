"""`python -m orchestrator` as its own process, as a container runs it: for tests that send it
signals (drain) or run several side by side against one Triton (the Kubernetes topology)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 180.0  # a busy 2-core machine importing librosa, aiortc and av
EXIT_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OrchestratorProcess:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    async def wait_exit(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        """Its exit code; TimeoutError (with the log's tail) while it keeps running."""
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"still running after {timeout_s} s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)
        return self.process.returncode

    def kill(self) -> None:
        """Stop it at once (cleanup after a failed test)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def start_orchestrator(log_path: Path, *args: str, host: str = "127.0.0.1",
                             port: int | None = None,
                             timeout_s: float = STARTUP_TIMEOUT_S) -> OrchestratorProcess:
    """A server on `host` (a loopback address) and `port` (default: a free one) with ICE on
    loopback, its output in `log_path`; waits until /healthz answers 200."""
    port = port or free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "--host", host, "--port", str(port),
             "--ice-host", "127.0.0.1", *args],
            cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = OrchestratorProcess(process, f"http://{host}:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n"
                                   f"{server.log_tail()}")
            try:
                async with http.get(f"{server.base_url}/healthz") as resp:
                    if resp.status == 200:
                        return server
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.25)
    server.kill()
    raise TimeoutError(f"server not healthy after {timeout_s} s:\n{server.log_tail()}")


async def health(base_url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{base_url}/healthz") as resp:
            return resp.status, await resp.json()


class SSE:
    """A session's /sse events, collected in the background."""

    def __init__(self, base_url: str, sessionid: int) -> None:
        self.events: list[dict] = []
        self._http = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._read(base_url, sessionid))

    async def _read(self, base_url: str, sessionid: int) -> None:
        async with self._http.get(f"{base_url}/sse", params={"sessionid": str(sessionid)}) as resp:
            assert resp.status == 200
            async for line in resp.content:
                if line.startswith(b"data: "):
                    self.events.append(json.loads(line[6:]))

    async def wait_for(self, event: str, timeout_s: float = 60.0, **fields) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for item in self.events:
                if item.get("event") == event and all(item.get(k) == v for k, v in fields.items()):
                    return item
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no '{event}' {fields}; got {self.events}")

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._http.close()
