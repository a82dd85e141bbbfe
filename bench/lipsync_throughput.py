"""Wav2Lip throughput: frames/s per batch size, per deployment, for the 96 and 256 generators.

Randomly initialised networks of the real architecture (no weights can be downloaded; the
arithmetic, and so the speed, is the same as with trained ones), exported with
`export.wav2lip_export` into a temporary model repository, then timed one call after another at
each batch size:
- `pytorch_eager`: the PyTorch module, `torch.no_grad()` (the baseline);
- `onnxruntime`: the exported ONNX in this process, CPU provider, configured like the Triton
  adapter (default intra-op threads, no spinning);
- `triton_grpc`: the same ONNX through the embedded Triton (python-backend adapter
  `1/model.py`), one gRPC request of the whole batch at a time;
- `onnxruntime_tensorrt`: onnxruntime's TensorRT provider (fp16), where onnxruntime has it and
  a GPU exists.
Plus the Triton overhead: in-process frames/s divided by Triton frames/s at each batch size; the
in-process and Triton calls alternate, so load from elsewhere on a shared machine hits both alike.
Each point is the median of several timed calls after one warmup call; batches of 16+ of the
256 model get a single call (the run stays within ~5 minutes on 2 CPU cores).
Writes bench/results/lipsync_throughput.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.wav2lip_export import ONNX_FILE, export_repository, random_inputs
from export.wav2lip_model import random_model
from orchestrator.triton_clients import LipSyncClient
from orchestrator.triton_server import EmbeddedTriton

RESULTS = Path(__file__).parent / "results"
BATCHES = (1, 8, 16, 32, 64)
VARIANTS = (96, 256)
POINT_BUDGET_S = 1.5  # per deployment: keep timing a point until this much time...
MIN_CALLS = 2  # 1 where the budget is 0
MAX_CALLS = 5  # ...or this many calls
SETTLE_S = 1.0  # lets PyTorch's OpenMP threads stop spinning before the next phase
EAGER, ORT_CPU, TRITON, ORT_TRT = "pytorch_eager", "onnxruntime", "triton_grpc", "onnxruntime_tensorrt"


Call = Callable[[], Awaitable[object]]


async def time_calls(calls: dict[str, Call], budget_s: float) -> dict[str, dict]:
    """Median seconds per call of each deployment, their calls alternating.

    Alternating pairs the deployments up in time, so load from elsewhere on the machine (it is
    shared) shifts them alike and their ratio stays meaningful. One warmup call each first,
    unless the budget is 0 (calls of many seconds, where a warmup would double the run).
    """
    if budget_s > 0:
        for call in calls.values():
            await call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    rounds = 0
    min_rounds = MIN_CALLS if budget_s > 0 else 1
    while rounds < min_rounds or (
            sum(map(sum, times.values())) < budget_s * len(calls) and rounds < MAX_CALLS):
        for name, call in calls.items():
            started = time.perf_counter()
            await call()
            times[name].append(time.perf_counter() - started)
        rounds += 1
    return {name: {"median_s": statistics.median(t), "calls": len(t)} for name, t in times.items()}


def point(batch: int, timing: dict) -> dict:
    return {"fps": batch / timing["median_s"], "ms_per_call": 1000 * timing["median_s"],
            "calls": timing["calls"]}


def adapter_session(path: Path, providers: list) -> ort.InferenceSession:
    """Session options as in model_repository/lipsync_default/1/model.py."""
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers)


def onnxruntime_call(session: ort.InferenceSession, mel: np.ndarray, face: np.ndarray) -> Call:
    async def call() -> object:
        return session.run(None, {"mel": mel, "face": face})
    return call


def triton_call(clients: dict[str, LipSyncClient], url: str, model: str, mel: np.ndarray,
                face: np.ndarray) -> Call:
    """The orchestrator's own client for the model (one per model, shared channel)."""
    client = clients.setdefault(model, LipSyncClient(url, model=model))

    async def call() -> np.ndarray:
        return await client.infer_face(mel, face)
    return call


def eager_call(model: torch.nn.Module, mel: np.ndarray, face: np.ndarray) -> Call:
    mel_t, face_t = torch.from_numpy(mel), torch.from_numpy(face)

    async def call() -> torch.Tensor:
        with torch.no_grad():
            return model(mel_t, face_t)
    return call


def tensorrt_unavailable() -> str | None:
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no TensorrtExecutionProvider (CPU build) and no GPU here"
    return None


def budget_for(face_px: int, batch: int) -> float:
    # The 256 model is ~9x the work per frame: one call, no warmup, for its big batches (the
    # sessions were warmed by the smaller ones).
    return POINT_BUDGET_S if face_px == 96 or batch <= 8 else 0.0


