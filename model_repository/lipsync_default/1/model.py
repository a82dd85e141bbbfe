"""Triton python-backend adapter that serves the ONNX file beside it with onnxruntime.

The official Triton container runs the same model.onnx with its onnxruntime backend
(config.pbtxt); the wheel-embedded server used locally has only the python backend, so
configs/local.pbtxt points here. Generic: input and output names and dtypes come from the model
config, so the file can be copied unchanged next to any batched ONNX model.

All requests of one execute() (the dynamic batcher's batch) go through one onnxruntime call,
concatenated along the batch dimension and split back: that is where frames of different
sessions are batched. Requests whose non-batch shapes differ run in separate calls.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

MODEL_FILENAME = "model.onnx"
# The `graph_optimization_level` parameter's values (onnxruntime's default: all).
GRAPH_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _error_response(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if config.get("max_batch_size", 0) <= 0:
            raise ValueError("this adapter serves batched models: set max_batch_size > 0")
        self.inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"]))
                       for i in config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"]))
                        for o in config["output"]]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        level = params.get("graph_optimization_level", "all")
        if level not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(f"parameter graph_optimization_level: {level!r} is not one of "
                             f"{sorted(GRAPH_OPTIMIZATION_LEVELS)}")
        options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[level]
        # no busy-waiting between batches: the orchestrator shares these cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # args["model_repository"] is this model's directory (not the repository root)
        path = os.path.join(args["model_repository"], args["model_version"], MODEL_FILENAME)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        missing = [name for name, _ in self.inputs if name not in onnx_inputs]
        if missing:
            raise ValueError(f"{path} has no input(s) {missing}; it has {sorted(onnx_inputs)}")

    def _read(self, request) -> list[np.ndarray]:
        arrays = []
        for name, dtype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input '{name}'")
            arrays.append(tensor.as_numpy().astype(dtype, copy=False))
        sizes = {a.shape[0] for a in arrays}
        if len(sizes) != 1:
            raise ValueError(f"inputs differ in batch size: {sorted(sizes)}")
        return arrays

    def execute(self, requests):
        responses = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[np.ndarray]]]] = {}
        for k, request in enumerate(requests):
            try:
                arrays = self._read(request)
            except Exception as exc:  # this request only
                responses[k] = _error_response(str(exc))
                continue
            signature = tuple(a.shape[1:] for a in arrays)
            groups.setdefault(signature, []).append((k, arrays))
        for members in groups.values():
            self._run(members, responses)
        return responses

    def _run(self, members: list[tuple[int, list[np.ndarray]]], responses: list) -> None:
        """One onnxruntime call for `members`; fills their responses (outputs or the error)."""
        try:
            # One request (one session's chunk): its tensors as they are, no copy.
            feeds = {name: (members[0][1][i] if len(members) == 1
                            else np.concatenate([arrays[i] for _, arrays in members]))
                     for i, (name, _) in enumerate(self.inputs)}
            results = self.session.run([name for name, _ in self.outputs], feeds)
        except Exception as exc:
            for k, _ in members:
                responses[k] = _error_response(f"onnxruntime: {exc}")
            return
        start = 0
        for k, arrays in members:
            stop = start + arrays[0].shape[0]
            responses[k] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(out[start:stop], dtype=dtype))
                for (name, dtype), out in zip(self.outputs, results)
            ])
            start = stop

    def finalize(self):
        self.session = None
