"""What bounds one utterance's speech: the TTS deadlines (first audio, then a minimum rate of
audio) and an answer's length.

A TTS engine (a cloning server over HTTP, a model on Triton) must send a sentence's first audio
within `first_audio_timeout_s` and afterwards keep sending audio at no less than `min_realtime`
times real time (with AUDIO_RATE_SLACK_S of audio as slack), or the sentence fails with
TTSDeadlineError: the request is cancelled (its connection closed, so nothing of it arrives
late) and the utterance ends with an `error` event naming the engine and the reason.

Only the time spent waiting on the engine counts: while the pipeline holds a chunk (lip-sync is
behind, the queue is full) the engine's clock stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from ..settings import (
    DEFAULT_MAX_ANSWER_S,
    DEFAULT_TTS_FIRST_AUDIO_TIMEOUT_S,
    DEFAULT_TTS_MIN_REALTIME,
)
from ..tts.base import TTSServerError

# Audio (seconds) an engine may be behind `min_realtime` before the sentence fails: a chunked
# server sends ~0.1-1 s pieces, so one late piece is not a failure.
AUDIO_RATE_SLACK_S = 1.0


class TTSDeadlineError(TTSServerError):
    """A TTS engine sent no audio in time, or too slowly to be spoken (an expected failure of
    an external server: the utterance ends with its message as the `error` event)."""


@dataclass(frozen=True)
class SpeechLimits:
    """Bounds of one session's speech (the settings of the same names).

    `first_audio_timeout_s` (s): a sentence's first audio must arrive within it.
    `min_realtime` (audio s per waited s, 0 < x): afterwards audio must arrive at least this fast.
    `max_answer_s` (s): a streamed (chat) answer stops taking sentences once it has this much
    audio; its `end` event says it was cut.
    """

    first_audio_timeout_s: float = DEFAULT_TTS_FIRST_AUDIO_TIMEOUT_S
    min_realtime: float = DEFAULT_TTS_MIN_REALTIME
    max_answer_s: float = DEFAULT_MAX_ANSWER_S


DEFAULT_SPEECH_LIMITS = SpeechLimits()


async def paced_audio(engine: str, chunks: AsyncIterator[np.ndarray],
                      rate_hz: Callable[[], int], limits: SpeechLimits,
                      ) -> AsyncIterator[np.ndarray]:
    """`chunks` (float32 mono audio of engine `engine`, at `rate_hz()` Hz as each arrives) passed
    on while they keep the deadlines; raises TTSDeadlineError (after cancelling the engine's
    pending read) when the first audio takes longer than `limits.first_audio_timeout_s` of
    waiting, or later audio falls more than AUDIO_RATE_SLACK_S behind `limits.min_realtime`.
    The caller closes `chunks` (aclosing) when this ends."""
    waited_s = 0.0  # time spent inside the engine (not while our consumer held a chunk)
    first_at: float | None = None  # waited_s at the first audio
    audio_s = 0.0
    while True:
        if first_at is None:
            budget = limits.first_audio_timeout_s - waited_s
        else:
            budget = first_at + (audio_s + AUDIO_RATE_SLACK_S) / limits.min_realtime - waited_s
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            waited_s += time.monotonic() - started
            if first_at is None:
                raise TTSDeadlineError(
                    f"TTS engine '{engine}' sent no audio within "
                    f"{limits.first_audio_timeout_s:g} s (--tts-first-audio-timeout)") from None
            raise TTSDeadlineError(
                f"TTS engine '{engine}' sent {audio_s:.2f} s of audio in "
                f"{waited_s - first_at:.1f} s after its first, slower than "
                f"{limits.min_realtime:g}x real time (--tts-min-realtime)") from None
        waited_s += time.monotonic() - started
        size = int(np.asarray(chunk).size)
        if size == 0:
            yield chunk
            continue
        if first_at is None:
            first_at = waited_s
        audio_s += size / rate_hz()
        yield chunk
