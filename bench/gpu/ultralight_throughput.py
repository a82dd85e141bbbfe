"""Ultralight frames per second on one GPU with PyTorch, by batch size: its UNet and its HuBERT
audio encoder (each frame's 10320-sample window, as Triton runs it), and the two together.

Random weights of the real architecture (export/ultralight_model.py: the UNet with BatchNorm
folded into the convolutions, as onnxruntime and TensorRT fold it; HuBERT large from
transformers' HubertModel), fp16 on CUDA, at batch 1, 2, 4, ..., 64, in two modes: `eager` and
`graphs` (CUDA graphs, one per batch size). HuBERT needs `transformers`: where it is not
installed (the device machine has torch only) its rows are skipped with the reason, and only
the UNet is measured. Timing, memory and the JSON's shape follow wav2lip_throughput.py (whose
helpers this script uses). Sessions per GPU at 25 fps: the best frames/s of the UNet alone,
and of a whole frame (1 / (1/UNet + 1/HuBERT) at each one's best) when HuBERT ran, / 25.

    python3 bench/gpu/ultralight_throughput.py                     # CUDA, b1..b64
    python3 bench/gpu/ultralight_throughput.py --device cpu --batches 1,2 --iters 2 --hubert tiny

JSON goes to $OUT/gpu_ultralight.json when $OUT is set (the device machine), else
bench/results/gpu_ultralight.json (or --output).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # export/ of this checkout, importable without installing it
sys.path.insert(0, str(HERE))  # wav2lip_throughput's helpers

import torch  # noqa: E402
from torch import nn  # noqa: E402
from wav2lip_throughput import (  # noqa: E402
    BYTES_PER_MIB,
    DEFAULT_BUDGET_S,
    DEFAULT_ROUNDS,
    DEFAULT_WARMUP_CALLS,
    SESSION_FPS,
    best_of,
    environment,
    settle_device,
    start_run,
    synchronize,
    time_calls,
)

from export.ultralight_configs import (  # noqa: E402
    AUDIO_FEATURE_FRAMES,
    AUDIO_WINDOW_SAMPLES,
    FACE_CHANNELS,
    FACE_PX,
    FEATURE_IMAGE,
)
from export.ultralight_model import InvertedResidual, random_unet  # noqa: E402

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64)
CUDA_MODES = ("eager", "graphs")
GRAPH_WARMUP_CALLS = 3
UNET, AUDIO = "ultralight_unet", "ultralight_audio"


def fused_unet(seed: int = 0) -> nn.Module:
    """The UNet with every inverted residual's three conv+BatchNorm pairs folded."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(random_unet(seed)).eval()
    for module in model.modules():
        if isinstance(module, InvertedResidual):
            c = module.conv
            module.conv = nn.Sequential(fuse_conv_bn_eval(c[0], c[1]), c[2],
                                        fuse_conv_bn_eval(c[3], c[4]), c[5],
                                        fuse_conv_bn_eval(c[6], c[7]))
    return model


def build_audio(size: str, seed: int = 0) -> nn.Module:
    """UltralightAudio around HuBERT `size` ('large' or 'tiny'); ImportError without
    transformers."""
    from export.ultralight_configs import TINY_HUBERT
    from export.ultralight_model import UltralightAudio, random_hubert

    return UltralightAudio(random_hubert(seed, **(TINY_HUBERT if size == "tiny" else {}))).eval()


def inputs(name: str, batch: int, device: torch.device, dtype: torch.dtype) -> tuple:
    if name == AUDIO:
        return (0.1 * torch.randn(batch, AUDIO_WINDOW_SAMPLES, device=device, dtype=dtype),)
    return (torch.rand(batch, FACE_CHANNELS, FACE_PX, FACE_PX, device=device, dtype=dtype),
            torch.randn(batch, AUDIO_FEATURE_FRAMES, *FEATURE_IMAGE, device=device, dtype=dtype))


