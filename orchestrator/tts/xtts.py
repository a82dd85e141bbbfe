"""Coqui XTTS (`--tts xtts`) through its streaming server (coqui-ai/xtts-streaming-server,
`server/main.py`, as LiveTalking's xtts calls it).

A registered clip is sent once to `POST /clone_speaker` (multipart `wav_file`, at 22,050 Hz:
the rate XTTS loads references at) and the speaker it answers (`gpt_cond_latent`,
`speaker_embedding`) is kept per clip (until the clip changes). Each sentence is `POST
/tts_stream` with JSON: those latents, `text`, `language` (XTTS's code: `zh` for Chinese text,
else `en`; `tts.language` for any other), `add_wav_header: true`, `stream_chunk_size`
(`tts.stream_chunk_size`, default "20"); the answer is a WAV header (24,000 Hz, believed) then
16-bit PCM as each chunk is decoded. The server has no voices of its own: the voice must be a
registered clip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import numpy as np

from ..language import language_of
from .base import TTSServerError, UnknownVoice, Voice
from .cloning import HTTPCloningEngine, passed_options
from .reference_voices import ReferenceVoice

XTTS_SAMPLE_RATE_HZ = 24000  # until the answer's WAV header says
XTTS_REFERENCE_RATE_HZ = 22050  # XTTS's load_audio(audio_path, load_sr=22050)
DEFAULT_STREAM_CHUNK_SIZE = "20"
OPTIONS = {"language": str, "stream_chunk_size": (str, int)}
MAX_SPEAKERS = 64  # cloned speakers kept (each about 40 kB of latents)


class XTTSEngine(HTTPCloningEngine):
    name = "xtts"
    understood_options = frozenset(OPTIONS)
    reference_rate_hz = XTTS_REFERENCE_RATE_HZ

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # (voice name, clip's mtime_ns, size) -> the server's speaker for it
        self._speakers: dict[tuple[str, int, int], dict] = {}

    async def check_voice(self, voice: Voice) -> None:
        if self.voices.get(self._name(voice)) is None:
            raise UnknownVoice(self._name(voice))

    def speaks(self, text: str, voice: Voice) -> bool:
        return self.voices.get(self._name(voice)) is not None

    async def speaker(self, clip: ReferenceVoice) -> dict:
        """The server's conditioning latents for `clip` (cloned once per clip version)."""
        try:
            stat = clip.clip.stat()
        except OSError:
            raise TTSServerError(f"reference voice '{clip.name}' cannot be read") from None
        key = (clip.name, stat.st_mtime_ns, stat.st_size)
        if key not in self._speakers:
            form = aiohttp.FormData()
            form.add_field("wav_file", await self.reference_wav(clip), filename="reference.wav",
                           content_type="audio/wav")
            answer = await self.server.json("POST", "/clone_speaker", data=form)
            if not isinstance(answer, dict) or not {"gpt_cond_latent",
                                                    "speaker_embedding"} <= answer.keys():
                raise TTSServerError(f"TTS server '{self.name}' answered /clone_speaker without "
                                     "gpt_cond_latent and speaker_embedding")
            if len(self._speakers) >= MAX_SPEAKERS:
                self._speakers.pop(next(iter(self._speakers)))
            self._speakers[key] = {k: answer[k] for k in ("gpt_cond_latent", "speaker_embedding")}
        return self._speakers[key]

    async def _audio(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        clip, _ = self.reference(voice)
        if clip is None:
            raise UnknownVoice(self._name(voice))
        options = passed_options(voice.options, OPTIONS)
        body = {**await self.speaker(clip), "text": text,
                "language": options.get("language") or language_of(text),
                "add_wav_header": True,
                "stream_chunk_size": str(options.get("stream_chunk_size",
                                                     DEFAULT_STREAM_CHUNK_SIZE))}
        async for chunk in self._pcm("POST", "/tts_stream", wav=True, json=body):
            yield chunk
