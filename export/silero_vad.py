"""`python -m export silero-vad`: Silero VAD (the `silero-vad` wheel's ONNX) for Triton batching.

The published graph takes `input` [B, 64 + 512] (the previous frame's last 64 samples, then the
frame), `state` [2, B, 128] and `sr` (a scalar); Triton batches along the first dimension of
every tensor. This writes `vad_silero/1/model.onnx`: the same graph with `sr` fixed to 16000 and
the state transposed in and out, so every tensor is batch-first:

    in  audio  FP32 [B, 576]       in  vad_state      FP32 [B, 2, 128]
    out speech FP32 [B, 1]         out vad_state_out  FP32 [B, 2, 128]

The recurrent state is explicit: each session keeps its own and sends it with every frame, so
frames of all sessions batch together (no sequence batcher needed).

    python -m export silero-vad            # make artifacts does it
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import onnx
from onnx import TensorProto, helper

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = PROJECT_ROOT / "model_repository" / "vad_silero" / "1" / "model.onnx"
PACKAGE = "silero_vad"
SOURCE_FILE = "data/silero_vad.onnx"
SAMPLE_RATE_HZ = 16000
FRAME_SAMPLES = 512
CONTEXT_SAMPLES = 64
STATE_SHAPE = (2, 128)


def source_path() -> Path:
    """The ONNX inside the installed `silero-vad` wheel (installed with --no-deps: no torch)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the silero-vad wheel is not installed: pip install --no-deps silero-vad")
    path = Path(next(iter(spec.submodule_search_locations))) / SOURCE_FILE
    if not path.is_file():
        raise SystemExit(f"{SOURCE_FILE} not found in the silero-vad package")
    return path


def batch_first(model: onnx.ModelProto) -> onnx.ModelProto:
    """New batch-first inputs feed the original names (If branches refer to them by name)."""
    graph = model.graph
    names = {i.name for i in graph.input}
    if names != {"input", "state", "sr"} or {o.name for o in graph.output} != {"output", "stateN"}:
        raise SystemExit(f"unexpected Silero VAD signature: inputs {sorted(names)}")
    graph.node.insert(0, helper.make_node("Identity", ["audio"], ["input"]))
    graph.node.insert(1, helper.make_node("Transpose", ["vad_state"], ["state"], perm=[1, 0, 2]))
    graph.node.insert(2, helper.make_node("Constant", [], ["sr"], value=helper.make_tensor(
        "sr_value", TensorProto.INT64, [], [SAMPLE_RATE_HZ])))
    graph.node.append(helper.make_node("Identity", ["output"], ["speech"]))
    graph.node.append(helper.make_node("Transpose", ["stateN"], ["vad_state_out"], perm=[1, 0, 2]))
    del graph.input[:]
    graph.input.extend([
        helper.make_tensor_value_info("audio", TensorProto.FLOAT,
                                      ["B", CONTEXT_SAMPLES + FRAME_SAMPLES]),
        helper.make_tensor_value_info("vad_state", TensorProto.FLOAT, ["B", *STATE_SHAPE]),
    ])
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("speech", TensorProto.FLOAT, ["B", 1]),
        helper.make_tensor_value_info("vad_state_out", TensorProto.FLOAT, ["B", *STATE_SHAPE]),
    ])
    onnx.checker.check_model(model)
    return model


def write_model(out: Path) -> None:
    model = batch_first(onnx.load(str(source_path())))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    onnx.save(model, str(partial))
    os.replace(partial, out)  # atomic: a loading server never sees half a file


def add_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("silero-vad", help="Silero VAD ONNX, batch-first state")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.set_defaults(run=lambda args: (write_model(args.out), print(f"wrote {args.out}")))
