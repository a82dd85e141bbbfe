"""bench/gpu/wav2lip_throughput.py on CPU: the GPU benchmark's smoke check, quick and small.

It runs from a copy of the files it needs (export/ and the script) and must import no
third-party package but torch: the GPU machine has torch and nothing of ours installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the GPU benchmark needs PyTorch (the export extra)")

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path("bench") / "gpu" / "wav2lip_throughput.py"
SESSION_FPS = 25
# Project dependencies the script must not need (torch itself may import numpy).
NOT_NEEDED = ("orchestrator", "onnx", "onnxruntime", "tritonclient", "aiortc", "av", "cv2")

RUNNER = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
loaded = sorted(m for m in {not_needed!r} if m in sys.modules)
assert not loaded, f"imported {{loaded}}"
"""


def test_cpu_smoke_from_a_bare_copy(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "export", copy / "export",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (copy / SCRIPT).parent.mkdir(parents=True)
    shutil.copy(REPO / SCRIPT, copy / SCRIPT)
    output = tmp_path / "gpu_wav2lip.json"
    runner = RUNNER.format(not_needed=NOT_NEEDED)
    done = subprocess.run(
        [sys.executable, "-c", runner, str(copy / SCRIPT), "--device", "cpu", "--batches", "1,2",
         "--iters", "2", "--models", "96", "--rounds", "1", "--warmup", "1",
         "--modes", "eager,graphs", "--output", str(output)],
        cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    model = result["models"]["wav2lip96"]
    assert result["environment"]["device"] == "cpu" and result["dtype"] == "fp32"
    assert result["not_run"] == ["graphs: needs CUDA"]  # reported, and the run went on
    assert list(model["modes"]) == ["eager"]
    assert [r["batch"] for r in model["modes"]["eager"]] == [1, 2]
    assert all(r["frames_per_s"] > 0 and r["calls_per_round"] == 2
               for r in model["modes"]["eager"])
    best = model["best"]
    assert best["frames_per_s"] == max(r["frames_per_s"] for r in model["modes"]["eager"])
    assert best["sessions_at_25fps"] == int(best["frames_per_s"] // SESSION_FPS)
    assert "wav2lip96: " in done.stdout and model["errors"] == {}



MUSETALK_SCRIPT = Path("bench") / "gpu" / "musetalk_throughput.py"


@pytest.mark.slow  # CI: the Wav2Lip script's smoke above (the same harness)
def test_musetalk_cpu_smoke_from_a_bare_copy(tmp_path):
    """bench/gpu/musetalk_throughput.py on CPU, reduced configs: torch, diffusers and
    transformers only (none of the server's dependencies, no onnx)."""
    if importlib.util.find_spec("diffusers") is None:  # not imported here: see test_musetalk
        pytest.skip("the MuseTalk benchmark needs diffusers (the export extra)")
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "export", copy / "export",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (copy / MUSETALK_SCRIPT).parent.mkdir(parents=True)
    for script in (SCRIPT, MUSETALK_SCRIPT):
        shutil.copy(REPO / script, copy / script)
    output = tmp_path / "gpu_musetalk.json"
    runner = RUNNER.format(not_needed=NOT_NEEDED)
    done = subprocess.run(
        [sys.executable, "-c", runner, str(copy / MUSETALK_SCRIPT), "--device", "cpu", "--tiny",
         "--batches", "1,2", "--iters", "1", "--rounds", "1", "--warmup", "1",
         "--modes", "eager,graphs", "--output", str(output)],
        cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    model = result["models"]["musetalk_tiny"]
    assert result["not_run"] == ["graphs: needs CUDA"]
    assert [r["batch"] for r in model["modes"]["eager"]] == [1, 2]
    assert model["best"]["sessions_at_25fps"] == int(model["best"]["frames_per_s"] // SESSION_FPS)
    assert model["audio_encoder"]["ms_per_segment"] > 0 and model["errors"] == {}
