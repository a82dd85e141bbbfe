"""Text to speech: one interface (`base.TTSEngine`), one module per engine, a router.

Engines by `--tts` name. Adding one: a module with a `TTSEngine` subclass, an entry in
`ENGINES` (how to open it from the settings and the Triton URL) and its settings; the models it
needs Triton to serve go in `triton_models`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .base import (
    AUTO_VOICE_NAME,
    TTSEngine,
    TTSServerError,
    TTSServerUnavailable,
    UnknownVoice,
    Voice,
    synthesize_all,
)
from .cosyvoice import COSYVOICE_SAMPLE_RATE_HZ, CosyVoiceEngine
from .espeak import ESPEAK_MODEL, ESpeakEngine
from .fish_speech import FISH_SAMPLE_RATE_HZ, FishSpeechEngine
from .gpt_sovits import GPT_SOVITS_SAMPLE_RATE_HZ, GPTSoVITSEngine
from .http_audio import HTTPVoiceServer
from .openai_speech import DEFAULT_OPENAI_MODEL, OPENAI_PCM_SAMPLE_RATE_HZ, OpenAISpeechEngine
from .piper import PIPER_MODEL, PiperEngine, voice_model
from .reference_voices import VoiceStore
from .router import TTSRouter

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["AUTO_VOICE_NAME", "ENGINES", "TTSEngine", "TTSRouter", "TTSServerError",
           "TTSServerUnavailable", "UnknownVoice", "Voice", "open_tts", "synthesize_all",
           "triton_models"]


async def _open_espeak(settings: Settings, triton_url: str) -> TTSEngine:
    return ESpeakEngine(triton_url, model=settings.tts_model)


async def _open_piper(settings: Settings, triton_url: str) -> TTSEngine:
    return await PiperEngine.open(triton_url, default_voice=settings.piper_voice)


# Voice-cloning servers: where each usually listens (their own defaults) when --tts-server
# is not given.
DEFAULT_SERVER_URLS = {"cosyvoice": "http://127.0.0.1:50000", "gpt-sovits": "http://127.0.0.1:9880",
                       "fishtts": "http://127.0.0.1:8080", "openai": "http://127.0.0.1:8000"}


def _server(settings: Settings, name: str) -> HTTPVoiceServer:
    headers = {"Authorization": f"Bearer {settings.tts_api_key}"} if settings.tts_api_key else {}
    return HTTPVoiceServer(name, settings.tts_server or DEFAULT_SERVER_URLS[name], headers)


async def _open_cosyvoice(settings: Settings, triton_url: str) -> TTSEngine:
    return CosyVoiceEngine(_server(settings, "cosyvoice"), VoiceStore(settings.data_dir),
                           settings.tts_sample_rate_hz or COSYVOICE_SAMPLE_RATE_HZ,
                           settings.ref_file)


async def _open_gpt_sovits(settings: Settings, triton_url: str) -> TTSEngine:
    return GPTSoVITSEngine(_server(settings, "gpt-sovits"), VoiceStore(settings.data_dir),
                           GPT_SOVITS_SAMPLE_RATE_HZ, settings.ref_file, settings.tts_ref_dir)


async def _open_fish(settings: Settings, triton_url: str) -> TTSEngine:
    return FishSpeechEngine(_server(settings, "fishtts"), VoiceStore(settings.data_dir),
                            FISH_SAMPLE_RATE_HZ, settings.ref_file)


async def _open_openai(settings: Settings, triton_url: str) -> TTSEngine:
    return OpenAISpeechEngine(_server(settings, "openai"), VoiceStore(settings.data_dir),
                              settings.tts_sample_rate_hz or OPENAI_PCM_SAMPLE_RATE_HZ,
                              settings.tts_voice, settings.tts_model_name or DEFAULT_OPENAI_MODEL)


# --tts NAME -> (open the engine, the Triton models it needs)
ENGINES: dict[str, tuple[Callable[[Settings, str], Awaitable[TTSEngine]],
                         Callable[[Settings], list[str]]]] = {
    "espeak": (_open_espeak, lambda s: [s.tts_model]),
    "piper": (_open_piper, lambda s: [PIPER_MODEL, voice_model(s.piper_voice)]),
    "cosyvoice": (_open_cosyvoice, lambda s: []),
    "gpt-sovits": (_open_gpt_sovits, lambda s: []),
    "fishtts": (_open_fish, lambda s: []),
    "openai": (_open_openai, lambda s: []),
}
FALLBACK_ENGINE = "espeak"  # speaks every language: what the default engine cannot say


def triton_models(settings: Settings) -> list[str]:
    """Every Triton model the configured engines need (the supervisor watches them)."""
    names = [settings.tts, FALLBACK_ENGINE] if settings.tts != FALLBACK_ENGINE else [FALLBACK_ENGINE]
    models: list[str] = []
    for name in names:
        models += [m for m in ENGINES[name][1](settings) if m not in models]
    return models


async def open_tts(settings: Settings, triton_url: str) -> TTSRouter:
    """The router over the configured engine and the eSpeak fallback."""
    names = [settings.tts] + ([FALLBACK_ENGINE] if settings.tts != FALLBACK_ENGINE else [])
    engines: list[TTSEngine] = []
    try:
        for name in names:
            engines.append(await ENGINES[name][0](settings, triton_url))
    except Exception:
        for engine in engines:
            await engine.close()
        raise
    return TTSRouter(engines)


__all__ += ["ESPEAK_MODEL", "ESpeakEngine", "PIPER_MODEL", "PiperEngine"]
