"""Mono 16-bit PCM WAV files, written whole: the project's one WAV writer (utterances sent to an
ASR server, stored reference voices, test clips). Format: RIFF/WAVE PCM, through the standard
library's `wave`."""

from __future__ import annotations

import io
import wave

import numpy as np

INT16_FULL_SCALE = 32767


def wav_bytes(audio: np.ndarray, rate_hz: int) -> bytes:
    """`audio` (mono, float, full scale 1.0; clipped to it) at `rate_hz` Hz as the bytes of a
    16-bit PCM WAV file, each sample rounded to the nearest step."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * INT16_FULL_SCALE).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.tobytes())
    return out.getvalue()
