"""`python -m export wav2lip`: a Wav2Lip checkpoint to a Triton model folder.

PyTorch -> ONNX (dynamic batch, BatchNorm folded into the convs) -> `onnx.checker` ->
onnxruntime parity against the PyTorch model (fp32 must agree within FP32_TOLERANCE) ->
optionally an fp16 ONNX (FP32 tensors in and out, FP16 inside) -> a TensorRT plan where the
`tensorrt` package and a GPU exist -> the folder:

    <out>/1/model.onnx            fp32 graph (local adapter, container)
    <out>/1/model_fp16.onnx       --fp16: the container's graph
    <out>/1/model.plan            TensorRT engine, when built
    <out>/1/model.py              the generic onnxruntime adapter (copied from lipsync_default)
    <out>/config.pbtxt            container, onnxruntime backend (+ TensorRT provider)
    <out>/configs/local.pbtxt     embedded server, python backend
    <out>/configs/tensorrt.pbtxt  container with --model-config-name=tensorrt, when a plan exists
"""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import wav2lip_configs as configs
from .wav2lip_configs import (
    FACE_CHANNELS,
    FACE_SIZES_PX,
    LAYOUT_NAMES,
    MEL_BINS,
    MEL_WINDOW_FRAMES,
)

if TYPE_CHECKING:  # torch is imported only when exporting: the CLI parser works without it
    from .wav2lip_model import Wav2Lip

OPSET = 17
INPUT_NAMES = ("mel", "face")
OUTPUT_NAME = "face_out"
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 3e-2  # outputs in [0, 1]: random weights measure 0.01-0.02 (a few 8-bit levels)
PARITY_BATCH = 2
TRACE_BATCH = 1  # traced at 1, checked at PARITY_BATCH: proves the batch dimension is dynamic
TRT_OPT_BATCH = 16
ONNX_FILE = "model.onnx"
ONNX_FP16_FILE = "model_fp16.onnx"
PLAN_FILE = "model.plan"
ADAPTER = Path(__file__).resolve().parent.parent / "model_repository/lipsync_default/1/model.py"


class ExportError(RuntimeError):
    pass


@dataclass
class ExportReport:
    folder: Path
    face_px: int
    parity_fp32: float  # max abs error, onnxruntime vs PyTorch
    parity_fp16: float | None = None
    layout: str = ""  # wav2lip96, livetalking256, livehuman256 (export/wav2lip_model.py)
    notes: list[str] = field(default_factory=list)  # what was skipped, and why
    files: list[Path] = field(default_factory=list)


def random_inputs(face_px: int, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """mel in Wav2Lip's normalised range [-4, 4], face in [0, 1]."""
    rng = np.random.default_rng(seed)
    mel = rng.uniform(-4, 4, (batch, 1, MEL_BINS, MEL_WINDOW_FRAMES)).astype(np.float32)
    face = rng.uniform(0, 1, (batch, FACE_CHANNELS, face_px, face_px)).astype(np.float32)
    return mel, face


def export_onnx(model: Wav2Lip, path: Path) -> Path:
    """The fused fp32 graph with a dynamic batch dimension, checked by onnx.checker."""
    import torch

    from .wav2lip_model import fused_for_inference

    mel, face = (torch.from_numpy(a) for a in random_inputs(model.face_px, TRACE_BATCH))
    batch_axis = {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            fused_for_inference(model), (mel, face), str(path), dynamo=False,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], opset_version=OPSET,
            dynamic_axes={name: batch_axis for name in (*INPUT_NAMES, OUTPUT_NAME)},
            do_constant_folding=True,
        )
    graph = onnx.load(str(path))
    graph.doc_string = (f"Wav2Lip {model.face_px}x{model.face_px} generator, layout {model.layout} "
                        "(livehuman.export)")
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    return path


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and activations, FP32 inputs and outputs (Cast nodes at both ends).

    Enough for this graph: after BatchNorm folding it has only Conv, ConvTranspose, Add, Relu,
    Concat and Sigmoid, which take any float type. Written by hand because onnxconverter-common
    is not a dependency.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float16), init.name))
    if any(n.op_type == "Constant" for n in graph.node):
        raise ExportError("fp16 conversion does not handle Constant nodes")
    renamed = {}
    casts_in = []
    for value in graph.input:
        renamed[value.name] = f"{value.name}_fp16"
        casts_in.append(helper.make_node("Cast", [value.name], [renamed[value.name]],
                                         to=TensorProto.FLOAT16))
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    casts_out = []
    for value in graph.output:
        internal = f"{value.name}_fp16"
        for node in graph.node:
            node.output[:] = [internal if name == value.name else name for name in node.output]
        casts_out.append(helper.make_node("Cast", [internal], [value.name], to=TensorProto.FLOAT))
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # intermediate types changed; onnxruntime infers them again
    onnx.checker.check_model(model, full_check=True)
    return model


