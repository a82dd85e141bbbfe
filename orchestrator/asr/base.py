"""The one interface every speech-recognition engine implements.

An engine turns one finished utterance (mono float32 at 16 kHz, the uplink's rate) into text.
Adding an engine is one module implementing `ASREngine` plus one entry in `ENGINES`
(orchestrator/asr/__init__.py) and its settings (see docs/INTERFACES.md, "ASR and VAD").
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from ..errors import ExternalServiceError
from ..media.clock import AUDIO_SAMPLE_RATE_HZ

ASR_SAMPLE_RATE_HZ = AUDIO_SAMPLE_RATE_HZ  # Whisper takes 16 kHz: the pipeline's rate, as is
# The longest utterance any engine is given: a voice turn is cut here, /api/asr transcribes at
# this length. Whisper's own window is 30 s; asr_whisper takes longer audio through Whisper's
# long-form path (model_repository/asr_whisper: windows moved on at the last timestamp).
MAX_UTTERANCE_S = 60.0


class ASRError(ExternalServiceError, RuntimeError):
    """One transcription failed (server down, bad answer): that turn is dropped with an
    `error` event; the session goes on listening."""


@dataclass(frozen=True)
class SegmentScores:
    """An engine's own scores of one segment of a transcript: `no_speech_prob` (in [0, 1], how
    sure the model is that nothing was said) and `avg_logprob` (mean log-probability of the
    segment's tokens, <= 0; near 0 is confident)."""

    no_speech_prob: float
    avg_logprob: float


@dataclass(frozen=True)
class Transcript:
    """What an engine heard in one utterance: the text, and the engine's scores of each segment
    of it (Whisper: one per 30 s window), empty when the engine gives none."""

    text: str
    scores: tuple[SegmentScores, ...] = ()


class ASREngine(abc.ABC):
    """A speech-recognition engine (Whisper on Triton, an OpenAI-compatible server, ...)."""

    #: registry name (`--asr NAME`), also used in logs and the bench
    name: str = ""
    #: whether `transcribe` may be asked for partial results while the user still speaks
    streaming: bool = False

    @abc.abstractmethod
    async def transcribe(self, audio: np.ndarray) -> str:
        """The text of `audio` (mono float32 in [-1, 1] at ASR_SAMPLE_RATE_HZ, at most
        MAX_UTTERANCE_S long); "" when nothing was said. Raises ASRError."""

    async def transcribe_scored(self, audio: np.ndarray) -> Transcript:
        """`transcribe` with the segments and the engine's scores of them (what turn-taking
        reads to tell speech from what a model invents on noise); engines without scores give
        the text alone. Raises ASRError."""
        return Transcript(await self.transcribe(audio))

    async def close(self) -> None:  # noqa: B027 - engines without resources need no close
        """Release connections; nothing is transcribed afterwards."""
