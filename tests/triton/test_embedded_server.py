"""The embedded Triton (triton/server.py, triton/process.py): readiness, the local configs, start
failures, and a process lifetime that leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc.aio as grpcclient
from conftest import LIPSYNC_MODEL, MODEL_REPOSITORY, TTS_MODEL
from tiny_lipsync import TINY_MODEL

from orchestrator.triton.server import EmbeddedTriton, TritonStartError, wait_models_ready

PROJECT_ROOT = MODEL_REPOSITORY.parent


PROCESS_GONE_TIMEOUT_S = 10.0


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _wait_gone(pids: list[int], timeout_s: float = PROCESS_GONE_TIMEOUT_S) -> list[int]:
    """The pids still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


async def test_server_ready_and_models_listed(triton):
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        index = await client.get_model_repository_index(as_json=True)
        states = {m["name"]: m.get("state") for m in index["models"]}
        assert states[TTS_MODEL] == "READY"
        assert LIPSYNC_MODEL in states
        for model in triton.models:
            assert await client.is_model_ready(model)
        # tts_espeak has only config.pbtxt: --model-config-name=local falls back to it
        tts_config = (await client.get_model_config(TTS_MODEL, as_json=True))["config"]
        assert tts_config["backend"] == "python" and tts_config.get("max_batch_size", 0) == 0
    finally:
        await client.close()
    with urllib.request.urlopen(f"{triton.http_url}/v2/health/ready", timeout=5) as response:
        assert response.status == 200
    assert triton.url.startswith("127.0.0.1:")


async def test_local_config_selected_over_container_config(tiny_triton):
    """config.pbtxt says onnxruntime_onnx; the embedded server reads configs/local.pbtxt."""
    client = grpcclient.InferenceServerClient(tiny_triton.url)
    try:
        config = (await client.get_model_config(TINY_MODEL, as_json=True))["config"]
    finally:
        await client.close()
    assert config["backend"] == "python" and config.get("platform", "") == ""
    assert config["max_batch_size"] == 64 and "dynamic_batching" in config
    assert [i["name"] for i in config["input"]] == ["mel", "face", "mouth"]


async def test_wait_models_ready_reports_missing_model(triton):
    with pytest.raises(TritonStartError, match="not in the model repository: nope"):
        await wait_models_ready(triton.url, [TTS_MODEL, "nope"], timeout_s=10)
    await wait_models_ready(triton.url, [TTS_MODEL], timeout_s=10)


async def test_stop_ends_server_and_stubs(tiny_repository):
    server = EmbeddedTriton(tiny_repository, [TINY_MODEL])
    await server.start()
    pid = server.pid
    stubs = _children(pid)
    assert stubs, "the python backend runs each model instance in a stub process"
    await server.stop()
    assert not server.running and server.pid is None
    assert _wait_gone([pid, *stubs], timeout_s=2) == []


async def test_start_failure_reports_log_tail(tmp_path):
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n'
                                                  'input [ { name: "x" } ]\n')
    (repo / "broken" / "1" / "model.py").write_text("raise RuntimeError('boom')\n")
    server = EmbeddedTriton(repo, ["broken"], timeout_s=60)
    with pytest.raises(TritonStartError, match="broken") as caught:
        await server.start()
    assert "tritonserver.log (tail)" in str(caught.value)
    assert not server.running


ORPHAN_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from orchestrator.triton.server import EmbeddedTriton

    async def main():
        server = EmbeddedTriton(sys.argv[1], [sys.argv[2]], workdir=sys.argv[3])
        await server.start()
        print(server.pid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
""")


@pytest.mark.timeout(120)
def test_killed_parent_leaves_no_orphan(tiny_repository, tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(tiny_repository), TINY_MODEL,
         str(tmp_path / "work")],
        stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT,
    )
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the child did not start a server: {line!r}"
        server_pid = int(line)
        stubs = _children(server_pid)
        assert _alive(server_pid) and stubs
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        survivors = _wait_gone([server_pid, *stubs])
        assert survivors == [], f"still running after the parent was killed: {survivors}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    log = (tmp_path / "work" / "tritonserver.log").read_text()
    assert TINY_MODEL in log


FORK_UNDER_BLAS = """
import subprocess, threading
import numpy as np
from orchestrator.triton.server import single_threaded_blas
single_threaded_blas()
stop = threading.Event()
def work():
    a, b = np.ones((80, 513), np.float32), np.ones((513, 400), np.float32)
    while not stop.is_set():
        a @ b  # a session's mel features, in an executor thread
threading.Thread(target=work, daemon=True).start()
for _ in range(200):  # each one a fork with a preexec_fn, as tritonserver is started
    subprocess.run(["true"], preexec_fn=lambda: None, check=True)
stop.set()
"""


def test_forking_the_server_while_another_thread_does_blas_work_does_not_hang():
    """A Triton restart under talking sessions forked while an executor thread was inside a
    multi-threaded OpenBLAS call: OpenBLAS's fork handler waited for its workers for ever and the
    whole orchestrator hung. Run in a fresh interpreter (numpy's default threads)."""
    result = subprocess.run([sys.executable, "-c", FORK_UNDER_BLAS], timeout=120,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "2"})
    assert result.returncode == 0
