"""Wav2Lip 96 and 256 frames per second on one GPU with PyTorch, by batch size and execution mode.

Random weights of the real architecture (export/wav2lip_model.py, BatchNorm folded into the
convolutions as onnxruntime and TensorRT fold it), fp16 on CUDA. Modes, each guarded (one that
fails is reported and the run goes on):
- `eager`: the module called batch after batch;
- `graphs`: the same module captured once per batch size in a CUDA graph and replayed (no
  kernel launch overhead: what matters at small batches);
- `graphs_cl`: CUDA graphs with channels-last tensors (NHWC: what cuDNN's fp16 tensor-core
  convolutions want; saves their layout transposes);
- `compile`: torch.compile (inductor, batch dimension dynamic: one compilation per model, and
  one for batch 1, which PyTorch always specialises; compile time is in a row's `measure_s`);
- `compile_graphs`: the compiled module captured in CUDA graphs.

Each measurement: warm-up calls, then `--rounds` rounds of back-to-back calls between two
`torch.cuda.synchronize()`; frames/s is the median round's; peak memory is what PyTorch's
allocator held at most for that measurement. Sessions per GPU at 25 fps = the best frames/s of
a model / 25 (every session needs 25 lip-synced frames a second while it talks).

Needs only torch and a copy of this repository (no Triton, TensorRT or project dependencies):

    python3 bench/gpu/wav2lip_throughput.py                      # CUDA, all modes, b1..b128
    python3 bench/gpu/wav2lip_throughput.py --device cpu --batches 1,2 --iters 2   # smoke

JSON goes to $OUT/gpu_wav2lip.json when $OUT is set (the device machine), else
bench/results/gpu_wav2lip.json (or --output). `--budget` (seconds, default 420) skips what would
start after it, so a run on an H100/H200 ends within the device tool's limits.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # export/ of this checkout, importable without installing it

import torch  # noqa: E402

from export.wav2lip_configs import (  # noqa: E402
    FACE_CHANNELS,
    FACE_SIZES_PX,
    MEL_BINS,
    MEL_WINDOW_FRAMES,
)
from export.wav2lip_model import fused_for_inference, random_model  # noqa: E402

# Frames a session needs per second (orchestrator/media/clock.py VIDEO_FPS; not imported: the
# GPU machine has torch and nothing else of ours installed).
SESSION_FPS = 25
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
CUDA_MODES = ("eager", "graphs", "graphs_cl", "compile", "compile_graphs")
CPU_MODES = ("eager",)  # CUDA graphs need CUDA; compiling for CPU is not what this measures
GRAPH_MODES = {"graphs", "graphs_cl", "compile_graphs"}
DEFAULT_WARMUP_CALLS = 3
DEFAULT_ROUNDS = 3
ROUND_TARGET_S = 0.25  # without --iters: calls per round sized to about this long
MAX_CALLS_PER_ROUND = 1000
DEFAULT_BUDGET_S = 420.0
COMPILE_RESERVE_S = 120.0  # a compile mode starts only with this much budget left
GRAPH_WARMUP_CALLS = 3  # on a side stream before capture, as torch.cuda.graphs asks
BYTES_PER_MIB = 1024 * 1024


def inputs(batch: int, face_px: int, device: torch.device, dtype: torch.dtype,
           channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """mel [B,1,80,16] and face [B,6,S,S] of random values in the model's input ranges."""
    mel = torch.rand(batch, 1, MEL_BINS, MEL_WINDOW_FRAMES, device=device, dtype=dtype) * 8 - 4
    face = torch.rand(batch, FACE_CHANNELS, face_px, face_px, device=device, dtype=dtype)
    if channels_last:
        mel, face = (t.contiguous(memory_format=torch.channels_last) for t in (mel, face))
    return mel, face


