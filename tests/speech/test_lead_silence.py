"""An answer starts with its first audible sample: the TTS engine's leading silence is cut at the
start of an utterance (it is only delay there) and kept before later sentences (a pause)."""

from __future__ import annotations

import numpy as np

from orchestrator.speech.items import Utterance
from orchestrator.speech.pipeline import (
    LEAD_SILENCE_KEPT_S,
    LEAD_SILENCE_LEVEL,
    SpeechPipeline,
    without_lead_silence,
)
from orchestrator.tts import Voice

RATE_HZ = 22050
LEAD_S = 0.1


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


class _Engine:
    """Each sentence: LEAD_S of near-silence (below the level), then a tone; in 10 ms chunks,
    as a streaming engine would send it."""

    name = "test"
    sample_rate_hz = RATE_HZ

    async def synthesize(self, text: str, voice: Voice):
        hiss = np.full(int(LEAD_S * RATE_HZ), LEAD_SILENCE_LEVEL / 2, np.float32)
        audio = np.concatenate([hiss, _tone(0.3)]) if text != "silent." else hiss
        for start in range(0, audio.size, RATE_HZ // 100):
            yield audio[start:start + RATE_HZ // 100]


class _Router:
    async def route(self, text: str, voice: Voice):
        return _Engine(), voice


async def _pieces(text: str) -> list[tuple[str, np.ndarray]]:
    pipeline = SpeechPipeline(_Router(), None, lambda: 0, 1)  # type: ignore[arg-type]
    utterance = Utterance("1-1", text, Voice.named("joe"), None)  # type: ignore[arg-type]
    sentences: dict[str, np.ndarray] = {}
    async for sentence, features, final in pipeline._sentence_audio(utterance):
        if final:
            sentences[sentence] = np.concatenate(features._chunks)
    return list(sentences.items())


def _lead_s(audio: np.ndarray) -> float:
    return int(np.flatnonzero(np.abs(audio) >= LEAD_SILENCE_LEVEL)[0]) / RATE_HZ


async def test_the_first_sentence_loses_its_lead_silence_the_next_keeps_it():
    (first, a), (second, b) = await _pieces("Hello there. How are you?")
    assert (first, second) == ("Hello there.", "How are you?")
    assert abs(_lead_s(a) - LEAD_SILENCE_KEPT_S) < 1.5 / RATE_HZ
    assert abs(_lead_s(b) - LEAD_S) < 1.5 / RATE_HZ  # a pause between sentences stays
    assert abs(a.size - (b.size - round((LEAD_S - LEAD_SILENCE_KEPT_S) * RATE_HZ))) <= 2


async def test_a_piece_silent_throughout_is_kept_whole():
    ((_, audio),) = await _pieces("silent.")
    assert audio.size == int(LEAD_S * RATE_HZ)


def test_without_lead_silence():
    assert without_lead_silence(np.zeros(100, np.float32), RATE_HZ) is None
    audio = np.concatenate([np.zeros(RATE_HZ, np.float32), _tone(0.1)])
    kept = without_lead_silence(audio, RATE_HZ)
    assert abs(_lead_s(kept) - LEAD_SILENCE_KEPT_S) < 1.5 / RATE_HZ
    assert without_lead_silence(_tone(0.1), RATE_HZ).size == _tone(0.1).size  # nothing to cut
