"""Triton python-backend model: eSpeak NG text-to-speech with phoneme and word timings."""

from __future__ import annotations

import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the engine sits beside this file
from espeak_engine import ESpeakEngine, UnknownVoice  # noqa: E402


def _bytes_tensor(name: str, values: list[str]) -> pb_utils.Tensor:
    return pb_utils.Tensor(name, np.array([v.encode() for v in values], dtype=np.object_))


class TritonPythonModel:
    def initialize(self, args):
        self.engine = ESpeakEngine()

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                text = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)[0]
                voice = pb_utils.get_input_tensor_by_name(request, "voice").as_numpy().reshape(-1)[0]
                speech = self.engine.synthesize(_text(text), _text(voice))
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("audio", speech.audio),
                    _bytes_tensor("phonemes", speech.phonemes),
                    pb_utils.Tensor("phoneme_times", speech.phoneme_times),
                    _bytes_tensor("words", speech.words),
                    pb_utils.Tensor("word_times", speech.word_times),
                ]))
            except (UnknownVoice, UnicodeDecodeError, ValueError) as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def finalize(self):
        self.engine = None


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
