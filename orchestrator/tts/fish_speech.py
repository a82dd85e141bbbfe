"""Fish-Speech (fishaudio/fish-speech) through its API server: `POST /v1/tts`.

The body is a `ServeTTSRequest` (fish_speech/utils/schema.py) sent as MessagePack
(`application/msgpack`, as its own client does: reference audio travels as bytes): `text`,
`references` = [{`audio`: the clip's bytes, `text`: its transcript}] for a registered clip, or
`reference_id` for a voice the server keeps, `format: "wav"`, `streaming: true` (the server
streams only WAV: a header with its rate, 44,100 Hz, then 16-bit PCM as it is decoded).
Without any voice it speaks with a voice of its own choosing. A registered clip is sent at
44,100 Hz, the rate of its codec (the server resamples any other rate to it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgpack
import numpy as np

from .base import Voice
from .cloning import HTTPCloningEngine, passed_options

FISH_SAMPLE_RATE_HZ = 44100  # until the answer's WAV header says
FISH_REFERENCE_RATE_HZ = 44100  # its codec's rate, what it resamples a reference clip to
NUMBER = (int, float)
OPTIONS = {"chunk_length": int, "seed": int, "normalize": bool, "max_new_tokens": int,
           "top_p": NUMBER, "repetition_penalty": NUMBER, "temperature": NUMBER,
           "use_memory_cache": str, "latency": str}


class FishSpeechEngine(HTTPCloningEngine):
    name = "fishtts"
    understood_options = frozenset(OPTIONS)
    needs_voice = False  # it has a voice of its own
    reference_rate_hz = FISH_REFERENCE_RATE_HZ

    async def request(self, text: str, voice: Voice) -> dict:
        body: dict = {"text": text, "format": "wav", "streaming": True, "references": [],
                      **passed_options(voice.options, OPTIONS)}
        clip, transcript = self.reference(voice)
        if clip is not None:
            audio = await self.reference_wav(clip)
            body["references"] = [{"audio": audio, "text": transcript}]
        elif name := self._name(voice):
            body["reference_id"] = name
        return body

    async def _audio(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        body = msgpack.packb(await self.request(text, voice), use_bin_type=True)
        async for chunk in self._pcm("POST", "/v1/tts", wav=True, data=body,
                                     headers={"Content-Type": "application/msgpack"}):
            yield chunk
