"""Voice activity detection: Silero VAD on Triton, one recurrent state per session.

`SileroVAD` is the transport (one 32 ms frame and its session's state in, the speech
probability and the next state out); Triton's dynamic batcher batches the frames of all
sessions. `VoiceActivity` is one session's detector: it keeps the state and the 64-sample
context, and turns probabilities into speech start/end with thresholds and minimum durations
(the rules of Silero's own VADIterator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient

from ..media.clock import AUDIO_SAMPLE_RATE_HZ
from ..triton.client import TritonModelClient

VAD_MODEL = "vad_silero"
VAD_SAMPLE_RATE_HZ = AUDIO_SAMPLE_RATE_HZ  # Silero takes 16 kHz (or 8): the pipeline's rate
VAD_FRAME_SAMPLES = 512  # 32 ms: the frame Silero VAD is trained on at 16 kHz
VAD_FRAME_S = VAD_FRAME_SAMPLES / VAD_SAMPLE_RATE_HZ
VAD_CONTEXT_SAMPLES = 64  # the previous frame's tail, prepended to each frame
VAD_STATE_SHAPE = (2, 128)
VAD_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class VADSettings:
    """When speech starts and ends (flags --vad-*)."""

    threshold: float = 0.5  # speech when the probability is at least this
    neg_threshold: float = 0.35  # silence when below this (hysteresis between the two)
    min_speech_s: float = 0.15  # speech shorter than this is no speech (clicks, coughs)
    min_silence_s: float = 0.35  # silence this long ends the utterance
    pre_roll_s: float = 0.2  # audio kept before the detected start (word onsets)
    max_utterance_s: float = 25.0  # an utterance is cut here (Whisper's window is 30 s)


class SileroVAD:
    """Silero VAD on Triton (`vad_silero`, batch-first tensors, explicit state)."""

    def __init__(self, triton_url: str, model: str = VAD_MODEL) -> None:
        self.client = TritonModelClient(triton_url, model, timeout_s=VAD_TIMEOUT_S)

    async def probability(self, audio: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """(speech probability, next state) of one frame: `audio` [576] (context + frame),
        `state` [2, 128]."""
        inputs = []
        for name, array in (("audio", audio), ("vad_state", state)):
            array = np.ascontiguousarray(array, dtype=np.float32)[None]
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = await self.client.run(inputs)
        return float(result.as_numpy("speech").ravel()[0]), result.as_numpy("vad_state_out")[0]

    async def close(self) -> None:
        await self.client.close()


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
    """One session's detector: feed 512-sample frames in order, get voice events."""

    def __init__(self, vad: SileroVAD, settings: VADSettings = VADSettings()) -> None:
        self.vad = vad
        self.settings = settings
        self._state = np.zeros(VAD_STATE_SHAPE, np.float32)
        self._context = np.zeros(VAD_CONTEXT_SAMPLES, np.float32)
        self._frames: list[np.ndarray] = []  # pre-roll, then the utterance
        self._pre_roll = max(1, round(settings.pre_roll_s / VAD_FRAME_S))
        self._t = 0.0  # uplink time of the next frame (s)
        self._run_start: float | None = None  # first speech frame of a not yet confirmed run
        self.speaking_since: float | None = None
        self._silence_since: float | None = None
        self.last_probability = 0.0

    async def feed(self, frame: np.ndarray) -> VoiceEvent | None:
        s = self.settings
        t, self._t = self._t, self._t + VAD_FRAME_S
        prob, self._state = await self.vad.probability(
            np.concatenate([self._context, frame]), self._state)
        self._context = frame[-VAD_CONTEXT_SAMPLES:].copy()
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
        elif prob < s.neg_threshold and self._silence_since is None:
            paused, self._silence_since = True, t
        now = t + VAD_FRAME_S
        ended = (self._silence_since is not None
                 and now - self._silence_since >= s.min_silence_s)
        if ended or now - self.speaking_since >= s.max_utterance_s:
            end = self._silence_since if self._silence_since is not None else now
            audio = np.concatenate(self._frames)
            self._frames, self._run_start = self._frames[-self._pre_roll:], None
            self.speaking_since = self._silence_since = None
            return SpeechEnded(audio, end, now)
        if paused:
            return SpeechPaused(np.concatenate(self._frames), t)
        if resumed:
            return SpeechResumed(now - self.speaking_since)
        return SpeechContinues(now - self.speaking_since)
