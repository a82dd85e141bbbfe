"""Lip-sync throughput: the default model and Ultralight (ms per frame) and Wav2Lip 96 / 256
(frames/s), per batch size, per deployment.

`--variants ultralight` times Ultralight (random weights of the real UNet and HuBERT large, or
`--hubert tiny`) exported by `export.ultralight_export`: onnxruntime in this process (HuBERT on
each frame's window, then the UNet) and the ensemble through the embedded Triton over gRPC and
shared memory, at batches 1, 8 and 32; merged into `ultralight.hubert_<size>` of the JSON.

`--variants default` times the project's default model (`lipsync_default`, the procedural ONNX
graph) on the astronaut crop with mel windows from silence to fully open, at batches 1, 8 and 32
(`--batches`): onnxruntime in this process with the session options of the model's
`configs/local.pbtxt` (`intra_op_threads`), and through the embedded Triton with the
orchestrator's own client, over gRPC and over system shared memory (what the orchestrator uses
when Triton is on this host). `--model-dir` times another copy of the model folder (its ONNX,
adapter and configs: e.g. main's, for a before/after pair) and `--label` names the run; the
result is merged into `default_model.<label>` of the JSON, the Wav2Lip results are kept.

Wav2Lip (`--variants 96 256`):

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
`--models NAME ...` times lip-sync models through the embedded Triton only, in ms per frame at
batches 1, 8 and 32 (`--batches`), the orchestrator's own client, random weights: each name is
an entry of `TRITON_MODELS` (its export into the temporary repository and its call), so another
family adds its line there. `musetalk` is the full-size MuseTalk 1.5 (~850 M-weight UNet: its
export takes minutes and ~10 GB of memory), timed per frame through the served ensemble (UNet
step + VAE decoder; the Whisper encoder, once per piece of speech, is timed per 30 s segment);
`musetalk-tiny` the reduced configs (a smoke check). Results go to `models` of the JSON.

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
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.default_lipsync import astronaut_example, loudness_mel_window
from export.wav2lip_export import ONNX_FILE, export_repository, random_inputs
from export.wav2lip_model import random_model
from orchestrator.lipsync.default import DEFAULT_LIPSYNC_MODEL, DefaultLipSyncClient
from orchestrator.lipsync.wav2lip import Wav2LipClient
from orchestrator.triton.server import EmbeddedTriton

RESULTS = Path(__file__).parent / "results"
RESULTS_FILE = RESULTS / "lipsync_throughput.json"
BATCHES = (1, 8, 16, 32, 64)
DEFAULT_BATCHES = (1, 8, 32)
VARIANTS = (96, 256)
DEFAULT_VARIANT = "default"
DEFAULT_MODEL = DEFAULT_LIPSYNC_MODEL
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "model_repository" / DEFAULT_MODEL
DEFAULT_POINT_BUDGET_S = 3.0  # the default model's calls are milliseconds: many per point
DEFAULT_MAX_CALLS = 400
POINT_BUDGET_S = 1.5  # per deployment: keep timing a point until this much time...
MIN_CALLS = 2  # 1 where the budget is 0
MAX_CALLS = 5  # ...or this many calls
SETTLE_S = 1.0  # lets PyTorch's OpenMP threads stop spinning before the next phase
EAGER, ORT_CPU, TRITON, ORT_TRT = "pytorch_eager", "onnxruntime", "triton_grpc", "onnxruntime_tensorrt"
TRITON_SHM = "triton_shared_memory"


Call = Callable[[], Awaitable[object]]


async def time_calls(calls: dict[str, Call], budget_s: float,
                     max_calls: int = MAX_CALLS) -> dict[str, dict]:
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
            sum(map(sum, times.values())) < budget_s * len(calls) and rounds < max_calls):
        for name, call in calls.items():
            started = time.perf_counter()
            await call()
            times[name].append(time.perf_counter() - started)
        rounds += 1
    return {name: {"median_s": statistics.median(t), "calls": len(t)} for name, t in times.items()}


def point(batch: int, timing: dict) -> dict:
    return {"fps": batch / timing["median_s"], "ms_per_call": 1000 * timing["median_s"],
            "calls": timing["calls"]}


def adapter_session(path: Path, providers: list, intra_op_threads: int = 0
                    ) -> ort.InferenceSession:
    """Session options as in model_repository/lipsync_default/1/model.py."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers)


