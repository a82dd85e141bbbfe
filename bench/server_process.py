"""The livehuman server as its own process, as users run it: benchmarks measure its CPU apart
from the clients', and the clients' decoding does not compete with it for the event loop."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (the orchestrator, tritonserver, python-backend stubs)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue += [int(p) for p in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                pass
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds these processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def process_role(pid: int) -> str:
    """What a process of the server's tree is: `orchestrator` (the root, or a worker of
    `--workers N`), `tritonserver`, or the Triton model a python-backend stub serves (its
    first argument is the model's `model_repository/<model>/<version>/model.py`)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    if comm == "tritonserver":
        return "tritonserver"
    if comm.startswith("triton_python") and len(argv) > 1:
        return Path(argv[1].decode(errors="replace")).parent.parent.name
    return "orchestrator"


def cpu_seconds_by_role(root: int) -> dict[str, float]:
    """user + system CPU seconds so far of the server's tree, by `process_role`."""
    seconds: dict[str, float] = {}
    for pid in process_tree(root):
        role = process_role(pid)
        seconds[role] = seconds.get(role, 0.0) + cpu_seconds([pid])
    return seconds


def memory_kib(pids: list[int]) -> dict[str, int]:
    """Summed RSS and PSS (KiB) of these processes. PSS (/proc/PID/smaps_rollup) splits pages
    shared between them (libraries, Triton's shared-memory tensors) instead of counting them
    once per process; where the kernel has no smaps_rollup, PSS is reported as RSS."""
    rss = pss = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pid_rss = next((int(line.split()[1]) for line in status.splitlines()
                        if line.startswith("VmRSS:")), 0)
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            pid_pss = next(int(line.split()[1]) for line in rollup.splitlines()
                           if line.startswith("Pss:"))
        except (FileNotFoundError, ProcessLookupError, PermissionError, StopIteration):
            pid_pss = pid_rss
        rss += pid_rss
        pss += pid_pss
    return {"rss_kib": rss, "pss_kib": pss}


@dataclass
class ServerProcess:
    process: subprocess.Popen
    base_url: str
    triton_url: str

    def cpu_seconds(self) -> float:
        return cpu_seconds(process_tree(self.process.pid))

    def memory_kib(self) -> dict[str, int]:
        return memory_kib(process_tree(self.process.pid))

    def cpu_seconds_by_role(self) -> dict[str, float]:
        return cpu_seconds_by_role(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def start_server(*args: str, timeout: float = 120.0, repo: Path = REPO) -> ServerProcess:
    """`python -m orchestrator` on a free loopback port, ICE on loopback; waits for /healthz.
    `repo`: the checkout whose server runs (another one measures a version before a change)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--host", "127.0.0.1", "--port", str(port),
         "--ice-host", "127.0.0.1", "--log-level", "WARNING", *args],
        cwd=repo,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                async with http.get(f"{base}/healthz") as resp:
                    health = await resp.json() if resp.status == 200 else None
                    # --workers N: every worker up (the host's /healthz counts them).
                    workers = (health or {}).get("data", {}).get("workers",
                                                                 {"up": 1, "count": 1})
                    if health and workers["up"] == workers["count"]:
                        return ServerProcess(process, base, health["data"]["triton"]["url"])
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    process.kill()
    raise TimeoutError(f"server not healthy after {timeout} s")
