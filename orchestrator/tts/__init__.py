"""Text to speech: one interface (`base.TTSEngine`), one module per engine, a router.

Engines by `--tts` name. Adding one: a module with a `TTSEngine` subclass, an entry in
`ENGINES` (how to open it from the settings and the Triton URL) and its settings; the models it
needs Triton to serve go in `triton_models`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .base import AUTO_VOICE_NAME, TTSEngine, UnknownVoice, Voice, synthesize_all
from .espeak import ESPEAK_MODEL, ESpeakEngine
from .piper import PIPER_MODEL, PiperEngine, voice_model
from .router import TTSRouter

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["AUTO_VOICE_NAME", "ENGINES", "TTSEngine", "TTSRouter", "UnknownVoice", "Voice",
           "open_tts", "synthesize_all", "triton_models"]


async def _open_espeak(settings: Settings, triton_url: str) -> TTSEngine:
    return ESpeakEngine(triton_url, model=settings.tts_model)


async def _open_piper(settings: Settings, triton_url: str) -> TTSEngine:
    return await PiperEngine.open(triton_url, default_voice=settings.piper_voice)


# --tts NAME -> (open the engine, the Triton models it needs)
ENGINES: dict[str, tuple[Callable[[Settings, str], Awaitable[TTSEngine]],
                         Callable[[Settings], list[str]]]] = {
    "espeak": (_open_espeak, lambda s: [s.tts_model]),
    "piper": (_open_piper, lambda s: [PIPER_MODEL, voice_model(s.piper_voice)]),
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