def onnxruntime_call(session: ort.InferenceSession, mel: np.ndarray, face: np.ndarray) -> Call:
    async def call() -> object:
        return session.run(None, {"mel": mel, "face": face})
    return call


def triton_call(clients: dict[str, Wav2LipClient], url: str, model: str, mel: np.ndarray,
                face: np.ndarray) -> Call:
    """The orchestrator's own client for the model (one per model, shared channel)."""
    client = clients.setdefault(model, Wav2LipClient(url, model=model))

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
            clients: dict[str, Wav2LipClient] = {}
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



# --- Ultralight -------------------------------------------------------------------------------
ULTRALIGHT_VARIANT = "ultralight"
ULTRALIGHT_POINT_BUDGET_S = 2.0


async def run_ultralight(batches: tuple[int, ...], hubert_size: str) -> dict:
    """ms per frame of Ultralight (random UNet, random HuBERT of `hubert_size`: 'large' is the
    real one), exported by `python -m export ultralight`: its two graphs in this process with
    onnxruntime, and the ensemble through the embedded Triton over gRPC and shared memory."""
    from export.ultralight_export import TINY_HUBERT
    from export.ultralight_export import export_repository as export_ultralight
    from export.ultralight_model import UltralightAudio, random_hubert, random_unet
    from orchestrator.lipsync.ultralight import CROP_PX, UltralightClient, prepare

    deployments: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lipsync_ultralight_throughput_") as tmp:
        repo = Path(tmp)
        started = time.perf_counter()
        hubert = random_hubert(**(TINY_HUBERT if hubert_size == "tiny" else {}))
        report = export_ultralight(repo / ULTRALIGHT_VARIANT, random_unet(),
                                   UltralightAudio(hubert), max_batch=max(batches))
        export_s = time.perf_counter() - started
        print(f"exported ultralight (HuBERT {hubert_size}) in {export_s:.0f} s", flush=True)
        audio_session = adapter_session(repo / "ultralight_audio" / "1" / ONNX_FILE,
                                        ["CPUExecutionProvider"])
        unet_session = adapter_session(repo / "ultralight_unet" / "1" / ONNX_FILE,
                                       ["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        async with EmbeddedTriton(repo, [ULTRALIGHT_VARIANT]) as server:
            grpc = UltralightClient(server.url, model=ULTRALIGHT_VARIANT)
            shm = UltralightClient(server.url, model=ULTRALIGHT_VARIANT, shared_memory=True)
            try:
                for batch in batches:
                    audio = (0.1 * rng.standard_normal((batch, 10320))).astype(np.float32)
                    face = prepare(rng.integers(0, 256, (batch, CROP_PX, CROP_PX, 3), np.uint8))

                    async def ort_call(audio=audio, face=face) -> object:
                        features = audio_session.run(None, {"audio": audio})[0]
                        return unet_session.run(None, {"face": face, "features": features})

                    async def grpc_call(audio=audio, face=face) -> np.ndarray:
                        return await grpc.infer_face(audio, face)

                    async def shm_call(audio=audio, face=face) -> np.ndarray:
                        return await shm.infer_face(audio, face)

                    timings = await time_calls(
                        {ORT_CPU: ort_call, TRITON: grpc_call, TRITON_SHM: shm_call},
                        ULTRALIGHT_POINT_BUDGET_S if batch <= 8 else 0.0)
                    for name, timing in timings.items():
                        deployments.setdefault(name, {})[str(batch)] = default_point(batch, timing)
                    print(f"ultralight batch {batch}: " + ", ".join(
                        f"{name} {deployments[name][str(batch)]['ms_per_frame']:.1f}"
                        for name in timings) + " ms/frame", flush=True)
            finally:
                await shm.close()
                await grpc.close()
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "onnxruntime": ort.__version__, "device": "CPU",
                    "load_average_at_end": os.getloadavg()},
        "hubert": hubert_size, "export_s": export_s,
        "parity": {"unet": report.parity_unet, "audio": report.parity_audio},
        "unit": "ms per frame: median seconds per call / batch (HuBERT on each frame's window, "
                "then the UNet; the deployments alternate call by call)",
        "weights": "random, real architecture (export.ultralight_model)",
        "batches": list(batches),
        "deployments": deployments,
    }


