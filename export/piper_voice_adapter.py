"""Triton python-backend adapter for a Piper voice's VITS ONNX (embedded server only).

Copied as `piper_<voice>/1/model.py` by `python -m export piper-voice` (the python backend loads
model.py only from the model's own folder). The container serves the same `1/model.onnx` with the
onnxruntime backend (`config.pbtxt`); this file is what `configs/local.pbtxt` runs instead.
Inputs `input` INT64 [B, T] phoneme ids, `input_lengths` INT64 [B], `scales` FP32 [3]
(noise, length, noise_w); output `output` FP32 [B, 1, 1, samples].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUTS = ("input", "input_lengths", "scales")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        # no busy-waiting between sentences: the orchestrator shares these cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                        for name in INPUTS}
                (output,) = self.session.run(["output"], feed)
                response = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("output", output.astype(np.float32))])
            except Exception as exc:  # this request only
                response = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
            responses.append(response)
        return responses

    def finalize(self):
        self.session = None