def captured(module: Callable, mel: torch.Tensor, face: torch.Tensor) -> Callable[[], object]:
    """A CUDA graph of one call of `module` on these (static) inputs; returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP_CALLS):
            module(mel, face)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        module(mel, face)
    return graph.replay


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(call: Callable[[], object], device: torch.device, warmup: int, rounds: int,
               iters: int | None) -> tuple[float, int]:
    """(median seconds per call over the rounds, calls per round)."""
    for _ in range(warmup):
        call()
    synchronize(device)
    if iters is None:
        t0 = time.perf_counter()
        call()
        synchronize(device)
        once = time.perf_counter() - t0
        iters = max(1, min(MAX_CALLS_PER_ROUND, int(ROUND_TARGET_S / max(once, 1e-6))))
    per_call = []
    for _ in range(rounds):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            call()
        synchronize(device)
        per_call.append((time.perf_counter() - t0) / iters)
    return statistics.median(per_call), iters


def build(face_px: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    model = fused_for_inference(random_model(face_px))
    return model.to(device=device, dtype=dtype).eval()


def measure(module: Callable, mode: str, batch: int, face_px: int, device: torch.device,
            dtype: torch.dtype, args: argparse.Namespace) -> dict:
    channels_last = mode == "graphs_cl"
    mel, face = inputs(batch, face_px, device, dtype, channels_last)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with torch.no_grad():  # one grad mode for all: the compiled module's guards hold
        if mode in GRAPH_MODES:
            call = captured(module, mel, face)
        else:
            def call():
                return module(mel, face)
        seconds, iters = time_calls(call, device, args.warmup, args.rounds, args.iters)
    row = {"batch": batch, "frames_per_s": batch / seconds, "ms_per_call": seconds * 1000,
           "calls_per_round": iters, "measure_s": time.perf_counter() - started}
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB
    del call
    return row


def module_for(mode: str, model: torch.nn.Module, cache: dict) -> Callable:
    """The callable a mode times: the model, a channels-last copy, or its compiled form (one
    per model, shared by `compile` and `compile_graphs`; it compiles on its first calls)."""
    if mode == "graphs_cl":
        if "channels_last" not in cache:
            cache["channels_last"] = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return cache["channels_last"]
    if mode in ("compile", "compile_graphs"):
        if "compiled" not in cache:
            cache["compiled"] = torch.compile(model, dynamic=True)
        return cache["compiled"]
    return model


def run(models: dict[int, torch.nn.Module], modes: list[str], device: torch.device,
        dtype: torch.dtype, args: argparse.Namespace, deadline: float, result: dict) -> None:
    """Every mode for every model, modes outermost: the cheap modes of both models are done
    before a compile can use up the budget."""
    caches: dict[int, dict] = {face_px: {} for face_px in models}
    for mode in modes:
        for face_px, model in models.items():
            entry = result["models"][f"wav2lip{face_px}"]
            rows = entry["modes"].setdefault(mode, [])
            if mode.startswith("compile") and time.perf_counter() > deadline - COMPILE_RESERVE_S:
                entry["skipped"].append(f"{mode}: under {COMPILE_RESERVE_S:.0f} s of budget left")
                continue
            try:
                module = module_for(mode, model, caches[face_px])
                for batch in args.batches:
                    if time.perf_counter() > deadline:
                        entry["skipped"].append(f"{mode} b{batch}: over the time budget")
                        continue
                    t0 = time.perf_counter()
                    row = measure(module, mode, batch, face_px, device, dtype, args)
                    rows.append(row)
                    print(f"wav2lip{face_px} {mode:>14} b{batch:<4} {row['frames_per_s']:10.1f} "
                          f"frames/s  {row['ms_per_call']:8.2f} ms/call"
                          + (f"  peak {row['peak_memory_mib']:8.0f} MiB"
                             if "peak_memory_mib" in row else "")
                          + f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
            except Exception as exc:  # a mode that does not work here is reported, not fatal
                entry["errors"][mode] = f"{type(exc).__name__}: {exc}"
                print(f"wav2lip{face_px} {mode}: FAILED {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc(limit=3)
                if mode.startswith("compile"):
                    caches[face_px].pop("compiled", None)
                    torch._dynamo.reset()


def best_of(entry: dict) -> dict | None:
    best = max(((mode, row) for mode, rows in entry["modes"].items() for row in rows),
               key=lambda item: item[1]["frames_per_s"], default=None)
    if best is None:
        return None
    mode, row = best
    return {"mode": mode, "batch": row["batch"], "frames_per_s": row["frames_per_s"],
            "peak_memory_mib": row.get("peak_memory_mib"),
            "sessions_at_25fps": int(row["frames_per_s"] // SESSION_FPS)}


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"gpu": props.name, "gpu_memory_mib": props.total_memory // BYTES_PER_MIB,
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env


def default_output() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu_wav2lip.json" if out else REPO / "bench" / "results" / "gpu_wav2lip.json"


def settle_device(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  cuda_modes: tuple[str, ...], cpu_modes: tuple[str, ...] = CPU_MODES) -> None:
    """Checks `--device` and fills `--modes` and `--dtype` from it: on CUDA every one of
    `cuda_modes` and fp16 unless given, on CPU `cpu_modes` and fp32. parser.error (exit 2) for
    CUDA asked where there is none, or a mode outside `cuda_modes`."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available here: use --device cpu")
    args.modes = args.modes.split(",") if args.modes else list(
        cuda_modes if device.type == "cuda" else cpu_modes)
    if set(args.modes) - set(cuda_modes):
        parser.error(f"--modes: of {','.join(cuda_modes)}")
    args.dtype = args.dtype or ("fp16" if device.type == "cuda" else "fp32")