# --- any lip-sync model through Triton (--models) --------------------------------------------
@dataclass(frozen=True)
class TritonModelBench:
    """One `--models` entry: `export(repo)` writes its Triton folders into `repo` and returns
    the model names to wait for; `calls(url, batch)` returns {part: (call, frames per call)}
    and a close."""

    export: Callable[[Path], list[str]]
    calls: Callable[[str, int], tuple[dict[str, tuple[Call, int]], Callable[[], Awaitable]]]


def _musetalk_export(tiny: bool) -> Callable[[Path], list[str]]:
    def export(repo: Path) -> list[str]:
        from export import musetalk_configs as mc
        from export.musetalk_export import build_models, export_repository

        models = (build_models(mc.TINY_UNET, mc.TINY_VAE, mc.TINY_WHISPER) if tiny else
                  build_models(mc.MUSETALK_UNET, mc.SD_VAE_FT_MSE, mc.WHISPER_TINY))
        report = export_repository(repo / "musetalk", models, max_batch=64, tensorrt=False)
        print(f"exported musetalk{'-tiny' if tiny else ''}: parity {report.parity_fp32}",
              flush=True)
        return ["musetalk", "musetalk_audio"]
    return export


def _musetalk_calls(url: str, batch: int):
    from orchestrator.lipsync.musetalk import MuseTalkClient

    client = MuseTalkClient(url, "musetalk", timeout_s=600.0)
    metadata: dict = {}

    async def frames() -> np.ndarray:
        if "window" not in metadata:
            inputs = await client.input_shapes()
            metadata["window"] = inputs["whisper"][1]
        rng = np.random.default_rng(batch)
        latents = rng.normal(size=(batch, 8, 32, 32)).astype(np.float32)
        whisper = rng.normal(size=(batch, metadata["window"], 384)).astype(np.float32)
        return await client.infer_face(latents, whisper)

    async def audio() -> np.ndarray:
        if "layers" not in metadata:
            metadata["layers"] = (await client.input_shapes())["whisper"][1] // 10
        mel = np.random.default_rng(0).uniform(-1, 1, (1, 80, 3000)).astype(np.float32)
        return await client.audio.infer_tensors({"mel": mel}, "hidden",
                                                (1, 1500, metadata["layers"], 384))

    calls = {"frames": (frames, batch)}
    if batch == 1:  # once: the encoder's cost does not depend on the frame batch
        calls["audio_encoder_per_30s"] = (audio, 1)
    return calls, client.close


TRITON_MODELS: dict[str, TritonModelBench] = {
    "musetalk": TritonModelBench(_musetalk_export(tiny=False), _musetalk_calls),
    "musetalk-tiny": TritonModelBench(_musetalk_export(tiny=True), _musetalk_calls),
}


async def run_models(names: list[str], batches: tuple[int, ...]) -> dict:
    """ms per frame of each model through the embedded Triton (one call after another)."""
    out: dict = {}
    for name in names:
        bench = TRITON_MODELS[name]
        with tempfile.TemporaryDirectory(prefix=f"lipsync_{name}_") as tmp:
            repo = Path(tmp)
            started = time.perf_counter()
            models = await asyncio.get_running_loop().run_in_executor(None, bench.export, repo)
            entry = out[name] = {"export_s": time.perf_counter() - started, "ms_per_frame": {}}
            async with EmbeddedTriton(repo, models, timeout_s=600) as server:
                for batch in batches:
                    calls, close = bench.calls(server.url, batch)
                    try:
                        budget = POINT_BUDGET_S if batch <= 8 else 0.0
                        timings = await time_calls({k: c for k, (c, _) in calls.items()}, budget,
                                                   MAX_CALLS)
                    finally:
                        await close()
                    for part, timing in timings.items():
                        frames = calls[part][1]
                        key = "ms_per_frame" if part == "frames" else part
                        entry.setdefault(key, {})[str(batch)] = \
                            1000 * timing["median_s"] / frames
                    print(f"{name} batch {batch}: {entry['ms_per_frame'][str(batch)]:.1f} "
                          "ms/frame through Triton", flush=True)
    return {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "onnxruntime": ort.__version__, "device": "CPU",
                        "load_average_at_end": os.getloadavg()},
            "unit": "ms per frame: median seconds per call / batch, through the embedded Triton "
                    "(python-backend onnxruntime adapters), the orchestrator's client",
            "weights": "random, real architecture", "batches": list(batches), "models": out}


