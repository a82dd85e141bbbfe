"""`python -m export musetalk`: MuseTalk 1.5's models folder to Triton model folders.

`--models-dir DIR` is MuseTalk's own `models/` layout (LiveTalking uses it too):

    DIR/musetalkV15/unet.pth + musetalk.json    the UNet (diffusers UNet2DConditionModel)
    DIR/sd-vae/config.json + weights            AutoencoderKL (sd-vae-ft-mse)
    DIR/whisper/config.json + weights           Hugging Face whisper-tiny (its encoder)

Weights load whether saved as `*.pth`, `pytorch_model.bin` / `diffusion_pytorch_model.bin` or
safetensors. Without `--models-dir`, random weights of the real architecture (`--tiny`: the
reduced configs of musetalk_configs, for tests).

What MuseTalk does at inference, and where it lives here:

- audio: Whisper's log-mel of (up to) 30 s -> the encoder's hidden states, all of them (the
  embeddings and each layer's output), stacked [1500, L, 384] at 50 a second: `<name>_audio`;
  the windows of 10 positions per video frame (MuseTalk's get_whisper_chunk) are cut by the
  orchestrator (orchestrator/lipsync/musetalk.py);
- UNet: latents [8,32,32] (the VAE latent of the crop with its lower half blacked out, then of the
  whole crop) and the window [50,384] plus MuseTalk's sinusoidal positional encoding, timestep 0,
  one denoising step -> the predicted latent: `<name>_unet` (encoding and timestep inside);
- VAE decoder: latent / 0.18215 -> image, (x / 2 + 0.5) clamped to [0, 1]: `<name>_vae_decoder`;
- VAE encoder (avatar preparation, once per avatar frame): RGB [0, 1] -> the 8-channel latents
  above (the latent distribution's mean x 0.18215; MuseTalk samples it, we take its mean so
  that a build is reproducible): `<name>_vae_encoder`;
- `<name>`: an ensemble of the UNet step and the decoder (what sessions call: one round trip).

Each ONNX is checked against PyTorch on random inputs (onnxruntime, CPU); `--fp16` adds FP16
graphs for the container (FP32 tensors in and out); TensorRT plans where TensorRT and a GPU
exist. Every folder gets the generic onnxruntime adapter and configs/local.pbtxt for the
embedded server.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import musetalk_configs as configs
from .wav2lip_export import (  # one repository layout, one ONNX opset, one plan builder
    ADAPTER,
    ONNX_FILE,
    OPSET,
    PLAN_FILE,
    ExportError,
    build_tensorrt_plan,
    tensorrt_unavailable,
)

if TYPE_CHECKING:  # torch and onnx are imported where used: bench/gpu/ runs with torch only
    import onnx
    import torch

TRACE_BATCH = 1  # traced at 1, checked at PARITY_BATCH: the batch dimension is dynamic
PARITY_BATCH = 2
# Max abs error of onnxruntime against PyTorch, fp32. Outputs: hidden states (O(1..10)),
# latents (O(1)), images in [0, 1].
FP32_TOLERANCE = {"audio": 2e-3, "unet": 2e-3, "decoder": 1e-3, "encoder": 2e-3}
FP16_TOLERANCE = {"audio": 0.15, "unet": 0.1, "decoder": 3e-2, "encoder": 0.1}
ONNX_FP16_FILE = "model_fp16.onnx"
EXTERNAL_DATA_SUFFIX = ".data"
PROTOBUF_LIMIT_BYTES = 2_000_000_000  # larger graphs keep their weights in one external file
WEIGHT_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin",
                "diffusion_pytorch_model.bin", "unet.pth")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
DATA_PARALLEL_PREFIX = "module."


class CheckpointError(ExportError):
    pass


# --- checkpoints --------------------------------------------------------------------------------
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `path`: safetensors, or a torch file (loaded weights_only, on CPU:
    weights saved from CUDA tensors load here too), bare or under "state_dict", with or
    without DataParallel's `module.` prefix. CheckpointError names what is wrong."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is not a weights file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded or not all(
            isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    return {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in loaded.items()}


def weights_file(folder: Path) -> Path:
    """The weights in a model folder: the usual names first, else the one weights file."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES) \
        if folder.is_dir() else []
    if len(found) != 1:
        raise CheckpointError(f"{folder}: expected one weights file ({', '.join(WEIGHT_NAMES)} "
                              f"or one *.safetensors/*.bin/*.pth), found {len(found)}")
    return found[0]


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except ValueError as exc:
        raise CheckpointError(f"{path} is not JSON ({exc})") from None


