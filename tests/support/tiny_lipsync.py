"""A tiny lip-sync model with lipsync_default's tensors and its python-backend adapter, served by
its own embedded Triton (conftest.py's fixtures `tiny_repository`, `tiny_triton`): fast enough to
test batching and process lifetime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from orchestrator.lipsync.default import DEFAULT_LIPSYNC_MODEL as LIPSYNC_MODEL

TINY_MODEL = "tiny_lipsync"


TINY_CROP_PX = 8


def _tiny_lipsync_onnx() -> onnx.ModelProto:
    """face_out = face * 0.5 + mean(mel) + mean(mouth), per batch item; lipsync_default's I/O."""
    b = "batch"
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["face", "half"], ["scaled"]),
            helper.make_node("ReduceMean", ["mel"], ["mel_mean"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("ReduceMean", ["mouth"], ["mouth_mean2"], axes=[1], keepdims=1),
            helper.make_node("Unsqueeze", ["mouth_mean2", "axes23"], ["mouth_mean"]),
            helper.make_node("Add", ["scaled", "mel_mean"], ["with_mel"]),
            helper.make_node("Add", ["with_mel", "mouth_mean"], ["face_out"]),
        ],
        "tiny_lipsync",
        [
            helper.make_tensor_value_info("mel", TensorProto.FLOAT, [b, 1, 80, 16]),
            helper.make_tensor_value_info("face", TensorProto.FLOAT, [b, 3, "size", "size"]),
            helper.make_tensor_value_info("mouth", TensorProto.FLOAT, [b, 4]),
        ],
        [helper.make_tensor_value_info("face_out", TensorProto.FLOAT, [b, 3, "size", "size"])],
        initializer=[
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("axes23", TensorProto.INT64, [2], [2, 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _tiny_expected(mel: np.ndarray, face: np.ndarray, mouth: np.ndarray) -> np.ndarray:
    return (face * 0.5 + mel.mean(axis=(1, 2, 3))[:, None, None, None]
            + mouth.mean(axis=1)[:, None, None, None]).astype(np.float32)


def _tiny_inputs(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, ...]:
    return (rng.uniform(-4, 4, (batch, 1, 80, 16)).astype(np.float32),
            rng.uniform(0, 1, (batch, 3, TINY_CROP_PX, TINY_CROP_PX)).astype(np.float32),
            rng.uniform(0, 1, (batch, 4)).astype(np.float32))


def _with_name(config: str, name: str, size: int) -> str:
    """lipsync_default's config text for the tiny model: its name, its crop size."""
    return (config.replace(f'name: "{LIPSYNC_MODEL}"', f'name: "{name}"')
            .replace("128, 128", f"{size}, {size}"))