def models_table(result: dict) -> str:
    batches = result["batches"]
    lines = ["\nLip-sync models through Triton (ms per frame)",
             "| model | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---" * (len(batches) + 1) + "|"]
    for name, entry in result["models"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{entry['ms_per_frame'][str(b)]:.1f}" if str(b) in entry["ms_per_frame"] else "-"
            for b in batches) + " |")
        for part, points in entry.items():
            if part not in ("ms_per_frame", "export_s"):
                lines.append(f"| {name} {part} (ms) | " + " | ".join(
                    f"{v:.1f}" for v in points.values()) + " |")
    return "\n".join(lines)


# --- the default model ------------------------------------------------------------------------
def local_intra_op_threads(model_dir: Path) -> int:
    """The `intra_op_threads` parameter of the model's configs/local.pbtxt (0 when absent)."""
    text = (model_dir / "configs" / "local.pbtxt").read_text()
    found = re.search(r'key:\s*"intra_op_threads"\s*value:\s*\{\s*string_value:\s*"(\d+)"', text)
    return int(found.group(1)) if found else 0


def default_inputs(batch: int) -> dict[str, np.ndarray]:
    """The astronaut's crop and mouth, mel windows from silence to fully open (speech-like mix)."""
    face, mouth = astronaut_example()
    loudness = np.linspace(0.0, 1.0, batch) if batch > 1 else np.array([0.6])
    return {"mel": np.stack([loudness_mel_window(x) for x in loudness]),
            "face": np.ascontiguousarray(np.repeat(face[None], batch, axis=0)),
            "mouth": np.ascontiguousarray(np.repeat(mouth[None], batch, axis=0))}


def default_point(batch: int, timing: dict) -> dict:
    return {"ms_per_frame": 1000 * timing["median_s"] / batch,
            "ms_per_call": 1000 * timing["median_s"], "calls": timing["calls"]}


async def run_default(model_dir: Path, batches: tuple[int, ...]) -> dict:
    """ms per frame of the default model in `model_dir`, onnxruntime and Triton alternating."""
    threads = local_intra_op_threads(model_dir)
    deployments: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lipsync_default_throughput_") as tmp:
        repo = Path(tmp)
        shutil.copytree(model_dir, repo / DEFAULT_MODEL, symlinks=False)
        session = adapter_session(repo / DEFAULT_MODEL / "1" / ONNX_FILE,
                                  ["CPUExecutionProvider"], threads)
        async with EmbeddedTriton(repo, [DEFAULT_MODEL]) as server:
            grpc = DefaultLipSyncClient(server.url, model=DEFAULT_MODEL)
            shm = DefaultLipSyncClient(server.url, model=DEFAULT_MODEL, shared_memory=True)
            try:
                for batch in batches:
                    feeds = default_inputs(batch)

                    async def ort_call(feeds=feeds) -> object:
                        return session.run(None, feeds)

                    async def grpc_call(feeds=feeds) -> np.ndarray:
                        return await grpc.infer(feeds["mel"], feeds["face"], feeds["mouth"])

                    async def shm_call(feeds=feeds) -> np.ndarray:
                        return await shm.infer(feeds["mel"], feeds["face"], feeds["mouth"])

                    timings = await time_calls(
                        {ORT_CPU: ort_call, TRITON: grpc_call, TRITON_SHM: shm_call},
                        DEFAULT_POINT_BUDGET_S, DEFAULT_MAX_CALLS)
                    for name, timing in timings.items():
                        deployments.setdefault(name, {})[str(batch)] = default_point(batch, timing)
                    print(f"{DEFAULT_MODEL} batch {batch}: " + ", ".join(
                        f"{name} {deployments[name][str(batch)]['ms_per_frame']:.3f}"
                        for name in timings) + " ms/frame", flush=True)
            finally:
                await shm.close()
                await grpc.close()
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "onnxruntime": ort.__version__, "device": "CPU",
                    "load_average_at_end": os.getloadavg()},
        "intra_op_threads": threads,
        "unit": "ms per frame: median seconds per call / batch (one call after another; the "
                "deployments alternate call by call)",
        "batches": list(batches),
        "deployments": deployments,
    }


