"""`--tts-fallback espeak`: the `--tts` engine, with eSpeak saying a sentence the engine's server
failed before its first audio (edgetts without internet, a cloning server that went down).

Without the flag nothing changes: a failed sentence ends its utterance with an `error` event
naming the engine. With it, the sentence is said by the fallback engine with the auto voice (the
text's language picks eSpeak's voice), resampled to the wrapped engine's rate so the chunks of
one engine keep one rate, and one rate-limited line says why. A server that fails after its
first audio still ends the utterance (what was heard cannot be said again by another voice).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from math import gcd

import numpy as np
from scipy.signal import resample_poly

from ..rate_limited_log import RateLimitedLog
from .base import TTSEngine, TTSServerError, Voice

log = logging.getLogger(__name__)


class FailoverEngine(TTSEngine):
    """`primary` as it is (name, voices, options, availability), `fallback` for the sentences
    its server fails before their first audio."""

    def __init__(self, primary: TTSEngine, fallback: TTSEngine) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.understood_options = primary.understood_options
        self._log = RateLimitedLog(log)

    @property
    def sample_rate_hz(self) -> int:
        return self.primary.sample_rate_hz

    async def check_voice(self, voice: Voice) -> None:
        await self.primary.check_voice(voice)

    async def check_available(self) -> None:
        await self.primary.check_available()

    @property
    def health_warning(self) -> str | None:
        return self.primary.health_warning

    @property
    def health_stale(self) -> bool:
        return self.primary.health_stale

    def speaks(self, text: str, voice: Voice) -> bool:
        return self.primary.speaks(text, voice)

    async def synthesize(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        started = False
        try:
            async for chunk in self.primary.synthesize(text, voice):
                started = True
                yield chunk
            return
        except TTSServerError as exc:
            if started:
                raise
            self._log.log(f"fallback {self.name}", logging.WARNING,
                          "tts %s failed before its first audio, %s says the sentence: %s",
                          self.name, self.fallback.name, exc)
        # The rate is read at each chunk: the fallback's, converted to the primary's.
        async for chunk in self.fallback.synthesize(text, Voice(ref_text=voice.ref_text)):
            yield _resampled(chunk, self.fallback.sample_rate_hz, self.primary.sample_rate_hz)

    async def close(self) -> None:
        await self.primary.close()  # the fallback is the router's own engine: it closes it


def _resampled(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """float32 mono `audio` at `to_hz` (polyphase; unchanged when the rates are equal)."""
    if from_hz == to_hz or not audio.size:
        return audio
    divisor = gcd(from_hz, to_hz)
    return resample_poly(audio, to_hz // divisor, from_hz // divisor).astype(np.float32)
