"""Real speech for tests: the project's own Piper voice through Triton."""

from __future__ import annotations

import numpy as np

from orchestrator.tts import PiperEngine, Voice, synthesize_all


async def piper_speech(triton_url: str, text: str) -> tuple[np.ndarray, int]:
    """`text` spoken by Piper's 'joe': (float32 mono audio, its rate in Hz: 22050)."""
    piper = await PiperEngine.open(triton_url)
    try:
        return await synthesize_all(piper, text, Voice.named("joe")), piper.sample_rate_hz
    finally:
        await piper.close()
