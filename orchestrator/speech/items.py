"""Typed items of the speech path and the text → sentences step.

API → Utterance → sentences → (TTS) audio → (features, lip-sync) SpeechFrame → player.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from ..avatar.store import Avatar
from ..language import is_cjk
from ..media.clock import AUDIO_SAMPLE_RATE_HZ
from ..tts.base import Voice
from .clauses import natural_break
from .sentence_ends import sentence_end
from .streamed_audio import StreamedAudio

# A clause longer than this is cut at a comma so the first audio comes sooner.
MAX_CLAUSE_CHARS = 60
# Text with no punctuation at all is cut at a space past this length.
MAX_PIECE_CHARS = 200
MAX_TEXT_CHARS = 5000
# Speaking rates for estimating queued speech before TTS has run (eSpeak's default 175 words a
# minute is ~14 characters a second of English; Chinese runs ~4.5 characters a second).
SPOKEN_CHARS_PER_S = 14.0
SPOKEN_CJK_CHARS_PER_S = 4.5
# A chat answer's length is unknown until the LLM has written it: count it as this much speech.
CHAT_ANSWER_ESTIMATE_S = 15.0
# Why an utterance stopped short of its end (what `Utterance.on_heard` is told; None: it did not).
CUT_BY_USER = "user speech"  # interrupted while the user was speaking (barge-in)
CUT_BY_REQUEST = "interrupt"  # /interrupt_talk, `interrupt: true`
CUT_CLOSED = "closed"  # the session ended
CUT_ERROR = "error"  # the speech path failed

_CLAUSE_BREAKS = ",，、：:"


@dataclass(frozen=True, eq=False)
class Utterance:
    """One request to speak: the unit that gets an id, start/end events and interruption.

    What is spoken: ready audio (float32, 16 kHz mono) if given; else audio as it arrives
    (`stream`: a voice agent's TTS through /audio_stream); else the sentences `source` yields (a
    chat answer as it streams in), spoken by TTS with `voice`; else `text` itself. For a chat
    answer `text` is the question.

    `on_heard(text, cut)` is told once, by the player, what the user heard of it: the sentences
    played whole and the one playing cut where its audio stopped ("" when nothing was heard),
    and why it stopped short (a CUT_* reason; None when it played to its end).
    """

    id: str
    text: str
    voice: Voice
    avatar: Avatar  # who speaks it (multiavatar_config); the switch happens at its start
    audio: np.ndarray | None = None
    source: AsyncIterator[str] | None = None
    kind: str = "echo"
    stream: StreamedAudio | None = None
    on_heard: Callable[[str, str | None], None] | None = None

    @property
    def estimated_seconds(self) -> float:
        """How long it will speak: exact for audio, estimated for text and chat answers."""
        if self.audio is not None:
            return self.audio.size / AUDIO_SAMPLE_RATE_HZ
        if self.stream is not None:
            return self.stream.received_s  # grows as it arrives
        if self.source is not None:
            return CHAT_ANSWER_ESTIMATE_S
        return estimated_speech_seconds(self.text)


@dataclass(frozen=True)
class SpeechFrame:
    """40 ms of speech: the audio that drives this frame and the lip-synced face crop."""

    utterance: Utterance
    avatar_tick: int  # the idle-loop position the crop was rendered against
    face_crop: np.ndarray  # uint8 [S, S, 3] RGB
    audio: np.ndarray  # float32 [640] at 16 kHz
    paste_top_fraction: float | None = None  # the model's (lipsync/base.LipSyncModel)

    @property
    def avatar(self) -> Avatar:
        return self.utterance.avatar


@dataclass(frozen=True)
class UtteranceStarted:
    utterance: Utterance


@dataclass(frozen=True)
class SentenceStarted:
    """The next frames speak this sentence (subtitles, and chat answers as they are spoken);
    `frames`: how many (40 ms each) when its audio was whole at its start, else None (a
    streaming engine's sentence arrives in pieces)."""

    utterance: Utterance
    text: str
    frames: int | None = None


@dataclass(frozen=True)
class UtteranceEnded:
    utterance: Utterance
    error: str | None = None
    cut: bool = False  # a streamed answer stopped at --max-answer-seconds


SpeechItem = SpeechFrame | UtteranceStarted | SentenceStarted | UtteranceEnded


class SentenceStream:
    """Cuts streaming text (LLM tokens) into speakable pieces, each as soon as it is complete:
    at English and Chinese sentence ends (speech/sentence_ends.py: abbreviations, numbers and
    versions stay whole), long clauses at commas."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        pieces = []
        while (cut := self._next_cut(final=False)) is not None:
            pieces.append(self._take(cut))
        return [p for p in pieces if _speakable(p)]

    @property
    def pending(self) -> bool:
        """Whether text waits for its sentence end."""
        return bool(self._buffer.strip())

    def flush_clause(self) -> list[str]:
        """A stalled stream's text so far, up to its last natural break (clauses.py); [] when
        it has none yet."""
        cut = natural_break(self._buffer)
        return [] if cut is None else [p for p in [self._take(cut)] if _speakable(p)]

    def flush(self) -> list[str]:
        """The rest, at the end of the stream."""
        pieces = []
        while self._buffer:
            pieces.append(self._take(self._next_cut(final=True) or len(self._buffer)))
        return [p for p in pieces if _speakable(p)]

    def _take(self, cut: int) -> str:
        piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
        return piece

    def _next_cut(self, final: bool) -> int | None:
        text = self._buffer
        end = sentence_end(text, final)
        sentence_length = end if end is not None else len(text)
        if sentence_length > MAX_CLAUSE_CHARS:
            breaks = [i + 1 for i, ch in enumerate(text[:MAX_CLAUSE_CHARS]) if ch in _CLAUSE_BREAKS]
            if breaks:
                return breaks[-1]
            if end is None and len(text) > MAX_PIECE_CHARS:
                space = text.rfind(" ", 0, MAX_PIECE_CHARS)
                return space if space > 0 else MAX_PIECE_CHARS
        return end


def _speakable(piece: str) -> bool:
    return any(ch.isalnum() for ch in piece)


def estimated_speech_seconds(text: str) -> float:
    """Seconds TTS will take to say `text`, from its character counts (before synthesis)."""
    cjk = sum(1 for ch in text if is_cjk(ch))
    return cjk / SPOKEN_CJK_CHARS_PER_S + (len(text) - cjk) / SPOKEN_CHARS_PER_S


def has_speakable(text: str) -> bool:
    """Whether any piece of `text` would be spoken (letters or digits, not only punctuation,
    emoji or invisible characters)."""
    return bool(split_sentences(text))


def split_sentences(text: str) -> list[str]:
    """Cut a whole text into speakable pieces (the same rules as for streamed text)."""
    stream = SentenceStream()
    return stream.feed(text) + stream.flush()


def join_sentences(sentences: list[str]) -> str:
    """Pieces back into one text: a space between English ones, none after Chinese ones."""
    text = ""
    for sentence in sentences:
        glued = text and (is_cjk(text[-1]) or text[-1] in "。！？；，：、…")
        text += sentence if not text or glued else " " + sentence
    return text
