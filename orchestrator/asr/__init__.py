"""Speech recognition engines behind one interface (`base.ASREngine`)."""

from __future__ import annotations

from ..settings import Settings
from .base import ASR_SAMPLE_RATE_HZ, MAX_UTTERANCE_S, ASREngine, ASRError
from .openai_http import OpenAITranscription
from .whisper import WHISPER_MODEL, WhisperOnTriton

__all__ = ["ASR_SAMPLE_RATE_HZ", "MAX_UTTERANCE_S", "ASREngine", "ASRError", "OpenAITranscription",
           "WHISPER_MODEL", "WhisperOnTriton", "asr_triton_models", "open_asr"]


def asr_triton_models(settings: Settings) -> list[str]:
    """The Triton models speech recognition needs: Whisper unless --asr-url."""
    return [] if settings.asr_url else [WHISPER_MODEL]


def open_asr(settings: Settings, triton_url: str) -> ASREngine:
    if settings.asr_url:
        return OpenAITranscription(settings.asr_url, settings.asr_model_name,
                                   settings.asr_api_key, settings.asr_language)
    return WhisperOnTriton(triton_url)