def _load_strict(module: torch.nn.Module, state: dict, what: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{len(x)} {label}: {', '.join(x[:4])}{' ...' if len(x) > 4 else ''}"
                 for label, x in (("missing", missing), ("unexpected", unexpected),
                                  ("of the wrong shape", wrong)) if x]
        raise CheckpointError(f"{what} does not fit its config: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def _whisper_encoder_state(state: dict) -> dict:
    """WhisperForConditionalGeneration's or WhisperModel's keys -> the encoder's own."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("model.")
        if key.startswith("encoder."):
            out[key.removeprefix("encoder.")] = value
    return out


@dataclass
class MuseTalkModels:
    """The three networks, in eval mode, fp32."""

    unet: torch.nn.Module  # diffusers UNet2DConditionModel
    vae: torch.nn.Module  # diffusers AutoencoderKL
    whisper: torch.nn.Module  # transformers WhisperEncoder
    scaling_factor: float = configs.VAE_SCALING_FACTOR

    @property
    def hidden_layers(self) -> int:
        """L: the hidden states the audio encoder stacks (its layers + the embeddings)."""
        return int(self.whisper.config.encoder_layers) + 1


def build_models(unet_config: dict, vae_config: dict, whisper_config: dict,
                 seed: int = 0) -> MuseTalkModels:
    """The real classes from their configs, randomly initialised (seeded)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(seed)
    strip = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**strip)
    vae = AutoencoderKL(**{k: v for k, v in vae_config.items() if not k.startswith("_")})
    whisper_cfg = WhisperConfig(**{k: v for k, v in whisper_config.items()
                                   if k not in ("architectures", "model_type")})
    whisper_cfg._attn_implementation = "eager"  # exports as plain MatMul/Softmax
    whisper = WhisperEncoder(whisper_cfg)
    scaling = float(vae_config.get("scaling_factor", configs.VAE_SCALING_FACTOR))
    return MuseTalkModels(unet.eval(), vae.eval(), whisper.eval(), scaling)


def load_models(models_dir: Path) -> MuseTalkModels:
    """MuseTalk's `models/` folder (module doc) with its weights. CheckpointError names the
    missing file or the keys that do not fit."""
    models_dir = Path(models_dir)
    unet_dir, vae_dir, whisper_dir = (models_dir / "musetalkV15", models_dir / "sd-vae",
                                      models_dir / "whisper")
    models = build_models(_read_config(unet_dir / "musetalk.json"),
                          _read_config(vae_dir / "config.json"),
                          _read_config(whisper_dir / "config.json"))
    unet_weights = unet_dir / "unet.pth"
    if not unet_weights.is_file():
        unet_weights = weights_file(unet_dir)
    _load_strict(models.unet, read_state_dict(unet_weights), f"UNet {unet_weights}")
    vae_weights = weights_file(vae_dir)
    _load_strict(models.vae, read_state_dict(vae_weights), f"VAE {vae_weights}")
    whisper_weights = weights_file(whisper_dir)
    _load_strict(models.whisper, _whisper_encoder_state(read_state_dict(whisper_weights)),
                 f"Whisper encoder {whisper_weights}")
    return models


# --- the exported graphs ------------------------------------------------------------------------
def positional_encoding(length: int, dim: int = configs.WHISPER_DIM) -> np.ndarray:
    """MuseTalk's PositionalEncoding table, float32 [length, dim]: sin on even, cos on odd."""
    position = np.arange(length, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, dim, 2, dtype=np.float32) * (-math.log(10000.0) / dim))
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2] = np.sin(position * div)
    table[:, 1::2] = np.cos(position * div)
    return table


