"""`python -m export ultralight`: an Ultralight avatar's UNet checkpoint and the HuBERT audio
encoder to Triton model folders (export/ultralight_configs.py lists the three models).

Each network: PyTorch -> ONNX (dynamic batch, BatchNorm folded by the exporter) ->
`onnx.checker` -> onnxruntime parity against PyTorch -> a TensorRT plan where the `tensorrt`
package and a GPU exist. The folders:

    <out>/config.pbtxt                         the ensemble (audio, face -> face_out)
    <out>/1/                                   (empty: an ensemble has no files of its own)
    <out>_unet/1/model.onnx, 1/model.py        the UNet and the generic onnxruntime adapter
    <out>_unet/config.pbtxt, configs/local.pbtxt[, configs/tensorrt.pbtxt + 1/model.plan]
    <repository>/ultralight_audio/...          HuBERT, the same files (kept when no --hubert
                                               is given and it exists: one per repository)

LiveTalking's layout: the UNet is `data/avatars/<id>/ultralight.pth` (one per avatar, trained
on that person), HuBERT is `models/hubert-large-ls960-ft/` (a Hugging Face folder).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from . import ultralight_configs as configs
from .ultralight_configs import (
    AUDIO,
    AUDIO_MODEL,
    AUDIO_WINDOW_SAMPLES,
    FACE,
    FACE_OUT,
    FEATURES,
    TINY_HUBERT,
    UNET_SUFFIX,
)
from .wav2lip_export import (  # one repository layout, one ONNX opset, one plan builder
    ADAPTER,
    ONNX_FILE,
    OPSET,
    PLAN_FILE,
    ExportError,
    build_tensorrt_plan,
    tensorrt_unavailable,
)

if TYPE_CHECKING:
    from torch import nn

TRACE_BATCH = 1  # traced at 1, checked at PARITY_BATCH: proves the batch dimension is dynamic
PARITY_BATCH = 2
UNET_TOLERANCE = 1e-4  # outputs in [0, 1]
AUDIO_TOLERANCE = 2e-3  # features ~N(0, 1) after HuBERT's last layer norm, 24 layers of fp32
DEFAULT_NAME = "ultralight"
HUBERT_SIZES = ("large", "tiny")  # --random-hubert: the real size, or a 1-layer one (tests)


@dataclass
class ExportReport:
    folder: Path
    parity_unet: float  # max abs error, onnxruntime vs PyTorch
    parity_audio: float | None = None  # None: the audio model was kept as it was
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def random_face(batch: int, seed: int = 0) -> np.ndarray:
    """float32 [B, 6, 160, 160] in [0, 1]."""
    return np.random.default_rng(seed).uniform(0, 1, (batch, *FACE.dims)).astype(np.float32)


def random_audio(batch: int, seed: int = 0) -> np.ndarray:
    """float32 [B, AUDIO_WINDOW_SAMPLES]: noise at speech-like level."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((batch, AUDIO_WINDOW_SAMPLES))).astype(np.float32)


def random_features(batch: int, seed: int = 0) -> np.ndarray:
    """float32 [B, 16, 32, 32]: HuBERT-like values (layer-normed, ~N(0, 1))."""
    return np.random.default_rng(seed).standard_normal((batch, *FEATURES.dims)).astype(np.float32)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], output: str,
            doc: str) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    batch_axis = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation, tracer warnings
        torch.onnx.export(
            module, args, str(path), dynamo=False, input_names=inputs, output_names=[output],
            opset_version=OPSET, dynamic_axes={name: batch_axis for name in (*inputs, output)},
            do_constant_folding=True)
    graph = onnx.load(str(path))
    graph.doc_string = f"{doc} (livehuman.export)"
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    return path


def export_unet_onnx(unet: nn.Module, path: Path) -> Path:
    """face [B,6,160,160], features [B,16,32,32] -> face_out [B,3,160,160], fp32."""
    import torch

    args = (torch.from_numpy(random_face(TRACE_BATCH)), torch.from_numpy(random_features(TRACE_BATCH)))
    return _export(unet.eval(), args, path, [FACE.name, FEATURES.name], FACE_OUT.name,
                   "Ultralight UNet 160x160")