def default_table(runs: dict) -> str:
    lines = [f"\n{DEFAULT_MODEL} (ms per frame)"]
    for label, entry in runs.items():
        batches = entry["batches"]
        lines.append(f"{label}: intra_op_threads {entry['intra_op_threads']}")
        lines.append("| deployment | " + " | ".join(f"batch {b}" for b in batches) + " |")
        lines.append("|---" * (len(batches) + 1) + "|")
        for name, points in entry["deployments"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{points[str(b)]['ms_per_frame']:.3f}" for b in batches) + " |")
    return "\n".join(lines)


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
    parser.add_argument("--variants", nargs="*", default=None,
                        choices=[DEFAULT_VARIANT, ULTRALIGHT_VARIANT] + [str(v) for v in VARIANTS],
                        help="Wav2Lip sizes, the default model and/or ultralight (default: 96 256, "
                             "unless --models is given)")
    parser.add_argument("--hubert", choices=["large", "tiny"], default="large",
                        help="Ultralight's HuBERT: the real size, or 1 layer (a quick check)")
    parser.add_argument("--models", nargs="+", default=[], choices=sorted(TRITON_MODELS),
                        help="lip-sync models timed through Triton in ms per frame")
    parser.add_argument("--batches", type=int, nargs="+",
                        help=f"default: {list(BATCHES)} (Wav2Lip), {list(DEFAULT_BATCHES)} "
                             f"({DEFAULT_VARIANT})")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                        help="the default model's folder (config, configs/local.pbtxt, 1/)")
    parser.add_argument("--label", default="after",
                        help="name of the default model's run in the JSON (e.g. before, after)")
    args = parser.parse_args()
    # Merged: a run of one part keeps the figures of the others.
    result = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
    if args.variants is None:
        args.variants = [] if args.models else [str(v) for v in VARIANTS]
    if args.models:
        ran = asyncio.run(run_models(args.models, tuple(args.batches or DEFAULT_BATCHES)))
        merged = result.setdefault("models", {"models": {}})
        merged.update({k: v for k, v in ran.items() if k != "models"})
        merged["models"].update(ran["models"])
        print(models_table(ran))
    wav2lip = tuple(int(v) for v in args.variants if v.isdigit())
    if DEFAULT_VARIANT in args.variants:
        runs = result.setdefault("default_model", {})
        runs[args.label] = asyncio.run(run_default(args.model_dir,
                                                   tuple(args.batches or DEFAULT_BATCHES)))
        print(default_table(runs))
    if ULTRALIGHT_VARIANT in args.variants:
        runs = result.setdefault(ULTRALIGHT_VARIANT, {})
        runs[f"hubert_{args.hubert}"] = entry = asyncio.run(
            run_ultralight(tuple(args.batches or DEFAULT_BATCHES), args.hubert))
        print(default_table({f"ultralight, HuBERT {args.hubert}": entry | {
            "intra_op_threads": 0}}).replace(DEFAULT_MODEL, ULTRALIGHT_VARIANT))
    if wav2lip:
        result.update(asyncio.run(run(wav2lip, tuple(args.batches or BATCHES))))
        print(table(result))
        for note in result["skipped"]:
            print(f"skipped {note}")
    RESULTS.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
