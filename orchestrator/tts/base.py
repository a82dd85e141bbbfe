"""The one interface every text-to-speech engine implements, and the voice it is asked for.

An engine turns a piece of text (a sentence or clause; the speech pipeline cuts them) into mono
float32 audio chunks at its own `sample_rate_hz`. The pipeline resamples once, to its 16 kHz.
Adding an engine is one module implementing `TTSEngine` plus its settings (see
docs/INTERFACES.md, "TTS engines").
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from ..errors import ExternalServiceError

AUTO_VOICE_NAME = ""  # no voice asked for: the engines pick one by the text's language
MAX_VOICE_NAME_CHARS = 128


def plausible_voice_name(name: str) -> bool:
    """A name that could be a voice (asked of no server): short, no path, no NUL."""
    return (len(name) <= MAX_VOICE_NAME_CHARS and not any(c in name for c in "/\\\0")
            and ".." not in name)


class UnknownVoice(LookupError):
    """The voice is not one the engine (or any engine) has."""

    def __init__(self, voice: str) -> None:
        super().__init__(f"unknown voice '{voice}'")
        self.voice = voice


class TTSOptionError(ValueError):
    """A `tts` key's value the engine does not take (a wrong type, out of its range): the
    client's mistake, named in the message (`tts.speed must be ...`). The utterance ends with it
    as its `error` event; the server logs one line, not a fault."""


class TTSServerError(ExternalServiceError, RuntimeError):
    """A TTS server failed one synthesis (down, 4xx/5xx, not audio): that utterance ends with
    an error event; the session goes on."""


class TTSServerUnavailable(TTSServerError):
    """A TTS server cannot be reached at all: /offer and /human answer 503 naming it."""


@dataclass(frozen=True)
class Voice:
    """Who speaks: what `/offer`'s `refaudio`/`reftext` and `/human`'s `tts` object say.

    `name` picks the voice: an eSpeak voice (`en-us`, `cmn`), a Piper voice (`joe`), or, for
    voice-cloning engines, a reference clip in data/voices/ or a server-side voice id.
    `ref_audio` is that reference clip (a path or a server-side id) for engines that clone,
    `ref_text` its transcript; `options` carries the other keys of `/human`'s `tts` object for
    engines that understand them (speed, emotion, ...); others ignore them.
    """

    name: str = AUTO_VOICE_NAME
    ref_audio: str = ""
    ref_text: str = ""
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def named(cls, name: str, ref_text: str = "",
              options: Mapping[str, object] | None = None) -> Voice:
        """A voice picked by name; the name doubles as the reference clip for cloning engines."""
        return cls(name, name, ref_text, MappingProxyType(dict(options or {})))

    @property
    def auto(self) -> bool:
        return self.name == AUTO_VOICE_NAME


class TTSEngine(abc.ABC):
    """A text-to-speech engine (eSpeak on Triton, Piper on Triton, a cloning server, ...)."""

    #: registry name (`--tts NAME`), also used in logs and the bench
    name: str = ""
    #: the `Voice.options` keys this engine reads; the router logs any other once per engine
    understood_options: frozenset[str] = frozenset()

    @property
    @abc.abstractmethod
    def sample_rate_hz(self) -> int:
        """The rate of every chunk `synthesize` yields."""

    @abc.abstractmethod
    def synthesize(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        """Mono float32 chunks in [-1, 1] as they become ready (an async generator).

        Raises UnknownVoice for a voice the engine does not have. Cancelling the consumer
        (interruption) must stop the work behind it: close streams in `finally`.
        """

    @abc.abstractmethod
    async def check_voice(self, voice: Voice) -> None:
        """Raises UnknownVoice when the engine cannot speak with `voice`; cheap after the
        first call for a name (engines remember what they checked)."""

    async def check_available(self) -> None:  # noqa: B027 - local engines are always there
        """Raises TTSServerUnavailable when the engine's server cannot be reached now (asked
        on every /offer and /human; engines keep the answer a few seconds)."""

    @property
    def health_warning(self) -> str | None:
        """Why the engine's server looks unusable as last seen (unreachable, a wrong URL), for
        /healthz; None when fine or unknown. Never asks the server (see `check_available`)."""
        return None

    @property
    def health_stale(self) -> bool:
        """Whether `health_warning` is old enough to be asked again (`check_available`)."""
        return False

    def speaks(self, text: str, voice: Voice) -> bool:  # noqa: ARG002 - engines may override
        """Whether this engine can say `text` (its language) in `voice`; the router sends
        what an engine cannot say to the fallback engine. Default: anything."""
        return True

    async def close(self) -> None:  # noqa: B027 - engines without resources need no close
        """Release connections; nothing is synthesised afterwards."""


async def synthesize_all(engine: TTSEngine, text: str, voice: Voice) -> np.ndarray:
    """Every chunk of one synthesis, joined (tests, bench, voice checks)."""
    chunks = [c async for c in engine.synthesize(text, voice)]
    return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
