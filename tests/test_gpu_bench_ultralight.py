"""bench/gpu/ultralight_throughput.py on CPU: the GPU benchmark's smoke check, quick and small.

It runs from a copy of the files it needs (export/ and bench/gpu/) and, for the UNet, imports no
third-party package but torch: the GPU machine has torch and nothing of ours installed (HuBERT
needs transformers there, and is reported as not run without it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the GPU benchmark needs PyTorch (the export extra)")

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = [Path("bench") / "gpu" / name for name in ("ultralight_throughput.py",
                                                      "wav2lip_throughput.py")]
SESSION_FPS = 25
NOT_NEEDED = ("orchestrator", "onnx", "onnxruntime", "tritonclient", "aiortc", "av", "cv2",
              "transformers")

RUNNER = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
loaded = sorted(m for m in {not_needed!r} if m in sys.modules)
assert not loaded, f"imported {{loaded}}"
"""


@pytest.mark.slow  # CI: tests/test_gpu_bench.py's Wav2Lip smoke (the same harness)
def test_cpu_smoke_of_the_unet_from_a_bare_copy(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "export", copy / "export",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for script in SCRIPTS:
        (copy / script).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / script, copy / script)
    output = tmp_path / "gpu_ultralight.json"
    done = subprocess.run(
        [sys.executable, "-c", RUNNER.format(not_needed=NOT_NEEDED), str(copy / SCRIPTS[0]),
         "--device", "cpu", "--batches", "1,2", "--iters", "1", "--rounds", "1", "--warmup",
         "1", "--hubert", "none", "--modes", "eager,graphs", "--output", str(output)],
        cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["environment"]["device"] == "cpu" and result["dtype"] == "fp32"
    assert result["not_run"] == ["graphs: needs CUDA"]
    unet = result["models"]["ultralight_unet"]
    assert [r["batch"] for r in unet["modes"]["eager"]] == [1, 2]
    assert unet["best"]["sessions_at_25fps"] == int(unet["best"]["frames_per_s"] // SESSION_FPS)
    assert "ultralight_audio" not in result["models"] and "frame" not in result
