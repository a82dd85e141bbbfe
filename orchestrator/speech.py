"""Typed items of the speech path and the text → sentences step.

API → Utterance → sentences → (TTS) audio → (features, lip-sync) SpeechFrame → player.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# A clause longer than this is cut at the next comma so the first audio comes sooner.
MAX_CLAUSE_CHARS = 60
MAX_TEXT_CHARS = 5000

_SENTENCE_END = re.compile(r"(?<=[.!?;。！？；…\n])\s*")
_CLAUSE_BREAK = re.compile(r"(?<=[,，、：:])\s*")


@dataclass(frozen=True, eq=False)
class Utterance:
    """One request to speak: the unit that gets an id, start/end events and interruption.

    Either text (spoken by TTS with `voice`) or ready audio (float32, 16 kHz mono).
    """

    id: str
    text: str
    voice: str
    audio: np.ndarray | None = None


@dataclass(frozen=True)
class SpeechFrame:
    """40 ms of speech: the audio that drives this frame and the lip-synced face crop."""

    utterance: Utterance
    avatar_tick: int  # the idle-loop position the crop was rendered against
    face_crop: np.ndarray  # uint8 [S, S, 3] RGB
    audio: np.ndarray  # float32 [640] at 16 kHz


@dataclass(frozen=True)
class UtteranceStarted:
    utterance: Utterance


@dataclass(frozen=True)
class UtteranceEnded:
    utterance: Utterance
    error: str | None = None


SpeechItem = SpeechFrame | UtteranceStarted | UtteranceEnded


def split_sentences(text: str) -> list[str]:
    """Cut text into speakable pieces at English and Chinese punctuation, long clauses at commas."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        if not sentence:
            continue
        if len(sentence) <= MAX_CLAUSE_CHARS:
            pieces.append(sentence)
            continue
        current = ""
        for clause in _CLAUSE_BREAK.split(sentence):
            if current and len(current) + len(clause) > MAX_CLAUSE_CHARS:
                pieces.append(current.strip())
                current = ""
            current += clause + ("" if _is_cjk(clause) else " ")
        if current.strip():
            pieces.append(current.strip())
    return [p for p in pieces if any(ch.isalnum() for ch in p)]


def _is_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)