def captured(module: nn.Module, args: tuple):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP_CALLS):
            module(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        module(*args)
    return graph.replay


def measure(name: str, module: nn.Module, mode: str, batch: int, device: torch.device,
            dtype: torch.dtype, args: argparse.Namespace) -> dict:
    feeds = inputs(name, batch, device, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with torch.no_grad():
        call = captured(module, feeds) if mode == "graphs" else (lambda: module(*feeds))
        seconds, iters = time_calls(call, device, args.warmup, args.rounds, args.iters)
    row = {"batch": batch, "frames_per_s": batch / seconds, "ms_per_call": seconds * 1000,
           "calls_per_round": iters, "measure_s": time.perf_counter() - started}
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)))
    parser.add_argument("--modes", default=None, help="of eager,graphs (default: both on CUDA, "
                        "eager on CPU)")
    parser.add_argument("--hubert", choices=["large", "tiny", "none"], default="large",
                        help="HuBERT's size (large: the real one; none: the UNet only)")
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP_CALLS)
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        args.batches = [int(x) for x in args.batches.split(",")]
    except ValueError:
        parser.error("--batches takes comma-separated integers")
    settle_device(parser, args, CUDA_MODES)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline, device, dtype, modes = start_run(args)
    result = {"benchmark": "gpu_ultralight", "environment": environment(device),
              "dtype": args.dtype, "batches": args.batches, "session_fps": SESSION_FPS,
              "hubert": args.hubert,
              "not_run": [f"{m}: needs CUDA" for m in args.modes if m not in modes],
              "models": {}}
    models = {UNET: fused_unet()}
    if args.hubert != "none":
        try:
            models[AUDIO] = build_audio(args.hubert)
        except ImportError as exc:
            result["not_run"].append(f"{AUDIO}: transformers is not installed ({exc})")
    for name, model in list(models.items()):
        models[name] = model.to(device=device, dtype=dtype).eval()
        result["models"][name] = {"modes": {}, "errors": {}, "skipped": []}
    for mode in modes:
        for name, model in models.items():
            entry = result["models"][name]
            rows = entry["modes"].setdefault(mode, [])
            try:
                for batch in args.batches:
                    if time.perf_counter() > deadline:
                        entry["skipped"].append(f"{mode} b{batch}: over the time budget")
                        continue
                    row = measure(name, model, mode, batch, device, dtype, args)
                    rows.append(row)
                    print(f"{name} {mode:>6} b{batch:<3} {row['frames_per_s']:10.1f} frames/s "
                          f"{row['ms_per_call']:8.2f} ms/call", flush=True)
            except Exception as exc:  # reported, the run goes on
                entry["errors"][mode] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc(limit=3)
    for entry in result["models"].values():
        entry["best"] = best_of(entry)
    unet, audio = (result["models"].get(n, {}).get("best") for n in (UNET, AUDIO))
    if unet and audio:
        per_frame = 1.0 / (1.0 / unet["frames_per_s"] + 1.0 / audio["frames_per_s"])
        result["frame"] = {"frames_per_s": per_frame,
                           "sessions_at_25fps": int(per_frame // SESSION_FPS)}
    result["total_s"] = time.perf_counter() - started
    synchronize(device)
    out = os.environ.get("OUT")
    output = args.output or (Path(out) / "gpu_ultralight.json" if out
                             else REPO / "bench" / "results" / "gpu_ultralight.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    for name, entry in result["models"].items():
        best = entry["best"]
        print(f"{name}: " + (f"{best['frames_per_s']:.0f} frames/s ({best['mode']}, batch "
                             f"{best['batch']}): {best['sessions_at_25fps']} sessions"
                             if best else "no measurement"))
    if "frame" in result:
        print(f"whole frame (HuBERT + UNet): {result['frame']['frames_per_s']:.0f} frames/s, "
              f"{result['frame']['sessions_at_25fps']} sessions at {SESSION_FPS} fps")
    print(f"JSON: {output}")
    return result


if __name__ == "__main__":
    main()