def export_audio_onnx(audio: nn.Module, path: Path) -> Path:
    """audio [B, AUDIO_WINDOW_SAMPLES] -> features [B,16,32,32], fp32."""
    import torch

    args = (torch.from_numpy(random_audio(TRACE_BATCH)),)
    return _export(audio.eval(), args, path, [AUDIO.name], FEATURES.name,
                   "Ultralight audio encoder (HuBERT)")


def max_error(module: nn.Module, onnx_path: Path, feeds: dict[str, np.ndarray],
              output: str) -> float:
    """Max abs difference between onnxruntime (CPU) and PyTorch eager on `feeds`."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        expected = module(*(torch.from_numpy(a) for a in feeds.values())).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run([output], feeds)[0]
    if got.shape != expected.shape or got.dtype != np.float32:
        raise ExportError(f"{onnx_path.name}: onnxruntime gave {got.dtype} {list(got.shape)}, "
                          f"expected float32 {list(expected.shape)}")
    return float(np.max(np.abs(got - expected)))


def _write_model(folder: Path, module: nn.Module, sig: configs.ModelSignature,
                 export, feeds: dict[str, np.ndarray], tolerance: float, tensorrt: bool,
                 report: ExportReport) -> float:
    """One ONNX model folder (graph, adapter, configs, plan where possible); its parity."""
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    onnx_path = export(module, version / ONNX_FILE)
    error = max_error(module, onnx_path, feeds, sig.outputs[0].name)
    if not error <= tolerance:  # also catches NaN
        raise ExportError(f"{sig.name}: onnxruntime and PyTorch differ by {error:.3g} "
                          f"(> {tolerance})")
    reason = tensorrt_unavailable() if tensorrt else "disabled"
    plan_path, tensorrt_pbtxt = version / PLAN_FILE, folder / "configs" / "tensorrt.pbtxt"
    (folder / "configs").mkdir(exist_ok=True)
    texts = {folder / "config.pbtxt": configs.container_config(sig),
             folder / "configs" / "local.pbtxt": configs.local_config(sig)}
    if reason is None:
        report.files.append(build_tensorrt_plan(
            onnx_path, plan_path, [(t.name, t.dims) for t in sig.inputs], sig.max_batch))
        texts[tensorrt_pbtxt] = configs.tensorrt_config(sig)
    else:
        report.notes.append(f"{sig.name}: TensorRT plan skipped: {reason}")
        plan_path.unlink(missing_ok=True)  # a stale plan would not match the ONNX
        tensorrt_pbtxt.unlink(missing_ok=True)
    shutil.copy2(ADAPTER, version / "model.py")  # the python backend loads model.py from 1/
    for path, text in texts.items():
        path.write_text(text)
    report.files += [onnx_path, version / "model.py", *texts]
    return error


def export_repository(out: Path, unet: nn.Module, audio: nn.Module | None = None, *,
                      max_batch: int = 64, tensorrt: bool = True) -> ExportReport:
    """Write the ensemble `out` (its folder name is the model name avatars use), `<out>_unet`
    and, when `audio` (an export.ultralight_model.UltralightAudio) is given,
    `<out's parent>/ultralight_audio`. Without `audio`, that model must exist already.
    Raises ExportError with the reason."""
    if not 1 <= max_batch <= 1024:
        raise ExportError(f"--max-batch must be in 1..1024, got {max_batch}")
    name = out.name
    if name == AUDIO_MODEL or name.endswith(UNET_SUFFIX):
        raise ExportError(f"the model name {name!r} is taken by the models it is made of")
    repository = out.parent
    audio_folder = repository / AUDIO_MODEL
    if audio is None and not (audio_folder / "1" / ONNX_FILE).is_file():
        raise ExportError(f"{AUDIO_MODEL} is not in {repository.name}/ yet: give --hubert "
                          "(LiveTalking's models/hubert-large-ls960-ft) once")
    unet_sig = configs.unet_signature(name, max_batch)
    report = ExportReport(out, parity_unet=0.0)
    report.parity_unet = _write_model(
        repository / unet_sig.name, unet, unet_sig, export_unet_onnx,
        {FACE.name: random_face(PARITY_BATCH, 1), FEATURES.name: random_features(PARITY_BATCH, 1)},
        UNET_TOLERANCE, tensorrt, report)
    if audio is not None:
        report.parity_audio = _write_model(
            audio_folder, audio, configs.audio_signature(max_batch), export_audio_onnx,
            {AUDIO.name: random_audio(PARITY_BATCH, 1)}, AUDIO_TOLERANCE, tensorrt, report)
    else:
        report.notes.append(f"{AUDIO_MODEL} kept as it was")
    (out / "1").mkdir(parents=True, exist_ok=True)  # Triton wants a version folder
    ensemble = out / "config.pbtxt"
    ensemble.write_text(configs.ensemble_config(name, max_batch))
    report.files.append(ensemble)
    return report


# --- CLI --------------------------------------------------------------------------------------
def add_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "ultralight", help="export an Ultralight avatar's UNet (LiveTalking's ultralight.pth) "
        "and its HuBERT audio encoder to Triton model folders")
    unet = parser.add_mutually_exclusive_group(required=True)
    unet.add_argument("--checkpoint", type=Path, help="the UNet: LiveTalking's data/avatars/"
                      "<id>/ultralight.pth (.pth, pytorch_model.bin or .safetensors)")
    unet.add_argument("--random-init", action="store_true",
                      help="random UNet weights of the real architecture (tests, benchmarks)")
    hubert = parser.add_mutually_exclusive_group()
    hubert.add_argument("--hubert", type=Path, help="LiveTalking's models/hubert-large-ls960-ft "
                        "(a Hugging Face folder); without it an existing ultralight_audio is kept")
    hubert.add_argument("--random-hubert", choices=HUBERT_SIZES,
                        help="random HuBERT weights: 'large' (the real size) or 'tiny' (1 layer)")
    parser.add_argument("--out", type=Path, default=Path("model_repository") / DEFAULT_NAME,
                        help="the ensemble's folder (default model_repository/ultralight); its "
                        "name is the model name avatars use; <out>_unet and ultralight_audio "
                        "are written beside it")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="for --random-init/--random-hubert")
    parser.set_defaults(run=run)


def _audio(args: argparse.Namespace):
    from .ultralight_model import UltralightAudio, check_window, load_hubert, random_hubert

    if args.hubert is not None:
        hubert, normalize = load_hubert(args.hubert)
    elif args.random_hubert is not None:
        sizes = TINY_HUBERT if args.random_hubert == "tiny" else {}
        hubert, normalize = random_hubert(args.seed, **sizes), True
    else:
        return None
    check_window(hubert)
    return UltralightAudio(hubert, normalize).eval()


def run(args: argparse.Namespace) -> None:
    try:
        from .ultralight_model import load_unet, random_unet
        from .wav2lip_model import CheckpointError
    except ImportError as exc:
        sys.exit(f"error: the ultralight export needs PyTorch (the `export` extra): {exc}")
    try:
        unet = random_unet(args.seed) if args.random_init else load_unet(args.checkpoint)
        audio = _audio(args)
        report = export_repository(args.out, unet, audio, max_batch=args.max_batch)
    except ImportError as exc:
        sys.exit(f"error: HuBERT needs transformers (the `export` extra): {exc}")
    except (CheckpointError, ExportError) as exc:
        sys.exit(f"error: {exc}")
    print(f"parity UNet fp32 (onnxruntime vs PyTorch, batch {PARITY_BATCH}): "
          f"max abs error {report.parity_unet:.3g}")
    if report.parity_audio is not None:
        print(f"parity audio encoder fp32: max abs error {report.parity_audio:.3g}")
    for note in report.notes:
        print(note)
    for path in report.files:
        print(f"wrote {path}")