def wrappers(models: MuseTalkModels) -> dict[str, torch.nn.Module]:
    """The four exported graphs as modules (musetalk_configs.signatures names their tensors)."""
    import torch

    scaling = models.scaling_factor
    window = configs.WHISPER_WINDOW_POSITIONS * models.hidden_layers

    class AudioEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = models.whisper

        def forward(self, mel):
            states = self.encoder(mel, output_hidden_states=True).hidden_states
            return torch.stack(states, dim=2)

    class UNetStep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = models.unet
            self.register_buffer("pe", torch.from_numpy(positional_encoding(window))[None])
            self.register_buffer("timestep", torch.zeros(1, dtype=torch.long))

        def forward(self, latents, whisper):
            context = whisper + self.pe
            return self.unet(latents, self.timestep, encoder_hidden_states=context).sample

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = models.vae

        def forward(self, pred):
            image = self.vae.decode(pred / scaling).sample
            return (image / 2 + 0.5).clamp(0, 1)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = models.vae
            keep = torch.zeros(1, 1, configs.FACE_PX, 1)
            keep[:, :, : configs.FACE_PX // 2] = 1.0  # MuseTalk's half mask: upper rows kept
            self.register_buffer("keep", keep)

        def forward(self, face):
            masked = self.vae.encode(face * self.keep * 2 - 1).latent_dist.mean
            whole = self.vae.encode(face * 2 - 1).latent_dist.mean
            return torch.cat([masked, whole], dim=1) * scaling

    return {"audio": AudioEncoder().eval(), "unet": UNetStep().eval(),
            "decoder": Decoder().eval(), "encoder": Encoder().eval()}


def random_inputs(sig: configs.Signature, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs in each tensor's working range (log-mel, latents, features, RGB in [0, 1])."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, dims in sig.inputs:
        if name == "face":
            out[name] = rng.uniform(0, 1, (batch, *dims))
        elif name == "mel":
            out[name] = rng.uniform(-1, 1, (batch, *dims))
        else:
            out[name] = rng.normal(0, 1, (batch, *dims))
    return {k: v.astype(np.float32) for k, v in out.items()}


def export_onnx(module: torch.nn.Module, sig: configs.Signature, path: Path) -> Path:
    """The fp32 graph with a dynamic batch, checked by onnx.checker; weights past protobuf's
    2 GB go to one external file beside it (`model.onnx.data`)."""
    import onnx
    import torch

    inputs = tuple(torch.from_numpy(a) for a in random_inputs(sig, TRACE_BATCH).values())
    names = [n for n, _ in sig.inputs]
    outputs = [n for n, _ in sig.outputs]
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + EXTERNAL_DATA_SUFFIX)):
        stale.unlink(missing_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation, tracer warnings
        torch.onnx.export(module, inputs, str(path), dynamo=False, input_names=names,
                          output_names=outputs, opset_version=OPSET, do_constant_folding=True,
                          dynamic_axes={n: {0: "batch"} for n in (*names, *outputs)})
    _resave(path, onnx.load(str(path)))
    onnx.checker.check_model(str(path), full_check=True)
    return path


def _resave(path: Path, graph: onnx.ModelProto) -> None:
    """Save `graph` at `path`, its weights in one external file when they pass protobuf's limit
    (the exporter writes one file per tensor; those are removed)."""
    import onnx

    big = sum(t.ByteSize() for t in graph.graph.initializer) > PROTOBUF_LIMIT_BYTES
    leftovers = [p for p in path.parent.iterdir()
                 if p.name not in (path.name, "model.py", ONNX_FILE, ONNX_FP16_FILE, PLAN_FILE,
                                   ONNX_FILE + EXTERNAL_DATA_SUFFIX,
                                   ONNX_FP16_FILE + EXTERNAL_DATA_SUFFIX)]
    if big:
        onnx.save(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + EXTERNAL_DATA_SUFFIX)
    else:
        onnx.save(graph, str(path))
    for leftover in leftovers:
        if leftover.is_file():
            leftover.unlink()


def to_fp16(path: Path, out: Path) -> Path:
    """FP16 inside, FP32 tensors in and out (onnxruntime's converter, keep_io_types)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # Resize stays fp32 (casts go around it), and its `scales` must be float32: the converter
    # turns the Constant that feeds them to fp16 all the same, so it is turned back.
    graph = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True,
                                     disable_shape_infer=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Resize"])
    producers = {out: node for node in graph.graph.node for out in node.output}
    for node in graph.graph.node:
        if node.op_type != "Resize":
            continue
        for name in node.input[1:3]:
            constant = producers.get(name)
            if constant is None or constant.op_type != "Constant":
                continue
            for attribute in constant.attribute:
                if attribute.name == "value" and attribute.t.data_type == onnx.TensorProto.FLOAT16:
                    array = onnx.numpy_helper.to_array(attribute.t).astype(np.float32)
                    attribute.t.CopyFrom(onnx.numpy_helper.from_array(array, attribute.t.name))
    _resave(out, graph)
    return out


def onnxruntime_max_error(module: torch.nn.Module, sig: configs.Signature, path: Path,
                          batch: int = PARITY_BATCH) -> float:
    """Max abs difference of onnxruntime (CPU) against PyTorch eager on random inputs."""
    import onnxruntime as ort
    import torch

    feeds = random_inputs(sig, batch, seed=1)
    with torch.no_grad():
        expected = module(*(torch.from_numpy(a) for a in feeds.values())).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([sig.outputs[0][0]], feeds)[0]
    if got.shape != expected.shape or got.dtype != np.float32:
        raise ExportError(f"{path}: onnxruntime gave {got.dtype} {list(got.shape)}, "
                          f"expected float32 {list(expected.shape)}")
    return float(np.max(np.abs(got - expected)))


@dataclass
class ExportReport:
    out: Path
    parity_fp32: dict[str, float] = field(default_factory=dict)
    parity_fp16: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)


PARTS = {"audio": "Whisper encoder hidden states", "unet": "UNet step",
         "decoder": "VAE decoder", "encoder": "VAE encoder (avatar preparation)"}


def export_repository(out: Path, models: MuseTalkModels, *, max_batch: int = 64,
                      fp16: bool = False, tensorrt: bool = True) -> ExportReport:
    """Write `out` (the ensemble; its name is the served model's) and its four sibling model
    folders (musetalk_configs' module doc). Raises ExportError when a graph and PyTorch differ
    past the tolerance."""
    if not 1 <= max_batch <= 1024:
        raise ExportError(f"--max-batch must be in 1..1024, got {max_batch}")
    name = out.name
    sigs = configs.signatures(name, max_batch, models.hidden_layers)
    modules = wrappers(models)
    report = ExportReport(out)
    reason = tensorrt_unavailable() if tensorrt else "disabled"
    if reason is not None:
        report.notes.append(f"TensorRT plans skipped: {reason}")
    for part, sig in sigs.items():
        folder = out.parent / sig.name
        version = folder / "1"
        onnx_path = export_onnx(modules[part], sig, version / ONNX_FILE)
        error = onnxruntime_max_error(modules[part], sig, onnx_path)
        if not error <= FP32_TOLERANCE[part]:  # NaN too
            raise ExportError(f"{sig.name}: onnxruntime and PyTorch differ by {error:.3g} "
                              f"(> {FP32_TOLERANCE[part]})")
        report.parity_fp32[part] = error
        onnx_file = ONNX_FILE
        if fp16:
            fp16_path = to_fp16(onnx_path, version / ONNX_FP16_FILE)
            report.parity_fp16[part] = onnxruntime_max_error(modules[part], sig, fp16_path)
            if not report.parity_fp16[part] <= FP16_TOLERANCE[part]:
                raise ExportError(f"{sig.name}: the fp16 graph differs from PyTorch by "
                                  f"{report.parity_fp16[part]:.3g} (> {FP16_TOLERANCE[part]})")
            onnx_file = ONNX_FP16_FILE
        else:
            (version / ONNX_FP16_FILE).unlink(missing_ok=True)
        shutil.copy2(ADAPTER, version / "model.py")
        (folder / "configs").mkdir(exist_ok=True)
        (folder / "config.pbtxt").write_text(
            configs.container_config(sig, PARTS[part], onnx_file))
        (folder / "configs" / "local.pbtxt").write_text(configs.local_config(sig, PARTS[part]))
        trt_config = folder / "configs" / "tensorrt.pbtxt"
        if reason is None:
            build_tensorrt_plan(onnx_path, version / PLAN_FILE, sig.inputs, sig.max_batch, fp16)
            trt_config.write_text(configs.tensorrt_config(sig, PARTS[part]))
        else:
            (version / PLAN_FILE).unlink(missing_ok=True)
            trt_config.unlink(missing_ok=True)
        report.folders.append(folder)
    (out / "1").mkdir(parents=True, exist_ok=True)  # an ensemble has an empty version folder
    (out / "config.pbtxt").write_text(
        configs.ensemble_config(name, sigs["unet"], sigs["decoder"], sigs["audio"]))
    report.folders.append(out)
    return report


# --- CLI ------------------------------------------------------------------------------------------
def add_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "musetalk", help="export MuseTalk 1.5 (Whisper encoder, UNet, VAE) to Triton folders")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="MuseTalk's models/ folder (musetalkV15/, sd-vae/, whisper/); "
                             "omitted: random weights of the real architecture")
    parser.add_argument("--out", type=Path, default=Path("model_repository/musetalk"),
                        help="the served model's folder; its siblings <name>_audio, _unet, "
                             "_vae_decoder, _vae_encoder are written beside it")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--fp16", action="store_true", help="also write FP16 graphs (container)")
    parser.add_argument("--no-tensorrt", action="store_true", help="skip the TensorRT plans")
    parser.add_argument("--tiny", action="store_true",
                        help="random weights of the reduced test configs (no --models-dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    try:
        if args.models_dir is not None:
            models = load_models(args.models_dir)
        elif args.tiny:
            models = build_models(configs.TINY_UNET, configs.TINY_VAE, configs.TINY_WHISPER,
                                  args.seed)
        else:
            models = build_models(configs.MUSETALK_UNET, configs.SD_VAE_FT_MSE,
                                  configs.WHISPER_TINY, args.seed)
        report = export_repository(args.out, models, max_batch=args.max_batch, fp16=args.fp16,
                                   tensorrt=not args.no_tensorrt)
    except ExportError as exc:
        sys.exit(f"error: {exc}")
    for folder in report.folders:
        print(f"wrote {folder}")
    for part, error in report.parity_fp32.items():
        fp16 = report.parity_fp16.get(part)
        print(f"{part}: onnxruntime vs PyTorch max abs error {error:.2e}"
              + (f", fp16 {fp16:.2e}" if fp16 is not None else ""))
    for note in report.notes:
        print(note)
