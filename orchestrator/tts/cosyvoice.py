"""CosyVoice (FunAudioLLM/CosyVoice) through its FastAPI server (runtime/python/fastapi/server.py).

Every route takes a multipart form and answers raw 16-bit mono PCM at the model's rate
(22,050 Hz CosyVoice-300M, 24,000 Hz CosyVoice2/3: `--tts-sample-rate`; a server that sends
`X-Custom-Header-sampleRate` is believed), streamed as the model produces it:
- a registered clip with a transcript: `/inference_zero_shot` (tts_text, prompt_text, prompt_wav)
- a registered clip without one: `/inference_cross_lingual` (tts_text, prompt_wav)
- `tts.instruct_text` with a clip: `/inference_instruct2` (tts_text, instruct_text, prompt_wav)
- any other voice name is a built-in speaker: `/inference_sft` (tts_text, spk_id), or with
  `tts.instruct_text` `/inference_instruct` (tts_text, spk_id, instruct_text)

`prompt_wav` is sent at 16 kHz: the server reads it with `load_wav(prompt_wav.file, 16000)`,
which resamples down and refuses a clip below 16 kHz.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import numpy as np

from .base import Voice
from .cloning import HTTPCloningEngine, passed_options

COSYVOICE_SAMPLE_RATE_HZ = 24000  # CosyVoice2/3 (CosyVoice-300M: 22050, --tts-sample-rate)
SAMPLE_RATE_HEADER = "X-Custom-Header-sampleRate"
COSYVOICE_PROMPT_RATE_HZ = 16000  # the server's load_wav(prompt_wav.file, 16000)
OPTIONS = {"instruct_text": str}


class CosyVoiceEngine(HTTPCloningEngine):
    name = "cosyvoice"
    understood_options = frozenset(OPTIONS)
    reference_rate_hz = COSYVOICE_PROMPT_RATE_HZ

    async def _audio(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        clip, prompt_text = self.reference(voice)
        instruct = passed_options(voice.options, OPTIONS).get("instruct_text", "")
        form = aiohttp.FormData()
        form.add_field("tts_text", text)
        if clip is None:
            route = "/inference_instruct" if instruct else "/inference_sft"
            form.add_field("spk_id", self._name(voice))
        else:
            route = ("/inference_instruct2" if instruct else
                     "/inference_zero_shot" if prompt_text else "/inference_cross_lingual")
            if route == "/inference_zero_shot":
                form.add_field("prompt_text", prompt_text)
        if instruct:
            form.add_field("instruct_text", instruct)
        if clip is not None:
            data = await self.reference_wav(clip)
            form.add_field("prompt_wav", data, filename="prompt_wav",
                           content_type="application/octet-stream")
        async for chunk in self._pcm("POST", route, wav=False, rate_header=SAMPLE_RATE_HEADER,
                                     data=form):
            yield chunk
