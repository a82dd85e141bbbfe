"""Triton python-backend adapter that serves the ONNX file beside it with onnxruntime.

The official Triton container runs the same model.onnx with its onnxruntime backend
(config.pbtxt); the wheel-embedded server used locally has only the python backend, so
configs/local.pbtxt points here. All requests of one execute() go through one onnxruntime call:
that is where frames of different sessions are batched.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"]))
                       for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        batches, sizes, responses = [], [], [None] * len(requests)
        for k, request in enumerate(requests):
            try:
                arrays = [pb_utils.get_input_tensor_by_name(request, name).as_numpy().astype(dtype, copy=False)
                          for name, dtype in self.inputs]
                batches.append((k, arrays))
                sizes.append(arrays[0].shape[0])
            except Exception as exc:  # this request only
                responses[k] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if batches:
            feeds = {name: np.concatenate([arrays[i] for _, arrays in batches])
                     for i, (name, _) in enumerate(self.inputs)}
            try:
                results = self.session.run(self.outputs, feeds)
            except Exception as exc:
                for k, _ in batches:
                    responses[k] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                return responses
            offsets = np.cumsum([0] + sizes)
            for (k, _), start, stop in zip(batches, offsets[:-1], offsets[1:]):
                responses[k] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(out[start:stop]))
                    for name, out in zip(self.outputs, results)
                ])
        return responses

    def finalize(self):
        self.session = None
