"""eSpeak NG on Triton (`tts_espeak`): every language eSpeak has, with phoneme and word timings.

The fallback engine: it speaks whatever the default engine cannot (Chinese, other languages).
Voice names are eSpeak's (`en-us`, `cmn`, `yue`, `fr`, `en-us+f3`); the auto voice picks `cmn`
for Chinese text, else `en-us` (in the model).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from tritonclient.utils import InferenceServerException

from ..media.clock import AUDIO_SAMPLE_RATE_HZ
from ..settings import DEFAULT_TTS_MODEL
from ..triton.client import DEFAULT_TIMEOUT_S, TritonModelClient, bytes_input, strings, times
from .base import TTSEngine, UnknownVoice, Voice, plausible_voice_name

ESPEAK_MODEL = DEFAULT_TTS_MODEL  # "tts_espeak": named once, in settings (--tts-model's default)
# The model resamples eSpeak's 22050 Hz itself (its timings too), to the pipeline's rate.
ESPEAK_SAMPLE_RATE_HZ = AUDIO_SAMPLE_RATE_HZ
UNKNOWN_VOICE_MARKER = "unknown voice"


@dataclass(frozen=True)
class SpeechAudio:
    audio: np.ndarray  # float32 mono, 16 kHz
    phonemes: list[str]  # eSpeak mnemonics; pauses start with "_"
    phoneme_times: np.ndarray  # float32 [P, 2] start, end in seconds
    words: list[str]
    word_times: np.ndarray  # float32 [W, 2] start, end in seconds

    @property
    def duration_s(self) -> float:
        return self.audio.size / ESPEAK_SAMPLE_RATE_HZ


class ESpeakEngine(TTSEngine):
    name = "espeak"

    def __init__(self, url: str, model: str = ESPEAK_MODEL,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._model = TritonModelClient(url, model, timeout_s)
        self._known: set[str] = set()

    @property
    def sample_rate_hz(self) -> int:
        return ESPEAK_SAMPLE_RATE_HZ

    async def speech(self, text: str, voice_name: str) -> SpeechAudio:
        """Audio with its timings. Raises UnknownVoice ("" = pick by language)."""
        try:
            result = await self._model.run([bytes_input("text", text),
                                            bytes_input("voice", voice_name)])
        except InferenceServerException as exc:
            if UNKNOWN_VOICE_MARKER in str(exc.message()):
                raise UnknownVoice(voice_name) from None
            raise
        audio = result.as_numpy("audio")
        return SpeechAudio(
            audio=(audio if audio is not None else np.zeros(0)).astype(np.float32, copy=False),
            phonemes=strings(result.as_numpy("phonemes")),
            phoneme_times=times(result.as_numpy("phoneme_times")),
            words=strings(result.as_numpy("words")),
            word_times=times(result.as_numpy("word_times")),
        )

    async def synthesize(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        yield (await self.speech(text, voice.name)).audio

    async def check_voice(self, voice: Voice) -> None:
        if voice.name in self._known:
            return
        if not plausible_voice_name(voice.name):
            raise UnknownVoice(voice.name)
        await self.speech("a", voice.name)
        self._known.add(voice.name)

    async def close(self) -> None:
        await self._model.close()
