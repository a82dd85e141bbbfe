"""One session's voice activity: speech probabilities (any VAD engine) turned into speech start,
pause and end, with thresholds and minimum durations (the rules of Silero's own VADIterator).

Engine-independent: it asks a `VADStream` for each frame's probability and keeps the utterance's
audio (pre-roll included) until its end. Beside the engine, a level gate (vad/level_gate.py):
a frame is speech only when it is also `level_margin_db` above the tracked noise floor, so the
room's background (other people talking) starts no speech however speech-like it sounds, and
speech over it ends when the voice stops, not when the background does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..asr.base import MAX_UTTERANCE_S
from ..settings import Settings
from .base import VAD, VAD_FRAME_S, VADStream
from .level_gate import SPEECH_PERCENTILE, LevelGate, LevelReading

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
    # speech must be this far above the noise floor too (0: the VAD engine alone decides)
    level_margin_db: float = _FLAG_DEFAULTS.vad_level_margin_db
    # an utterance holding less speech than this (SpeechEnded.speech_s) is no turn
    min_turn_speech_s: float = _FLAG_DEFAULTS.vad_min_turn_speech_s
    pre_roll_s: float = 0.2  # audio kept before the detected start (word onsets)
    max_utterance_s: float = MAX_UTTERANCE_S  # an utterance's audio is cut here (what ASR takes)

    @classmethod
    def from_settings(cls, settings: Settings) -> VADSettings:
        return cls(threshold=settings.vad_threshold, neg_threshold=settings.vad_neg_threshold,
                   min_speech_s=settings.vad_min_speech_s,
                   min_silence_s=settings.vad_min_silence_s,
                   level_margin_db=settings.vad_level_margin_db,
                   min_turn_speech_s=settings.vad_min_turn_speech_s)


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
    that follows has `end_s == pause_s` and the same words: a transcript may start now.
    `speech_s`: how much of it was speech so far (as SpeechEnded's), None when not measured."""

    audio: np.ndarray
    pause_s: float
    speech_s: float | None = None


@dataclass(frozen=True)
class SpeechEnded:
    """An utterance: its audio (16 kHz mono float32, pre-roll included), when the speech
    stopped (`end_s`, uplink time) and when it was detected (`detected_s`); `speech_s`: how
    much of it was speech (frames the VAD and the level gate both passed, s), None when not
    measured."""

    audio: np.ndarray
    end_s: float
    detected_s: float
    speech_s: float | None = None
    # How far the utterance's speech stood over the silence that ended it (dB: the
    # SPEECH_PERCENTILE level of its speech frames less the median of its trailing silent
    # frames); None when no silence ended it (push-to-talk, the max_utterance_s cut) or the
    # level gate is off.
    over_silence_db: float | None = None
    # The "utterance" was the background rising, not a voice: its speech stood less than the
    # level gate's margin over the silence that ended it (level_gate.py, "background").
    background: bool = False


VoiceEvent = SpeechOnset | SpeechStarted | SpeechContinues | SpeechPaused | SpeechEnded


