"""A level gate beside the VAD: each frame's level against an adaptive noise floor, so that speech
must stand out of the room's background (other people talking, a fan) as well as sound like
speech to the VAD engine.

Silero (any VAD engine) judges whether a frame *sounds like* speech, whatever its level: six
people talking at once at the back of a room do, and would be taken as the user. What tells the
user apart is that their voice, close to the microphone, rises well above that background, and
that one voice has gaps (between words and syllables) where the background shows through, while
many voices at once fill them.

Two floors are tracked from the frame levels, in the manner of minimum statistics (R. Martin,
"Noise power spectral density estimation based on optimal smoothing and minimum statistics",
2001), on the whole band:

- the *start floor*, a low quantile (NOISE_QUANTILE) of the last NOISE_WINDOW_S: where the
  background usually sits. Speech starts (and barges in) only `margin_db` above it. Babble's
  own peaks rarely rise that far over its usual level; a voice near the microphone does.
- the *hold floor*, the minimum of the last HOLD_WINDOW_S: the background's quietest moments.
  Speech under way goes on while it stays `margin_db - GATE_HOLD_BELOW_DB` above it; the minimum
  does not rise into a long utterance (one speaker's gaps keep it down), so its quiet words are
  not cut, while the background after it falls under at once.

When the background goes quiet the hold floor falls at once, the start floor within a fifth of
its window; when it gets louder they rise within their windows: a background that starts
abruptly is heard as speech for up to a window. Its first seconds then make one utterance, which
ends only because the floors have risen into the background, so the "silence" that ends it is
nearly as loud as its "speech". A voice ends in a room quieter than itself: an utterance whose
speech (SPEECH_PERCENTILE of its frames) stands less than `margin_db` over the median of the
silence that ended it is the background (SpeechEnded's `background`) and makes no turn.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .base import VAD_FRAME_S

# The start floor: the NOISE_QUANTILE quantile of the frame levels of the last NOISE_WINDOW_S.
NOISE_WINDOW_S = 3.0
NOISE_QUANTILE = 0.2
# The hold floor: the quietest frame level of the last HOLD_WINDOW_S.
HOLD_WINDOW_S = 2.0
# The quietest floor assumed (dBFS): a microphone's own noise. Digital silence (a muted track,
# a test) would otherwise make any sound, however faint, stand out of it.
NOISE_FLOOR_MIN_DBFS = -70.0
LEVEL_MIN_DBFS = -120.0  # the level of digital silence (log of zero)
# Speech under way goes on down to this far below the start margin, over the hold floor.
GATE_HOLD_BELOW_DB = 3.0
# An utterance stands out of the background when this percentile of its speech frames' levels
# is `margin_db` over the median level of the silence that ended it (vad/activity.py,
# SpeechEnded.background). Measured on tests/voice_input/test_babble.py (six-talker babble at
# -35 dBFS that began abruptly, 6 utterances): the babble's "utterances" stood -1 to 9.5 dB over
# their ends, a question at +15 dB SNR over the babble 16 to 17 dB, a voice in a quiet room 50
# dB and more.
SPEECH_PERCENTILE = 75


def frame_level_dbfs(frame: np.ndarray) -> float:
    """RMS level of `frame` (float32, full scale 1.0) in dBFS, at least LEVEL_MIN_DBFS."""
    power = float(np.mean(np.square(frame, dtype=np.float64))) if frame.size else 0.0
    return max(LEVEL_MIN_DBFS, 10 * np.log10(power) if power > 0 else LEVEL_MIN_DBFS)


@dataclass(frozen=True)
class LevelReading:
    """One frame's level and the floors before it (dBFS)."""

    level_dbfs: float
    floor_dbfs: float  # the start floor
    hold_floor_dbfs: float

    @property
    def above_floor_db(self) -> float:
        return self.level_dbfs - self.floor_dbfs


class NoiseFloor:
    """A floor over a sliding window of frame levels: their `quantile` (0: the minimum), never
    below `minimum_dbfs`. Feed every frame's level, in order."""

    def __init__(self, window_s: float, quantile: float = 0.0,
                 minimum_dbfs: float = NOISE_FLOOR_MIN_DBFS) -> None:
        self._levels: deque[float] = deque(maxlen=max(1, round(window_s / VAD_FRAME_S)))
        self._quantile = quantile
        self._minimum_dbfs = minimum_dbfs

    @property
    def dbfs(self) -> float:
        """The floor now (of the levels seen so far, before the window is full)."""
        if not self._levels:
            return self._minimum_dbfs
        ranked = sorted(self._levels)
        return max(self._minimum_dbfs, ranked[int(self._quantile * (len(ranked) - 1))])

    def push(self, level_dbfs: float) -> None:
        self._levels.append(level_dbfs)


class LevelGate:
    """Whether each frame stands out of the background: `read` every frame, in order."""

    def __init__(self, margin_db: float) -> None:
        self.margin_db = margin_db
        self.floor = NoiseFloor(NOISE_WINDOW_S, NOISE_QUANTILE)
        self.hold_floor = NoiseFloor(HOLD_WINDOW_S)
        self.last = LevelReading(LEVEL_MIN_DBFS, self.floor.dbfs, self.hold_floor.dbfs)

    def read(self, frame: np.ndarray) -> LevelReading:
        """`frame`'s level (float32 [VAD_FRAME_SAMPLES], full scale 1.0) against the floors of
        the frames before it; the frame then joins their windows."""
        level = frame_level_dbfs(frame)
        self.last = LevelReading(level, self.floor.dbfs, self.hold_floor.dbfs)
        self.floor.push(level)
        self.hold_floor.push(level)
        return self.last

    def opens(self, reading: LevelReading) -> bool:
        """Loud enough to start speech: `margin_db` above the start floor (always, margin 0)."""
        return self.margin_db <= 0 or reading.level_dbfs >= reading.floor_dbfs + self.margin_db

    def holds(self, reading: LevelReading) -> bool:
        """Loud enough to go on with speech under way: `margin_db - GATE_HOLD_BELOW_DB` above
        the hold floor (always, margin 0)."""
        return self.margin_db <= 0 or (
            reading.level_dbfs >= reading.hold_floor_dbfs + self.margin_db - GATE_HOLD_BELOW_DB)
