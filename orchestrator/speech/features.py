"""A sentence's audio as the lip-sync model reads it: resampled once to the pipeline's 16 kHz,
cut into video frames, with the audio features the model declares (lipsync/base.AudioFeatures)
computed as the TTS audio streams in.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import resample_poly

from ..lipsync.base import AudioFeatures
from ..lipsync.mel import WAV2LIP_MEL
from ..media.clock import AUDIO_SAMPLE_RATE_HZ, AUDIO_SAMPLES_PER_TICK

# A streamed sentence is analysed again once this much new audio arrived, and at least this
# share of what it had: bounded work per sentence, small first pieces.
STREAM_MIN_NEW_S = 0.25
STREAM_GROWTH = 0.5
# The last samples of a resampled prefix differ from the whole sentence's (the filter sees
# zeros past the end); frames reaching into them wait for more audio.
RESAMPLE_EDGE_SAMPLES = 64
# What a caller that does not name a model's features gets: the only kind any model reads today.
DEFAULT_FEATURES: AudioFeatures = WAV2LIP_MEL


def to_pipeline_rate(audio: np.ndarray, rate_hz: int) -> np.ndarray:
    """Engine audio to the pipeline's 16 kHz (the one place where speech is resampled)."""
    if rate_hz == AUDIO_SAMPLE_RATE_HZ:
        return audio
    divisor = math.gcd(AUDIO_SAMPLE_RATE_HZ, rate_hz)
    resampled = resample_poly(audio, AUDIO_SAMPLE_RATE_HZ // divisor, rate_hz // divisor)
    return np.clip(resampled, -1.0, 1.0).astype(np.float32)


class SentenceFeatures:
    """Audio and per-frame features of one sentence as its TTS audio streams in.

    `features`: what the avatar's lip-sync model reads (its `features`). Each `take` resamples and analyses the whole sentence so far
    (sentences are seconds long) and hands out the frames not handed out yet whose features
    (the mel window: 200 ms ahead of the frame) are covered by audio already there: the frames
    come out exactly as if the sentence had been analysed at once. `take(final=True)` pads the
    rest to whole frames.
    """

    def __init__(self, rate_hz: int, features: AudioFeatures = DEFAULT_FEATURES,
                 min_new_s: float = STREAM_MIN_NEW_S, growth: float = STREAM_GROWTH,
                 min_first_s: float = 0.0) -> None:
        """`min_new_s`, `growth`: `ready` once this much new audio (s), and at least this share
        of what was there, arrived; `min_first_s`: the first `ready` waits for this much."""
        self.rate_hz = rate_hz
        self.features = features
        self._min_new = min_new_s * rate_hz
        self._growth = growth
        self._min_first = min_first_s * rate_hz
        self.first = True  # no piece handed out yet (the consumer's flag)
        self._chunks: list[np.ndarray] = []
        self._samples = 0  # at rate_hz
        self._taken_at = 0  # samples when `take` last ran
        self._frames = 0  # frames handed out

    def add(self, chunk: np.ndarray) -> None:
        self._chunks.append(np.asarray(chunk, np.float32))
        self._samples += chunk.size

    def ready(self) -> bool:
        """Worth analysing again: enough new audio (a growing share of what is there, so a long
        sentence is analysed a bounded number of times)."""
        if self._taken_at == 0 and self._samples < self._min_first:
            return False
        new = self._samples - self._taken_at
        return new >= max(self._min_new, self._growth * self._taken_at)

    @property
    def samples(self) -> int:
        """Samples added so far, at `rate_hz`."""
        return self._samples

    def take(self, final: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(16 kHz float32 audio of the frames ready now, padded to whole frames when `final`;
        their features float32 [n, *features.window_shape]; which are silent, bool [n])."""
        self._taken_at = self._samples
        joined = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        audio = to_pipeline_rate(joined, self.rate_hz)
        if final:
            frames = -(-audio.size // AUDIO_SAMPLES_PER_TICK)
            padded = np.zeros(frames * AUDIO_SAMPLES_PER_TICK, np.float32)
            padded[: audio.size] = audio
        else:
            frames = self.features.covered_frames(audio.size - RESAMPLE_EDGE_SAMPLES)
            padded = audio
        start = self._frames
        if frames <= start:
            return (np.zeros(0, np.float32),
                    np.zeros((0, *self.features.window_shape), np.float32), np.zeros(0, bool))
        self._frames = frames
        windows = self.features.windows(padded, frames, start)
        piece = padded[start * AUDIO_SAMPLES_PER_TICK : frames * AUDIO_SAMPLES_PER_TICK]
        return piece, windows, self.features.silent(padded, frames, start)