class VoiceActivity:
    """One session's detector: feed frames (vad/base.py's frame) in order, get voice events.

    The engine's stream is opened at the first frame.
    """

    def __init__(self, vad: VAD, settings: VADSettings = VADSettings()) -> None:
        self.vad = vad
        self.settings = settings
        self.gate = LevelGate(settings.level_margin_db)
        self._stream: VADStream | None = None
        self._frames: list[np.ndarray] = []  # pre-roll, then the utterance
        self._pre_roll = max(1, round(settings.pre_roll_s / VAD_FRAME_S))
        self._t = 0.0  # uplink time of the next frame (s)
        self._run_start: float | None = None  # first speech frame of a not yet confirmed run
        self.speaking_since: float | None = None
        self._silence_since: float | None = None
        self._end_requested = False  # end_turn(): the next non-speech frame ends the utterance
        self.last_probability = 0.0
        self._speech_frames = 0  # frames of the utterance under way that were speech
        # levels (dBFS) of the utterance's speech frames, and of the silence after its last one
        self._speech_levels: list[float] = []
        self._silence_levels: list[float] = []

    @property
    def speech_s(self) -> float:
        """Speech (frames the engine and the level gate both passed) in the utterance under
        way, or in the run that may start one (s)."""
        return self._speech_frames * VAD_FRAME_S

    @property
    def last_level(self) -> LevelReading:
        """The last frame's level and the noise floor it was judged against (dBFS)."""
        return self.gate.last

    def end_turn(self) -> bool:
        """The user says the utterance is over (push-to-talk released): it ends at the next frame
        fed that is below the speech threshold instead of after `min_silence_s` of them. The
        caller calls it once every frame received before the release has been fed
        (voice_input's Listener.end_turn), or the request would end the utterance at a pause
        inside it. False when no speech is under way, or has only begun (a run shorter than
        `min_speech_s` is no utterance yet)."""
        self._end_requested = self.speaking_since is not None
        return self._end_requested

    def _over_silence_db(self) -> float | None:
        """How far the utterance's speech stood over the silence that ended it (dB): the
        SPEECH_PERCENTILE level of its speech frames (its loud part, so that an utterance that
        began as babble and went on into a question spoken over it is kept) less the median
        level of its trailing silent frames. None with the gate off (margin 0: the user chose
        the VAD alone)."""
        if self.gate.margin_db <= 0 or not self._speech_levels or not self._silence_levels:
            return None
        return float(np.percentile(self._speech_levels, SPEECH_PERCENTILE)
                     - np.median(self._silence_levels))

    @property
    def buffered_frames(self) -> int:
        """VAD frames of the utterance under way held so far (pre-roll included): where in its
        audio the frame just fed ends."""
        return len(self._frames)

    async def feed(self, frame: np.ndarray) -> VoiceEvent | None:
        """The event `frame` (float32 [VAD_FRAME_SAMPLES], 16 kHz) makes, if any. Raises what
        the engine's stream raises."""
        s = self.settings
        if self._stream is None:
            self._stream = self.vad.stream()
        t, self._t = self._t, self._t + VAD_FRAME_S
        prob = await self._stream.probability(frame)
        level = self.gate.read(frame)
        self.last_probability = prob
        self._frames.append(frame)
        # speech: the engine's probability and the level both say so; silence: either says not
        speech = prob >= s.threshold and self.gate.opens(level)
        silent = prob < s.neg_threshold or not self.gate.holds(level)
        if self.speaking_since is None:
            if speech:
                if self._run_start is None:
                    self._run_start, self._speech_frames = t, 0
                    self._speech_levels = []
                self._speech_frames += 1
                self._speech_levels.append(level.level_dbfs)
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
        if speech:
            self._speech_frames += 1
            self._speech_levels.append(level.level_dbfs)
            resumed, self._silence_since = self._silence_since is not None, None
        elif self._silence_since is None and (silent or self._end_requested):
            paused, self._silence_since = True, t
            self._silence_levels = []
        if self._silence_since is not None:
            self._silence_levels.append(level.level_dbfs)
        now = t + VAD_FRAME_S
        ended = self._silence_since is not None and (
            self._end_requested or now - self._silence_since >= s.min_silence_s)
        # Cut at max_utterance_s of audio handed on, pre-roll included (what ASR is given).
        if ended or len(self._frames) * VAD_FRAME_S >= s.max_utterance_s - 1e-9:
            end = self._silence_since if self._silence_since is not None else now
            over = self._over_silence_db() if ended and not self._end_requested else None
            audio = np.concatenate(self._frames)
            self._frames, self._run_start = self._frames[-self._pre_roll:], None
            self.speaking_since = self._silence_since = None
            self._end_requested = False
            return SpeechEnded(audio, end, now, self.speech_s, over,
                               background=over is not None and over < self.gate.margin_db)
        if paused:
            return SpeechPaused(np.concatenate(self._frames), t, self.speech_s)
        if resumed:
            return SpeechResumed(now - self.speaking_since)
        return SpeechContinues(now - self.speaking_since)
