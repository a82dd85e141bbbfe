"""Typed async clients for the Triton models, over `tritonclient.grpc.aio`.

One gRPC channel per Triton URL is shared by all sessions, so concurrent lip-sync requests from
every session arrive at the same server and meet in its dynamic batcher.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

UNKNOWN_VOICE_MARKER = "unknown voice"


class UnknownVoice(LookupError):
    def __init__(self, voice: str) -> None:
        super().__init__(f"unknown voice '{voice}'")
        self.voice = voice


@dataclass(frozen=True)
class SpeechAudio:
    audio: np.ndarray  # float32 mono, 16 kHz
    phonemes: list[str]
    phoneme_times: np.ndarray  # float32 [P, 2] seconds
    words: list[str]
    word_times: np.ndarray  # float32 [W, 2] seconds


def _bytes_input(name: str, value: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
    return tensor


def _fp32_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    array = np.ascontiguousarray(array, dtype=np.float32)
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def _strings(array: np.ndarray | None) -> list[str]:
    if array is None:
        return []
    return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]


class TritonModelClient:
    """Shared channel plus server/model status; subclasses add one model's call."""

    def __init__(self, url: str, model: str) -> None:
        self.url = url
        self.model = model
        self._client = grpcclient.InferenceServerClient(url)

    async def server_status(self, models: list[str]) -> dict:
        live = await self._client.is_server_live()
        ready = await self._client.is_server_ready()
        states = {m: bool(await self._client.is_model_ready(m)) for m in models}
        return {"live": bool(live), "ready": bool(ready) and all(states.values()), "models": states}

    async def close(self) -> None:
        await self._client.close()


class TTSClient(TritonModelClient):
    def __init__(self, url: str, model: str = "tts_espeak") -> None:
        super().__init__(url, model)

    async def synthesize(self, text: str, voice: str) -> SpeechAudio:
        try:
            result = await self._client.infer(
                self.model, [_bytes_input("text", text), _bytes_input("voice", voice)]
            )
        except InferenceServerException as exc:
            if UNKNOWN_VOICE_MARKER in str(exc.message()):
                raise UnknownVoice(voice) from None
            raise
        return SpeechAudio(
            audio=result.as_numpy("audio").astype(np.float32, copy=False),
            phonemes=_strings(result.as_numpy("phonemes")),
            phoneme_times=result.as_numpy("phoneme_times").reshape(-1, 2),
            words=_strings(result.as_numpy("words")),
            word_times=result.as_numpy("word_times").reshape(-1, 2),
        )


class LipSyncClient(TritonModelClient):
    """Any lip-sync model with the `mel` / `face` / `mouth` → `face_out` signature."""

    def __init__(self, url: str, model: str = "lipsync_default") -> None:
        super().__init__(url, model)

    async def infer(self, mel: np.ndarray, face: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        result = await self._client.infer(
            self.model,
            [_fp32_input("mel", mel), _fp32_input("face", face), _fp32_input("mouth", mouth)],
        )
        return result.as_numpy("face_out")
