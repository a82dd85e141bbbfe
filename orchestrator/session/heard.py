"""What the user has heard of the utterance playing: the sentences played whole, and the one
playing cut where its audio stopped (LiveKit's synchronized transcript, by the player's count).

The speech pipeline reads ahead of the player, so what was produced is not what was heard: only
the player, which counts the frames it plays, knows. Within a sentence the words are taken as
evenly spread over its audio (a word counts as heard when the share of the sentence's characters
up to its end is within the share of its frames played); Chinese text is cut by characters.
"""

from __future__ import annotations

import re

from ..language import has_cjk
from ..media.clock import VIDEO_FPS
from ..speech.items import estimated_speech_seconds, join_sentences

_WORD_ENDS = re.compile(r"\S+")


def heard_part(sentence: str, fraction: float) -> str:
    """The beginning of `sentence` said in the first `fraction` (0..1) of its audio: whole words
    (characters for Chinese), "" when not one of them was said through."""
    if fraction >= 1.0:
        return sentence
    said = fraction * len(sentence)
    if has_cjk(sentence):
        return sentence[:int(said)].rstrip()
    ends = [m.end() for m in _WORD_ENDS.finditer(sentence) if m.end() <= said]
    return sentence[:ends[-1]] if ends else ""


class HeardText:
    """One utterance as it plays: `sentence` at each SentenceStarted played, `frame` at each of
    its speech frames played; `heard` is what was said so far, `sentences` every sentence begun."""

    def __init__(self) -> None:
        self.sentences: list[str] = []
        self._frames: int | None = None  # the current sentence's frames, when known
        self._played = 0  # its frames played so far

    def sentence(self, text: str, frames: int | None) -> None:
        self.sentences.append(text)
        self._frames, self._played = frames, 0

    def frame(self) -> None:
        self._played += 1

    @property
    def whole(self) -> str:
        """Every sentence begun, joined (what an utterance played to its end said)."""
        return join_sentences(self.sentences)

    @property
    def heard(self) -> str:
        """The sentences played whole, and the current one up to where its audio stopped."""
        if not self.sentences:
            return ""
        current = self.sentences[-1]
        frames = self._frames
        if frames is None:  # a sentence streamed in pieces: its length estimated from the text
            frames = max(round(estimated_speech_seconds(current) * VIDEO_FPS), self._played)
        part = heard_part(current, self._played / frames if frames else 1.0)
        return join_sentences([*self.sentences[:-1], *([part] if part else [])])
