"""What the voice-cloning engines share above HTTP: resolving `Voice` to a registered reference
clip (data/voices/) or to a server-side voice id, the text's language, and `tts` options.

A voice name that is a registered clip is sent as reference audio (with its transcript, unless
the request gives one); any other plausible name is the server's own voice id (CosyVoice
speaker, Fish-Speech reference id, OpenAI voice, GPT-SoVITS server-side file).
"""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator, Mapping

import numpy as np

from .base import (
    TTSEngine,
    TTSOptionError,
    TTSServerError,
    UnknownVoice,
    Voice,
    plausible_voice_name,
)
from .http_audio import MAX_RATE_HZ, MIN_RATE_HZ, HTTPVoiceServer, PCMDecoder, pcm_chunks
from .reference_voices import VOICES_DIR_NAME, ReferenceVoice, VoiceStore


def passed_options(options: Mapping[str, object], allowed: Mapping[str, type | tuple]) -> dict:
    """The `tts` keys this server understands, with the JSON types it takes; a wrong type is a
    TTSOptionError naming the key (the utterance ends with it as its error)."""
    out = {}
    for key, kinds in allowed.items():
        if key not in options:
            continue
        value = options[key]
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            raise TTSOptionError(f"tts.{key} must be {_names(kinds)}, not a boolean")
        if not isinstance(value, kinds):
            raise TTSOptionError(f"tts.{key} must be {_names(kinds)}")
        out[key] = value
    return out


def _names(kinds: type | tuple) -> str:
    return " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))


class HTTPCloningEngine(TTSEngine):
    """A voice-cloning server over HTTP. Subclasses say how one sentence is asked for
    (`_audio`); this class owns the server connection and the voice rules."""

    #: the engine cannot speak without a reference clip or server voice (CosyVoice, GPT-SoVITS)
    needs_voice = True
    #: the rate a registered clip is sent at (what the server reads; None: the clip as stored)
    reference_rate_hz: int | None = None

    def __init__(self, server: HTTPVoiceServer, voices: VoiceStore, sample_rate_hz: int,
                 default_voice: str = "") -> None:
        self.server = server
        self.voices = voices
        self.default_voice = default_voice
        # The rate of the chunks yielded: the documented one until a response's WAV header says.
        self._rate_hz = sample_rate_hz

    @property
    def sample_rate_hz(self) -> int:
        return self._rate_hz

    def _name(self, voice: Voice) -> str:
        return self.default_voice if voice.auto else voice.name

    def reference(self, voice: Voice) -> tuple[ReferenceVoice | None, str]:
        """(the registered clip, or None for a server-side voice id; the transcript: the
        request's, else the registered one)."""
        clip = self.voices.get(self._name(voice))
        text = voice.ref_text or (clip.text if clip else "")
        return clip, text

    async def reference_wav(self, clip: ReferenceVoice) -> bytes:
        """The registered clip as WAV bytes at `reference_rate_hz` (resampled from the rate it
        was stored at when they differ). Raises TTSServerError when the file cannot be read."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, clip.wav_at, self.reference_rate_hz)
        except (OSError, EOFError, wave.Error) as exc:
            raise TTSServerError(f"reference voice '{clip.name}' cannot be read: "
                                 f"{type(exc).__name__}") from None

    async def check_available(self) -> None:
        await self.server.probe()

    @property
    def health_warning(self) -> str | None:
        return self.server.problem

    @property
    def health_stale(self) -> bool:
        return not self.server.checked_recently

    async def check_voice(self, voice: Voice) -> None:
        name = self._name(voice)
        if not name or not plausible_voice_name(name):
            raise UnknownVoice(name)

    def speaks(self, text: str, voice: Voice) -> bool:
        return bool(self._name(voice)) or not self.needs_voice

    async def synthesize(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        name = self._name(voice)
        if self.needs_voice and not name:
            raise UnknownVoice(name)
        async for chunk in self._audio(text, voice):
            yield chunk

    def _audio(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        raise NotImplementedError

    async def _pcm(self, method: str, route: str, wav: bool, rate_header: str = "",
                   **request) -> AsyncIterator[np.ndarray]:
        """One request's answer decoded as it arrives: 16-bit PCM, behind a WAV header when
        `wav` (its rate becomes the engine's), else at the engine's rate (or the one a
        `rate_header` response header gives)."""
        decoder = PCMDecoder(self._rate_hz, wav)

        def headers_seen(headers: Mapping) -> None:
            rate = str(headers.get(rate_header, "")) if rate_header else ""
            if rate.isdigit() and MIN_RATE_HZ <= int(rate) <= MAX_RATE_HZ:
                decoder.rate_hz = int(rate)

        chunks = self.server.stream(method, route, on_headers=headers_seen, **request)
        try:
            async for chunk in pcm_chunks(chunks, decoder):
                self._rate_hz = decoder.rate_hz  # before the chunk is used at that rate
                yield chunk
        except TTSServerError as exc:  # a server may quote our paths back: never shown
            message = str(exc)
            for path in self.private_paths():
                message = message.replace(path, VOICES_DIR_NAME)
            raise type(exc)(message) from None

    def private_paths(self) -> list[str]:
        """Directories of ours a server's error message must not carry to an event."""
        return [str(self.voices.dir.resolve()), str(self.voices.dir)]

    async def close(self) -> None:
        await self.server.close()