def onnxruntime_max_error(model: Wav2Lip, onnx_path: Path, batch: int = PARITY_BATCH) -> float:
    """Max abs difference between onnxruntime (CPU) and PyTorch eager on random inputs."""
    import onnxruntime as ort
    import torch

    mel, face = random_inputs(model.face_px, batch, seed=1)
    with torch.no_grad():
        expected = model(torch.from_numpy(mel), torch.from_numpy(face)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {"mel": mel, "face": face})[0]
    if got.shape != expected.shape or got.dtype != np.float32:
        raise ExportError(f"{onnx_path}: onnxruntime gave {got.dtype} {list(got.shape)}, "
                          f"expected float32 {list(expected.shape)}")
    return float(np.max(np.abs(got - expected)))


def tensorrt_unavailable() -> str | None:
    """Why no TensorRT plan can be built here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def build_tensorrt_plan(onnx_path: Path, plan_path: Path,
                        inputs: Sequence[tuple[str, Sequence[int]]], max_batch: int,
                        fp16: bool = True) -> Path:
    """A serialized engine of `onnx_path` (its weights may sit in an external data file beside
    it) whose one optimization profile covers batch 1..max_batch (opt TRT_OPT_BATCH) of each
    input (`inputs`: name, dims without the batch). Every exporter's plans (Wav2Lip, MuseTalk,
    Ultralight) are built here. Raises ExportError when TensorRT cannot parse or build it.

    A plan only runs on the GPU model and TensorRT version that built it: build it on (or for)
    the serving machine.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = min(TRT_OPT_BATCH, max_batch)
    profile = builder.create_optimization_profile()
    for name, dims in inputs:
        profile.set_shape(name, (1, *dims), (opt, *dims), (max_batch, *dims))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ExportError("TensorRT failed to build the engine (see its log above)")
    plan_path.write_bytes(bytes(engine))
    return plan_path


def _model(checkpoint: Path | None, face_px: int, seed: int, layout: str | None) -> Wav2Lip:
    from .wav2lip_model import load_checkpoint, random_model

    if checkpoint is None:
        return random_model(face_px, seed, layout)
    return load_checkpoint(checkpoint, face_px, layout)


