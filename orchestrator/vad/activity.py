"""One session's voice activity: speech probabilities (any VAD engine) turned into speech start,
pause and end, with thresholds and minimum durations (the rules of Silero's own VADIterator).

Engine-independent: it asks a `VADStream` for each frame's probability and keeps the utterance's
audio (pre-roll included) until its end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..asr.base import MAX_UTTERANCE_S
from ..settings import Settings
from .base import VAD, VAD_FRAME_S, VADStream

# The --vad-* flags' defaults: settings is their one home.
_FLAG_DEFAULTS = Settings()


@dataclass(frozen=True)
class VADSettings:
    """When speech starts and ends (flags --vad-*; `from_settings` builds it from them)."""

    threshold: float = _FLAG_DEFAULTS.vad_threshold  # speech at this probability or above
    # silence below this (hysteresis between the two)
    neg_threshold: float = _FLAG_DEFAULTS.vad_neg_threshold
    # speech shorter than this is no speech (clicks, coughs)
    min_speech_s: float = _FLAG_DEFAULTS.vad_min_speech_s
    min_silence_s: float = _FLAG_DEFAULTS.vad_min_silence_s  # this long ends the utterance
    pre_roll_s: float = 0.2  # audio kept before the detected start (word onsets)
    max_utterance_s: float = MAX_UTTERANCE_S  # an utterance's audio is cut here (what ASR takes)

    @classmethod
    def from_settings(cls, settings: Settings) -> VADSettings:
        return cls(threshold=settings.vad_threshold, neg_threshold=settings.vad_neg_threshold,
                   min_speech_s=settings.vad_min_speech_s,
                   min_silence_s=settings.vad_min_silence_s)


@dataclass(frozen=True)
class SpeechStarted:
    """The user started speaking `onset_s` (uplink time) ago-ish: the start of the run."""

    onset_s: float


@dataclass(frozen=True)
class SpeechOnset:
    """A run of speech frames not yet confirmed as speech (shorter than `min_speech_s`),
    `duration_s` long so far: barge-in may act on it before the turn logic does."""

    duration_s: float


@dataclass(frozen=True)
class SpeechContinues:
    """Still speaking; `duration_s` since the onset (barge-in reads it)."""

    duration_s: float


@dataclass(frozen=True)
class SpeechResumed(SpeechContinues):
    """Speech again after a pause that did not last `min_silence_s`: a transcript started at
    the pause (SpeechPaused) is stale."""


@dataclass(frozen=True)
class SpeechPaused:
    """The first silent frame after speech: `audio` is the utterance so far (pre-roll
    included), `pause_s` (uplink time) when the silence began. If it lasts, the SpeechEnded
    that follows has `end_s == pause_s` and the same words: a transcript may start now."""

    audio: np.ndarray
    pause_s: float


@dataclass(frozen=True)
class SpeechEnded:
    """An utterance: its audio (16 kHz mono float32, pre-roll included), when the speech
    stopped (`end_s`, uplink time) and when it was detected (`detected_s`)."""

    audio: np.ndarray
    end_s: float
    detected_s: float


VoiceEvent = SpeechOnset | SpeechStarted | SpeechContinues | SpeechPaused | SpeechEnded


class VoiceActivity:
    """One session's detector: feed frames (vad/base.py's frame) in order, get voice events.

    The engine's stream is opened at the first frame.
    """

    def __init__(self, vad: VAD, settings: VADSettings = VADSettings()) -> None:
        self.vad = vad
        self.settings = settings
        self._stream: VADStream | None = None
        self._frames: list[np.ndarray] = []  # pre-roll, then the utterance
        self._pre_roll = max(1, round(settings.pre_roll_s / VAD_FRAME_S))
        self._t = 0.0  # uplink time of the next frame (s)
        self._run_start: float | None = None  # first speech frame of a not yet confirmed run
        self.speaking_since: float | None = None
        self._silence_since: float | None = None
        self._end_requested = False  # end_turn(): the next non-speech frame ends the utterance
        self.last_probability = 0.0

    def end_turn(self) -> bool:
        """The user says the utterance is over (push-to-talk released): it ends at its next frame
        below the speech threshold instead of after `min_silence_s` of them (frames still on
        the wire are heard first: the request does not cut them). False when no speech is under
        way, or has only begun (a run shorter than `min_speech_s` is no utterance yet)."""
        self._end_requested = self.speaking_since is not None
        return self._end_requested

    async def feed(self, frame: np.ndarray) -> VoiceEvent | None:
        """The event `frame` (float32 [VAD_FRAME_SAMPLES], 16 kHz) makes, if any. Raises what
        the engine's stream raises."""
        s = self.settings
        if self._stream is None:
            self._stream = self.vad.stream()
        t, self._t = self._t, self._t + VAD_FRAME_S
        prob = await self._stream.probability(frame)
        self.last_probability = prob
        self._frames.append(frame)
        if self.speaking_since is None:
            if prob >= s.threshold:
                self._run_start = t if self._run_start is None else self._run_start
                run_s = t + VAD_FRAME_S - self._run_start
                if run_s >= s.min_speech_s:
                    self.speaking_since, self._silence_since = self._run_start, None
                    return SpeechStarted(self._run_start)
                return SpeechOnset(run_s)
            else:
                self._run_start = None
                del self._frames[:-self._pre_roll]
            return None
        resumed = paused = False
        if prob >= s.threshold:
            resumed, self._silence_since = self._silence_since is not None, None
        elif self._silence_since is None and (prob < s.neg_threshold or self._end_requested):
            paused, self._silence_since = True, t
        now = t + VAD_FRAME_S
        ended = self._silence_since is not None and (
            self._end_requested or now - self._silence_since >= s.min_silence_s)
        # Cut at max_utterance_s of audio handed on, pre-roll included (what ASR is given).
        if ended or len(self._frames) * VAD_FRAME_S >= s.max_utterance_s - 1e-9:
            end = self._silence_since if self._silence_since is not None else now
            audio = np.concatenate(self._frames)
            self._frames, self._run_start = self._frames[-self._pre_roll:], None
            self.speaking_since = self._silence_since = None
            self._end_requested = False
            return SpeechEnded(audio, end, now)
        if paused:
            return SpeechPaused(np.concatenate(self._frames), t)
        if resumed:
            return SpeechResumed(now - self.speaking_since)
        return SpeechContinues(now - self.speaking_since)
