"""Triton python-backend model: Piper text-to-speech, the glue around the voice's ONNX.

Inputs `text`, `voice` (BYTES [1]; "" = the `default_voice` parameter) and optionally `scales`
(FP32 [3]: noise_scale, length_scale, noise_w as Piper names them; NaN keeps the voice's own
value from its `.onnx.json`); output `audio` (FP32, mono, at the `sample_rate_hz` parameter).
Per sentence: eSpeak NG phonemes -> the voice's phoneme ids (piper_phonemes.py) -> the voice's
VITS ONNX, which is a Triton model of its own (`piper_<voice>`, called through BLS): the
container serves it with the onnxruntime backend, the embedded server with a python adapter.
The voice's `.onnx.json` sits in that model's folder (`<repository>/piper_<voice>/
voice.onnx.json`, written by `python -m export piper-voice`).
An unknown voice fails that request only, with a message containing "unknown voice".
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from piper_phonemes import ESpeakPhonemizer, PhonemeIds, UnknownVoice
from scipy.signal import resample_poly

VOICE_MODEL_PREFIX = "piper_"
VOICE_CONFIG_FILE = "voice.onnx.json"
VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _first_string(request, name: str) -> str:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"missing input '{name}'")
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise ValueError(f"input '{name}' must hold exactly one string, got {values.size}")
    value = values[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _Voice:
    def __init__(self, name: str, config: dict) -> None:
        self.model = VOICE_MODEL_PREFIX + name
        self.ids = PhonemeIds(config["phoneme_id_map"])
        self.espeak_voice = config.get("espeak", {}).get("voice", "en-us")
        self.rate_hz = int(config["audio"]["sample_rate"])
        inference = config.get("inference", {})
        self.scales = np.array([inference.get("noise_scale", 0.667),
                                inference.get("length_scale", 1.0),
                                inference.get("noise_w", 0.8)], np.float32)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.rate_hz = int(parameters.get("sample_rate_hz", "22050"))
        self.default_voice = parameters.get("default_voice", "joe")
        self.repository = Path(args["model_repository"]).parent  # args names this model's dir
        self.phonemizer = ESpeakPhonemizer()
        self.voices: dict[str, _Voice] = {}

    def _voice(self, name: str) -> _Voice:
        name = name or self.default_voice
        if name not in self.voices:
            path = self.repository / (VOICE_MODEL_PREFIX + name) / VOICE_CONFIG_FILE
            if not VOICE_NAME.fullmatch(name) or not path.is_file():
                raise UnknownVoice(name)
            self.voices[name] = _Voice(name, json.loads(path.read_text(encoding="utf-8")))
        return self.voices[name]

    def _vits(self, voice: _Voice, ids: np.ndarray, scales: np.ndarray) -> np.ndarray:
        request = pb_utils.InferenceRequest(
            model_name=voice.model,
            inputs=[pb_utils.Tensor("input", ids[None, :]),
                    pb_utils.Tensor("input_lengths", np.array([ids.size], np.int64)),
                    pb_utils.Tensor("scales", scales)],
            requested_output_names=["output"],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{voice.model}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, "output").as_numpy().reshape(-1)

    def synthesize(self, text: str, voice_name: str, asked: np.ndarray | None) -> np.ndarray:
        voice = self._voice(voice_name)
        scales = voice.scales
        if asked is not None:
            asked = asked.reshape(-1).astype(np.float32)
            if asked.size != 3 or np.isinf(asked).any() or (asked < 0).any():
                raise ValueError("input 'scales' must hold 3 finite values >= 0 (or NaN)")
            scales = np.where(np.isnan(asked), voice.scales, asked).astype(np.float32)
            if scales[1] <= 0:
                raise ValueError("length_scale must be > 0")
        pieces = [self._vits(voice, voice.ids.ids(sentence), scales)
                  for sentence in self.phonemizer.sentences(text, voice.espeak_voice)]
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        if voice.rate_hz != self.rate_hz and audio.size:  # a voice recorded at another rate
            g = math.gcd(self.rate_hz, voice.rate_hz)
            audio = resample_poly(audio, self.rate_hz // g, voice.rate_hz // g)
        return np.clip(audio, -1.0, 1.0).astype(np.float32)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                scales = pb_utils.get_input_tensor_by_name(request, "scales")
                audio = self.synthesize(_first_string(request, "text"),
                                        _first_string(request, "voice"),
                                        None if scales is None else scales.as_numpy())
                response = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("audio", audio)])
            except Exception as exc:  # this request only; the others still get their audio
                response = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
            responses.append(response)
        return responses

    def finalize(self):
        self.phonemizer = None