def export_repository(out: Path, face_px: int, *, checkpoint: Path | None = None,
                      model: Wav2Lip | None = None, fp16: bool = False, max_batch: int = 64,
                      seed: int = 0, tensorrt: bool = True,
                      layout: str | None = None) -> ExportReport:
    """Write the Triton model folder `out` (its name is the model's name); see the module doc.

    `model` (already built) wins over `checkpoint`; with neither, random weights of the real
    architecture. `layout` forces one of the size's layouts (default: found from the checkpoint's
    keys; LiveTalking's for random 256 weights). Raises CheckpointError / ExportError with the reason.
    """
    if face_px not in FACE_SIZES_PX:
        raise ExportError(f"--variant must be one of {list(FACE_SIZES_PX)}, got {face_px}")
    if not 1 <= max_batch <= 1024:
        raise ExportError(f"--max-batch must be in 1..1024, got {max_batch}")
    if layout is not None and not layout.endswith(str(face_px)):
        raise ExportError(f"--layout {layout} is not a {face_px} layout")
    if model is None:
        model = _model(checkpoint, face_px, seed, layout)
    elif model.face_px != face_px:
        raise ExportError(f"model is a {model.face_px} model, variant {face_px} given")
    version = out / "1"
    version.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, version / ONNX_FILE)
    error = onnxruntime_max_error(model, onnx_path)
    if not error <= FP32_TOLERANCE:  # also catches NaN
        raise ExportError(f"onnxruntime and PyTorch differ by {error:.3g} (> {FP32_TOLERANCE})")
    report = ExportReport(out, face_px, parity_fp32=error, files=[onnx_path],
                          layout=model.layout)

    onnx_file = ONNX_FILE
    if fp16:
        fp16_path = version / ONNX_FP16_FILE
        onnx.save(to_fp16(onnx.load(str(onnx_path))), str(fp16_path))
        report.parity_fp16 = onnxruntime_max_error(model, fp16_path)
        if not report.parity_fp16 <= FP16_TOLERANCE:
            raise ExportError(f"the fp16 graph differs from PyTorch by {report.parity_fp16:.3g} "
                              f"(> {FP16_TOLERANCE})")
        report.files.append(fp16_path)
        onnx_file = ONNX_FP16_FILE
    else:
        (version / ONNX_FP16_FILE).unlink(missing_ok=True)  # from an earlier --fp16 export

    sig = configs.ModelSignature(out.name, face_px, max_batch)
    plan = None
    reason = tensorrt_unavailable() if tensorrt else "disabled"
    if reason is None:
        plan = build_tensorrt_plan(
            onnx_path, version / PLAN_FILE, (("mel", (1, MEL_BINS, MEL_WINDOW_FRAMES)),
                                             ("face", (FACE_CHANNELS, face_px, face_px))),
            max_batch, fp16)
        report.files.append(plan)
    else:
        report.notes.append(f"TensorRT plan skipped: {reason}")
        (version / PLAN_FILE).unlink(missing_ok=True)  # a stale plan would not match the ONNX

    shutil.copy2(ADAPTER, version / "model.py")  # the python backend loads model.py from 1/
    (out / "configs").mkdir(exist_ok=True)
    texts = {out / "config.pbtxt": configs.container_config(sig, onnx_file, fp16),
             out / "configs" / "local.pbtxt": configs.local_config(sig)}
    tensorrt_pbtxt = out / "configs" / "tensorrt.pbtxt"
    if plan is not None:
        texts[tensorrt_pbtxt] = configs.tensorrt_config(sig)
    else:
        tensorrt_pbtxt.unlink(missing_ok=True)
    for path, text in texts.items():
        path.write_text(text)
    report.files += [version / "model.py", *texts]
    return report


# --- CLI --------------------------------------------------------------------------------------
def add_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "wav2lip", help="export a Wav2Lip checkpoint (96 or 256) to a Triton model folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="wav2lip.pth, wav2lip_gan.pth, ...")
    source.add_argument("--random-init", action="store_true",
                        help="random weights of the real architecture (tests, benchmarks)")
    parser.add_argument("--variant", type=int, choices=FACE_SIZES_PX, required=True,
                        help="face crop size the checkpoint was trained for")
    parser.add_argument("--layout", choices=LAYOUT_NAMES, help="force a layout (default: "
                        "found from the checkpoint's keys; random 256 weights: livetalking256)")
    parser.add_argument("--out", type=Path, help="model folder (default model_repository/"
                        "wav2lip<variant>); its name is the Triton model name")
    parser.add_argument("--name", help="model name; must equal the --out folder's name")
    parser.add_argument("--fp16", action="store_true",
                        help="also write an fp16 graph for the container (and an fp16 plan)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="for --random-init")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    out = args.out or Path("model_repository") / (args.name or f"wav2lip{args.variant}")
    if args.name is not None and args.name != out.name:
        sys.exit(f"error: --name {args.name} differs from the folder name {out.name}: Triton "
                 f"names a model after its folder (use --out .../{args.name})")
    try:
        from .wav2lip_model import CheckpointError
    except ImportError as exc:
        sys.exit(f"error: the wav2lip export needs PyTorch (the `export` extra): {exc}")
    try:
        report = export_repository(out, args.variant, checkpoint=args.checkpoint, fp16=args.fp16,
                                   max_batch=args.max_batch, seed=args.seed, layout=args.layout)
    except (CheckpointError, ExportError) as exc:
        sys.exit(f"error: {exc}")
    print(f"layout {report.layout}")
    print(f"parity fp32 (onnxruntime vs PyTorch, batch {PARITY_BATCH}): "
          f"max abs error {report.parity_fp32:.3g}")
    if report.parity_fp16 is not None:
        print(f"parity fp16: max abs error {report.parity_fp16:.3g}")
    for note in report.notes:
        print(note)
    for path in report.files:
        print(f"wrote {path}")