def start_run(args: argparse.Namespace) -> tuple[float, torch.device, torch.dtype, list[str]]:
    """(deadline: time.perf_counter() seconds after which no measurement starts, the device,
    the dtype, the modes that can run there: CUDA graphs only on CUDA) for settled `args`."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    modes = [m for m in args.modes if device.type == "cuda" or m not in GRAPH_MODES]
    return (time.perf_counter() + args.budget, device,
            torch.float16 if args.dtype == "fp16" else torch.float32, modes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--models", default=",".join(map(str, FACE_SIZES_PX)),
                        help="face sizes, of 96,256 (default both)")
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)),
                        help="batch sizes (default 1,2,4,...,128)")
    parser.add_argument("--modes", default=None,
                        help=f"of {','.join(CUDA_MODES)} (default: all on CUDA, "
                        f"{','.join(CPU_MODES)} on CPU)")
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default=None,
                        help="default fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--iters", type=int, default=None,
                        help=f"calls per timed round (default: about {ROUND_TARGET_S} s worth)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP_CALLS)
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds after which no new measurement starts (default 420)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default $OUT/gpu_wav2lip.json, else bench/results/)")
    args = parser.parse_args(argv)
    try:
        args.models = [int(x) for x in args.models.split(",")]
        args.batches = [int(x) for x in args.batches.split(",")]
    except ValueError:
        parser.error("--models and --batches take comma-separated integers")
    if set(args.models) - set(FACE_SIZES_PX):
        parser.error(f"--models: face sizes of {FACE_SIZES_PX}")
    if min(args.batches) < 1 or (args.iters is not None and args.iters < 1) or args.rounds < 1:
        parser.error("--batches, --iters and --rounds must be >= 1")
    settle_device(parser, args, CUDA_MODES)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline, device, dtype, modes = start_run(args)
    result = {"benchmark": "gpu_wav2lip", "environment": environment(device),
              "dtype": args.dtype, "batches": args.batches, "session_fps": SESSION_FPS,
              "not_run": [f"{m}: needs CUDA" for m in args.modes if m not in modes],
              "models": {}}
    models = {}
    for face_px in args.models:
        t0 = time.perf_counter()
        models[face_px] = build(face_px, device, dtype)
        result["models"][f"wav2lip{face_px}"] = {
            "face_px": face_px, "layout": models[face_px].variant.name,
            "build_s": time.perf_counter() - t0, "modes": {}, "errors": {}, "skipped": []}
    run(models, modes, device, dtype, args, deadline, result)
    for entry in result["models"].values():
        entry["best"] = best_of(entry)
    result["total_s"] = time.perf_counter() - started
    output = args.output or default_output()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"\nsessions per {result['environment'].get('gpu', device)} at {SESSION_FPS} fps "
          f"({args.dtype}):")
    for name, model in result["models"].items():
        best = model["best"]
        print(f"  {name}: " + (f"{best['sessions_at_25fps']} sessions ({best['frames_per_s']:.0f} "
                               f"frames/s, {best['mode']}, batch {best['batch']})"
                               if best else "no measurement")
              + (f"; failed: {model['errors']}" if model["errors"] else ""))
    print(f"total {result['total_s']:.0f} s; JSON: {output}")
    return result


if __name__ == "__main__":
    main()
