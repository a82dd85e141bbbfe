"""What a voice activity detector is to the rest of the server: frames in, speech probabilities
out, one stream of recurrent state per session.

The frame is the interface's, not each engine's: the uplink cuts the user's audio into it once
(voice_input/microphone.py) and turn-taking counts time in it (vad/activity.py). It is 32 ms of
16 kHz mono float32, the frame Silero VAD is trained on; an engine whose native frame differs
buffers or splits inside its stream.

Adding an engine: one module implementing `VAD` (and its `VADStream`), registered in
`vad/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..media.clock import AUDIO_SAMPLE_RATE_HZ

# VADs take the pipeline's 16 kHz (Silero's native rate: 16 or 8 kHz)
VAD_SAMPLE_RATE_HZ = AUDIO_SAMPLE_RATE_HZ
VAD_FRAME_SAMPLES = 512  # 32 ms at VAD_SAMPLE_RATE_HZ
VAD_FRAME_S = VAD_FRAME_SAMPLES / VAD_SAMPLE_RATE_HZ


class VADStream(ABC):
    """One session's detector state: frames must be given in order, one at a time."""

    @abstractmethod
    async def probability(self, frame: np.ndarray) -> float:
        """Speech probability in [0, 1] of the next frame: float32 [VAD_FRAME_SAMPLES] at
        VAD_SAMPLE_RATE_HZ, full scale 1.0. Raises what the engine's transport raises (Triton
        unreachable and the like); the stream's state is then unchanged."""


class VAD(ABC):
    """A VAD engine shared by every session (its connection, its model)."""

    # The Triton models the engine needs served (start-up waits for them); () for none.
    triton_models: tuple[str, ...] = ()

    @abstractmethod
    def stream(self) -> VADStream:
        """A new session's stream (fresh state)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the engine's connection; its streams may not be used after."""
