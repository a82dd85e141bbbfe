"""GPT-SoVITS (RVC-Boss/GPT-SoVITS) through its `api_v2.py` server: `POST /tts` with JSON.

Fields it requires: `text`, `text_lang`, `ref_audio_path` (a file *on the GPT-SoVITS machine*),
`prompt_lang`; `prompt_text` is the reference's transcript. With `streaming_mode` and
`media_type: "wav"` it answers a WAV header (its sample rate, 32,000 Hz for v2) and then raw
16-bit PCM chunk by chunk; errors are HTTP 400 with a JSON `message`.

A registered clip is named by its path as the GPT-SoVITS server sees data/voices/ (same machine:
our own folder; else `--tts-ref-dir`, where that folder is mounted there). Any other voice name
is passed as it is (a reference file relative to the server's working directory).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import PurePosixPath

import numpy as np

from ..language import language_of
from .base import Voice
from .cloning import HTTPCloningEngine, passed_options
from .http_audio import HTTPVoiceServer
from .reference_voices import VoiceStore

GPT_SOVITS_SAMPLE_RATE_HZ = 32000  # until the answer's WAV header says
NUMBER = (int, float)
# `tts` keys passed as they are (api_v2's TTS_Request fields); `speed` is `speed_factor`.
OPTIONS = {"text_lang": str, "prompt_lang": str, "top_k": int, "top_p": NUMBER,
           "temperature": NUMBER, "text_split_method": str, "batch_size": int,
           "speed_factor": NUMBER, "fragment_interval": NUMBER, "seed": int,
           "repetition_penalty": NUMBER, "sample_steps": int, "parallel_infer": bool,
           "streaming_mode": (bool, int)}


class GPTSoVITSEngine(HTTPCloningEngine):
    name = "gpt-sovits"
    understood_options = frozenset(OPTIONS) | {"speed"}

    def __init__(self, server: HTTPVoiceServer, voices: VoiceStore, sample_rate_hz: int,
                 default_voice: str = "", ref_dir: str = "") -> None:
        super().__init__(server, voices, sample_rate_hz, default_voice)
        # data/voices/ as the GPT-SoVITS server sees it (default: ours, same machine)
        self.ref_dir = ref_dir or str(voices.dir.resolve())

    def private_paths(self) -> list[str]:
        return [self.ref_dir, *super().private_paths()]

    def request(self, text: str, voice: Voice) -> dict:
        clip, prompt_text = self.reference(voice)
        name = self._name(voice)
        ref_path = str(PurePosixPath(self.ref_dir) / f"{name}.wav") if clip else name
        options = passed_options(voice.options, {**OPTIONS, "speed": NUMBER})
        if "speed" in options:
            options.setdefault("speed_factor", options.pop("speed"))
        return {"text": text, "text_lang": language_of(text), "ref_audio_path": ref_path,
                "prompt_text": prompt_text,
                "prompt_lang": language_of(prompt_text) if prompt_text else language_of(text),
                "media_type": "wav", "streaming_mode": True, **options}

    async def _audio(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        async for chunk in self._pcm("POST", "/tts", wav=True, json=self.request(text, voice)):
            yield chunk
