"""Real speech for tests: the project's own Piper voice through Triton, said the same way every
run.

Piper (VITS) samples noise for each take, so by default a sentence sounds a little different each
time, and now and then Whisper mishears a take that it heard right a hundred times before: the
tests would pass or fail by chance. With noise_scale and noise_w at 0 (tts options the server
takes too: README "TTS options per engine") a text is one waveform, the same on every run, so a
test that hears it passes or fails on the code alone.
"""

from __future__ import annotations

import numpy as np

from orchestrator.tts import PiperEngine, Voice, synthesize_all

SAME_EVERY_TIME = {"noise_scale": 0.0, "noise_w": 0.0}
# Piper's 'joe', said the same way every run
TEST_VOICE = Voice.named("joe", options=SAME_EVERY_TIME)


def voice_at_speed(speed: float = 1.0) -> Voice:
    """TEST_VOICE at `speed` (1 = its own pace; 0.85: slower, as a user says a question again)."""
    return Voice.named("joe", options={**SAME_EVERY_TIME, "speed": speed})


async def piper_speech(triton_url: str, text: str) -> tuple[np.ndarray, int]:
    """`text` said by TEST_VOICE: (float32 mono audio, its rate in Hz: 22050)."""
    piper = await PiperEngine.open(triton_url)
    try:
        return await synthesize_all(piper, text, TEST_VOICE), piper.sample_rate_hz
    finally:
        await piper.close()