def record(face_px: int, batch: int, deployments: dict, timings: dict[str, dict]) -> None:
    for name, timing in timings.items():
        deployments.setdefault(name, {})[str(batch)] = point(batch, timing)
    print(f"wav2lip{face_px} batch {batch}: " + ", ".join(
        f"{name} {deployments[name][str(batch)]['fps']:.2f}" for name in timings) + " frames/s",
        flush=True)


async def run(variants: tuple[int, ...], batches: tuple[int, ...]) -> dict:
    trt_reason = tensorrt_unavailable()
    skipped = [f"{ORT_TRT}: {trt_reason}"] if trt_reason else []
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="lipsync_throughput_") as tmp:
        repo = Path(tmp)
        models = {}
        for face_px in variants:
            started = time.perf_counter()
            models[face_px] = random_model(face_px)
            exported = export_repository(repo / f"wav2lip{face_px}", face_px,
                                         model=models[face_px], max_batch=max(batches))
            skipped += [f"{face_px}: {note}" for note in exported.notes]
            result[str(face_px)] = {"parity_fp32_max_abs": exported.parity_fp32,
                                    "export_s": time.perf_counter() - started, "deployments": {}}
            print(f"exported wav2lip{face_px}: parity {exported.parity_fp32:.3g}", flush=True)
        time.sleep(SETTLE_S)

        # onnxruntime in process and through Triton, alternating. PyTorch eager runs afterwards,
        # on its own: its OpenMP threads keep spinning after each call and would slow the others.
        async with EmbeddedTriton(repo, [f"wav2lip{s}" for s in variants]) as server:
            clients: dict[str, LipSyncClient] = {}
            try:
                for face_px in variants:
                    onnx_path = repo / f"wav2lip{face_px}" / "1" / ONNX_FILE
                    sessions = {ORT_CPU: adapter_session(onnx_path, ["CPUExecutionProvider"])}
                    if trt_reason is None:
                        sessions[ORT_TRT] = adapter_session(onnx_path, [
                            ("TensorrtExecutionProvider", {"trt_fp16_enable": True}),
                            "CUDAExecutionProvider"])
                    for batch in batches:
                        mel, face = random_inputs(face_px, batch)
                        calls = {name: onnxruntime_call(s, mel, face)
                                 for name, s in sessions.items()}
                        calls[TRITON] = triton_call(clients, server.url, f"wav2lip{face_px}", mel, face)
                        timings = await time_calls(calls, budget_for(face_px, batch))
                        record(face_px, batch, result[str(face_px)]["deployments"], timings)
                    del sessions
            finally:
                for client in clients.values():
                    await client.close()
        for face_px in variants:
            for batch in batches:
                calls = {EAGER: eager_call(models[face_px], *random_inputs(face_px, batch))}
                timings = await time_calls(calls, budget_for(face_px, batch))
                record(face_px, batch, result[str(face_px)]["deployments"], timings)

    for face_px in variants:
        entry = result[str(face_px)]
        d = entry["deployments"]
        entry["triton_overhead"] = {
            str(b): d[ORT_CPU][str(b)]["fps"] / d[TRITON][str(b)]["fps"] for b in batches}
    return {
        "benchmark": "lipsync_throughput",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "onnxruntime": ort.__version__, "device": "CPU",
                    "load_average_at_end": os.getloadavg()},
        "unit": "frames/s: batch / median seconds per call (one call after another)",
        "triton_overhead_note": "onnxruntime in-process fps / Triton fps (1.0 = no overhead); "
                                "the two alternate call by call",
        "weights": "random, real architecture (export.wav2lip_model.random_model)",
        "batches": list(batches),
        "variants": result,
        "skipped": skipped,
    }


def table(result: dict) -> str:
    lines = []
    for face_px, entry in result["variants"].items():
        deployments = entry["deployments"]
        batches = result["batches"]
        lines.append(f"\nWav2Lip {face_px}x{face_px} (frames/s)")
        lines.append("| deployment | " + " | ".join(f"batch {b}" for b in batches) + " |")
        lines.append("|---" * (len(batches) + 1) + "|")
        for name, points in deployments.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{points[str(b)]['fps']:.1f}" for b in batches) + " |")
        lines.append("| Triton overhead (x) | " + " | ".join(
            f"{entry['triton_overhead'][str(b)]:.2f}" for b in batches) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, nargs="+", default=list(VARIANTS),
                        choices=VARIANTS)
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    args = parser.parse_args()
    result = asyncio.run(run(tuple(args.variants), tuple(args.batches)))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lipsync_throughput.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    for note in result["skipped"]:
        print(f"skipped {note}")


if __name__ == "__main__":
    main()
