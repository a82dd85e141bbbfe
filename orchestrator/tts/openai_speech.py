"""Any OpenAI-compatible speech server: `POST /v1/audio/speech` with JSON (and vLLM-Omni's, `--tts omnitts`).

Fields: `model`, `input` (the text), `voice` (the server's voice id: `refaudio`, else
`--tts-voice`), `response_format: "pcm"` (raw 16-bit mono PCM at 24,000 Hz, as OpenAI documents;
`--tts-sample-rate` for servers that differ) streamed as it is made; `speed` (0.25-4.0) and
`instructions` from `/human`'s `tts` object. `--tts-api-key` (or TTS_API_KEY) is sent as a bearer
token. With `tts.response_format: "wav"` the rate comes from the WAV header instead.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import numpy as np

from .base import TTSOptionError, Voice
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
            raise TTSOptionError(f"tts.response_format must be one of {', '.join(FORMATS)}")
        return {"model": self.model, "input": text, "voice": self._name(voice),
                "response_format": "pcm", **options}

    async def _audio(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        body = self.request(text, voice)
        if body["response_format"] == "pcm":
            self._rate_hz = self.pcm_rate_hz
        async for chunk in self._pcm("POST", "/v1/audio/speech",
                                     wav=body["response_format"] == "wav", json=body):
            yield chunk


# --- vLLM-Omni (LiveTalking's `omnitts`) -------------------------------------------------------
OMNI_DEFAULT_VOICE = "vivian"  # Qwen3-TTS CustomVoice's default speaker (and LiveTalking's)
OMNI_SAMPLE_RATE_HZ = 24000  # Qwen3-TTS; fishaudio/s2-pro 44,100, Voxtral/VoxCPM2 16,000
OMNI_REFERENCE_RATE_HZ = 24000  # Qwen3-TTS's speech tokenizer rate, for a clip sent to clone
OMNI_OPTIONS = {**OPTIONS, "language": str, "task_type": str, "max_new_tokens": int,
                "stream": bool, "x_vector_only_mode": bool}


class OmniSpeechEngine(OpenAISpeechEngine):
    """vLLM-Omni's `/v1/audio/speech` (Qwen3-TTS, Fish S2, CosyVoice3, Voxtral, VoxCPM2...):
    OpenAI's fields plus its own (`language`, `task_type`, `instructions`, `max_new_tokens`).

    Its models answer at 16 to 44.1 kHz, so the answer is asked as WAV (its default) and the rate
    read from its header, never assumed (`tts.response_format: "pcm"` with `tts.stream: true`
    streams raw PCM at --tts-sample-rate instead). A registered clip is cloned: `task_type:
    "Base"`, `ref_audio` a base64 data URL of the clip at 24 kHz, `ref_text` its transcript.
    Any other voice name is the server's speaker (`vivian`, `ryan`...); `model` is sent only when
    --tts-model-name is given (the server serves one model).
    """

    name = "omnitts"
    understood_options = frozenset(OMNI_OPTIONS)
    reference_rate_hz = OMNI_REFERENCE_RATE_HZ

    def __init__(self, server: HTTPVoiceServer, voices: VoiceStore, sample_rate_hz: int,
                 default_voice: str = "", model: str = "") -> None:
        super().__init__(server, voices, sample_rate_hz, default_voice or OMNI_DEFAULT_VOICE,
                         model)

    async def omni_request(self, text: str, voice: Voice) -> dict:
        options = passed_options(voice.options, OMNI_OPTIONS)
        if options.get("response_format", "wav") not in FORMATS:
            raise TTSOptionError(f"tts.response_format must be one of {', '.join(FORMATS)}")
        body: dict = {"input": text, "response_format": "wav", **options}
        if self.model:
            body["model"] = self.model
        clip, transcript = self.reference(voice)
        if clip is None:
            body["voice"] = self._name(voice)
        else:
            wav = await self.reference_wav(clip)
            body.setdefault("task_type", "Base")
            body["ref_audio"] = "data:audio/wav;base64," + base64.b64encode(wav).decode()
            if transcript:
                body["ref_text"] = transcript
        return body

    async def _audio(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        body = await self.omni_request(text, voice)
        if body["response_format"] == "pcm":
            self._rate_hz = self.pcm_rate_hz
        async for chunk in self._pcm("POST", "/v1/audio/speech",
                                     wav=body["response_format"] == "wav", json=body):
            yield chunk
