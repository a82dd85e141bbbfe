"""Any OpenAI-compatible speech server: `POST /v1/audio/speech` with JSON.

Fields: `model`, `input` (the text), `voice` (the server's voice id: `refaudio`, else
`--tts-voice`), `response_format: "pcm"` (raw 16-bit mono PCM at 24,000 Hz, as OpenAI documents;
`--tts-sample-rate` for servers that differ) streamed as it is made; `speed` (0.25-4.0) and
`instructions` from `/human`'s `tts` object. `--tts-api-key` (or TTS_API_KEY) is sent as a bearer
token. With `tts.response_format: "wav"` the rate comes from the WAV header instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from .base import Voice
from .cloning import HTTPCloningEngine, passed_options
from .http_audio import HTTPVoiceServer
from .reference_voices import VoiceStore

OPENAI_PCM_SAMPLE_RATE_HZ = 24000
DEFAULT_OPENAI_VOICE = "alloy"
DEFAULT_OPENAI_MODEL = "tts-1"
OPTIONS = {"speed": (int, float), "instructions": str, "model": str, "response_format": str}
FORMATS = ("pcm", "wav")


class OpenAISpeechEngine(HTTPCloningEngine):
    name = "openai"
    understood_options = frozenset(OPTIONS)
    needs_voice = False  # --tts-voice is the default

    def __init__(self, server: HTTPVoiceServer, voices: VoiceStore, sample_rate_hz: int,
                 default_voice: str = "", model: str = DEFAULT_OPENAI_MODEL) -> None:
        super().__init__(server, voices, sample_rate_hz, default_voice or DEFAULT_OPENAI_VOICE)
        self.model = model
        self.pcm_rate_hz = sample_rate_hz  # raw PCM carries no rate: the documented one

    def request(self, text: str, voice: Voice) -> dict:
        options = passed_options(voice.options, OPTIONS)
        if options.get("response_format", "pcm") not in FORMATS:
            raise ValueError(f"tts.response_format must be one of {', '.join(FORMATS)}")
        return {"model": self.model, "input": text, "voice": self._name(voice),
                "response_format": "pcm", **options}

    async def _audio(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        body = self.request(text, voice)
        if body["response_format"] == "pcm":
            self._rate_hz = self.pcm_rate_hz
        async for chunk in self._pcm("POST", "/v1/audio/speech",
                                     wav=body["response_format"] == "wav", json=body):
            yield chunk
