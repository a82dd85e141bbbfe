"""Triton python-backend model: eSpeak NG text-to-speech with phoneme and word timings.

Inputs `text`, `voice` (BYTES [1]); outputs `audio` (FP32 16 kHz), `phonemes`, `phoneme_times`,
`words`, `word_times` (see config.pbtxt). An unknown voice fails that request only, with a
message containing "unknown voice".

The python backend puts this version directory on sys.path, so the engine beside this file
imports by name (checked with Triton 2.51; `espeak_engine` is no installed package's name).
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from espeak_engine import ESpeakEngine


def _first_string(request, name: str) -> str:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"missing input '{name}'")
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise ValueError(f"input '{name}' must hold exactly one string, got {values.size}")
    value = values[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]
        }
        self.engine = ESpeakEngine()

    def _tensor(self, name: str, values) -> pb_utils.Tensor:
        dtype = self.output_dtypes[name]
        if dtype == np.object_:
            return pb_utils.Tensor(name, np.array([v.encode() for v in values], dtype=np.object_))
        return pb_utils.Tensor(name, np.ascontiguousarray(values, dtype=dtype))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                speech = self.engine.synthesize(_first_string(request, "text"),
                                                _first_string(request, "voice"))
                response = pb_utils.InferenceResponse(output_tensors=[
                    self._tensor("audio", speech.audio),
                    self._tensor("phonemes", speech.phonemes),
                    self._tensor("phoneme_times", speech.phoneme_times),
                    self._tensor("words", speech.words),
                    self._tensor("word_times", speech.word_times),
                ])
            except Exception as exc:  # this request only; the others still get their audio
                response = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
            responses.append(response)
        return responses

    def finalize(self):
        self.engine = None
