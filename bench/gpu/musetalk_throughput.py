"""MuseTalk 1.5 frames per second on one GPU with PyTorch, by batch size and execution mode.

One frame is what a session's tick costs MuseTalk: the UNet step (latents [8,32,32] and the
Whisper window [50,384] with MuseTalk's positional encoding, timestep 0) then the VAE decoder to
the 256 x 256 crop: the served `musetalk` ensemble (export/musetalk_export.py). The Whisper
encoder runs once per piece of speech (30 s of audio in one call), not per frame: it is timed
apart, per second of speech. Random weights of the real architecture (diffusers'
UNet2DConditionModel from MuseTalk's musetalk.json, AutoencoderKL of sd-vae-ft-mse,
transformers' WhisperEncoder of whisper-tiny: export/musetalk_configs.py), fp16 on CUDA. Modes:
`eager` and `graphs` (one CUDA graph per batch size), each guarded (one that fails is reported
and the run goes on). Measurements as bench/gpu/wav2lip_throughput.py's (its helpers):
warm-up calls, `--rounds` rounds between two synchronizes, the median round; sessions per GPU
at 25 fps = the best frames/s / 25.

Needs torch, diffusers and transformers (the export extra) and a copy of this repository. The
device machine has torch only and no network: install the other two beside the checkout first
(`pip install --target .gpu_deps diffusers transformers --no-deps` plus their pure-Python
dependencies not on that machine) and carry `.gpu_deps`, with `PYTHONPATH=.gpu_deps`.

    python3 bench/gpu/musetalk_throughput.py                       # CUDA, fp16, b1..b64
    python3 bench/gpu/musetalk_throughput.py --device cpu --tiny --batches 1,2 --iters 1  # smoke

JSON goes to $OUT/gpu_musetalk.json when $OUT is set, else bench/results/gpu_musetalk.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # export/ of this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the Wav2Lip bench's helpers

import torch  # noqa: E402
import wav2lip_throughput as shared  # noqa: E402

from export import musetalk_configs as configs  # noqa: E402
from export.musetalk_export import build_models, wrappers  # noqa: E402

SESSION_FPS = shared.SESSION_FPS
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64)
CUDA_MODES = ("eager", "graphs")
CPU_MODES = ("eager",)
DEFAULT_BUDGET_S = 420.0
SPEECH_S = 30  # the audio encoder's input: 30 s


class FrameStep(torch.nn.Module):
    """The ensemble's work for a batch of frames: UNet step, then the VAE decoder."""

    def __init__(self, unet: torch.nn.Module, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.decoder = unet, decoder

    def forward(self, latents, whisper):
        return self.decoder(self.unet(latents, whisper))


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    models = (build_models(configs.TINY_UNET, configs.TINY_VAE, configs.TINY_WHISPER) if tiny
              else build_models(configs.MUSETALK_UNET, configs.SD_VAE_FT_MSE,
                                configs.WHISPER_TINY))
    graphs = wrappers(models)
    step = FrameStep(graphs["unet"], graphs["decoder"]).to(device=device, dtype=dtype).eval()
    audio = graphs["audio"].to(device=device, dtype=dtype).eval()
    return step, audio, models.hidden_layers


def frame_inputs(batch: int, layers: int, device: torch.device, dtype: torch.dtype):
    latents = torch.randn(batch, configs.UNET_IN_CHANNELS, configs.LATENT_PX, configs.LATENT_PX,
                          device=device, dtype=dtype)
    whisper = torch.randn(batch, configs.WHISPER_WINDOW_POSITIONS * layers, configs.WHISPER_DIM,
                          device=device, dtype=dtype)
    return latents, whisper


def measure(step, mode: str, batch: int, layers: int, device, dtype, args) -> dict:
    latents, whisper = frame_inputs(batch, layers, device, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with torch.no_grad():
        if mode == "graphs":
            call = shared.captured(step, latents, whisper)
        else:
            def call():
                return step(latents, whisper)
        seconds, iters = shared.time_calls(call, device, args.warmup, args.rounds, args.iters)
    row = {"batch": batch, "frames_per_s": batch / seconds, "ms_per_call": seconds * 1000,
           "calls_per_round": iters, "measure_s": time.perf_counter() - started}
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / shared.BYTES_PER_MIB
    return row


def audio_cost(audio, device, dtype, args) -> dict:
    """Seconds of the Whisper encoder per 30 s segment, and per second of speech."""
    mel = torch.rand(1, configs.WHISPER_MEL_BINS, configs.WHISPER_MEL_FRAMES, device=device,
                     dtype=dtype) * 2 - 1
    with torch.no_grad():
        seconds, iters = shared.time_calls(lambda: audio(mel), device, args.warmup, args.rounds,
                                           args.iters)
    return {"ms_per_segment": seconds * 1000, "ms_per_speech_s": seconds * 1000 / SPEECH_S,
            "calls_per_round": iters}


def default_output() -> Path:
    out = os.environ.get("OUT")
    name = "gpu_musetalk.json"
    return Path(out) / name if out else REPO / "bench" / "results" / name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)))
    parser.add_argument("--modes", default=None, help=f"of {','.join(CUDA_MODES)}")
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default=None,
                        help="default fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=shared.DEFAULT_ROUNDS)
    parser.add_argument("--warmup", type=int, default=shared.DEFAULT_WARMUP_CALLS)
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S)
    parser.add_argument("--tiny", action="store_true", help="the reduced configs (smoke checks)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        args.batches = [int(x) for x in args.batches.split(",")]
    except ValueError:
        parser.error("--batches takes comma-separated integers")
    if min(args.batches) < 1 or args.rounds < 1 or (args.iters is not None and args.iters < 1):
        parser.error("--batches, --iters and --rounds must be >= 1")
    shared.settle_device(parser, args, CUDA_MODES, CPU_MODES)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline, device, dtype, modes = shared.start_run(args)
    name = "musetalk_tiny" if args.tiny else "musetalk"
    result = {"benchmark": "gpu_musetalk", "environment": shared.environment(device),
              "dtype": args.dtype, "batches": args.batches, "session_fps": SESSION_FPS,
              "not_run": [f"{m}: needs CUDA" for m in args.modes if m not in modes],
              "models": {}}
    t0 = time.perf_counter()
    step, audio, layers = build(args.tiny, device, dtype)
    entry = result["models"][name] = {
        "unet_parameters": sum(p.numel() for p in step.unet.parameters()),
        "build_s": time.perf_counter() - t0, "modes": {}, "errors": {}, "skipped": []}
    for mode in modes:
        rows = entry["modes"].setdefault(mode, [])
        try:
            for batch in args.batches:
                if time.perf_counter() > deadline:
                    entry["skipped"].append(f"{mode} b{batch}: over the time budget")
                    continue
                row = measure(step, mode, batch, layers, device, dtype, args)
                rows.append(row)
                print(f"{name} {mode:>6} b{batch:<4} {row['frames_per_s']:9.1f} frames/s "
                      f"{row['ms_per_call']:9.2f} ms/call"
                      + (f"  peak {row['peak_memory_mib']:7.0f} MiB"
                         if "peak_memory_mib" in row else ""), flush=True)
        except Exception as exc:  # reported, the run goes on
            entry["errors"][mode] = f"{type(exc).__name__}: {exc}"
            print(f"{name} {mode}: FAILED {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc(limit=3)
    try:
        entry["audio_encoder"] = audio_cost(audio, device, dtype, args)
    except Exception as exc:
        entry["errors"]["audio_encoder"] = f"{type(exc).__name__}: {exc}"
    entry["best"] = shared.best_of(entry)
    result["total_s"] = time.perf_counter() - started
    output = args.output or default_output()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    best = entry["best"]
    print(f"\n{name}: " + (f"{best['sessions_at_25fps']} sessions per "
                           f"{result['environment'].get('gpu', device)} at {SESSION_FPS} fps "
                           f"({best['frames_per_s']:.1f} frames/s, {best['mode']}, batch "
                           f"{best['batch']}, {args.dtype})" if best else "no measurement"))
    print(f"total {result['total_s']:.0f} s; JSON: {output}")
    return result


if __name__ == "__main__":
    main()
