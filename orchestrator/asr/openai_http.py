"""Any OpenAI-compatible `/v1/audio/transcriptions` server (`--asr-url`): whisper.cpp's server,
faster-whisper-server, a SenseVoice/FunASR wrapper, OpenAI itself.

One multipart POST per utterance: `file` (16-bit WAV, 16 kHz mono), `model`, optionally
`language`, `response_format=json`; the answer is `{"text": ...}`.
"""

from __future__ import annotations

import aiohttp
import numpy as np

from ..media.wav_file import wav_bytes
from .base import ASR_SAMPLE_RATE_HZ, ASREngine, ASRError

DEFAULT_ASR_MODEL = "whisper-1"
TRANSCRIPTIONS_PATH = "/audio/transcriptions"
ASR_HTTP_TIMEOUT_S = 30.0


class OpenAITranscription(ASREngine):
    name = "openai"

    def __init__(self, base_url: str, model: str = DEFAULT_ASR_MODEL, api_key: str = "",
                 language: str = "") -> None:
        base = base_url.rstrip("/")
        # `--asr-url http://host:port` or `.../v1`: both name the same endpoint
        self.url = base + ("" if base.endswith("/v1") else "/v1") + TRANSCRIPTIONS_PATH
        self.model = model or DEFAULT_ASR_MODEL
        self.language = language
        self._http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
            timeout=aiohttp.ClientTimeout(total=ASR_HTTP_TIMEOUT_S))

    async def transcribe(self, audio: np.ndarray) -> str:
        form = aiohttp.FormData()
        form.add_field("file", wav_bytes(audio, ASR_SAMPLE_RATE_HZ), filename="speech.wav", content_type="audio/wav")
        form.add_field("model", self.model)
        form.add_field("response_format", "json")
        if self.language:
            form.add_field("language", self.language)
        try:
            async with self._http.post(self.url, data=form) as resp:
                if resp.status != 200:
                    raise ASRError(f"ASR server {self.url} answered {resp.status}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ASRError(f"ASR server {self.url}: {type(exc).__name__}") from None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise ASRError(f"ASR server {self.url}: no 'text' in its answer")
        return text.strip()

    async def close(self) -> None:
        await self._http.close()
