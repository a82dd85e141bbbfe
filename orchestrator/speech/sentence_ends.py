"""Where a sentence ends in text that may still be growing (an LLM's stream): abbreviations,
initials, numbers and versions stay inside their sentence.

Chinese ends (。！？；…) are unambiguous and cut at once. An ASCII `!`, `?` or `;` ends a sentence
when a space, a closing quote or the end of the text follows. A `.` is the ambiguous one: after
an ordinary word ("today. Then") it ends the sentence at once; after a word that may be an
abbreviation ("Dr.", "Mr.", "e.g.", "U.S.", "p.m.", "No.", a single capital: an initial) the
English segmenter pysbd (rule-based, its own abbreviation lists) decides from the words that
follow, so "Dr. Smith 来了" and "Meet Mr. Li at 3 p.m. today." stay one sentence while "I live in
the U.S. It is big." is two. When nothing follows yet in a stream, such a `.` waits for the next
token (the end of the stream decides otherwise). A digit before a `.` at the end of the text so
far waits too ("3." may go on as "3.5"); "3.5" and "v1.2" never end a sentence (no space).
pysbd covers the languages it has rules for; ours cover the rest (Chinese punctuation).
"""

from __future__ import annotations

import functools
import re

import pysbd
from pysbd.lang.english import English

CJK_SENTENCE_ENDS = "。！？；…\n"
ASCII_SENTENCE_ENDS = ".!?;"
CLOSERS = "\"')]}”’」』）"
# pysbd reads this many characters past a candidate `.` to decide whether it ends a sentence.
LOOKAHEAD_CHARS = 48
DECISIONS_CACHED = 256  # pysbd's decisions kept, by window (streams ask again per token)
# The words before a `.` that may be abbreviations (pysbd's English lists, lower case, without
# their final dot): "dr", "mr", "e.g", "u.s", "no", "fig", "etc"...
ABBREVIATIONS = frozenset(
    a.lower() for a in (*English.Abbreviation.ABBREVIATIONS,
                        *English.Abbreviation.PREPOSITIVE_ABBREVIATIONS,
                        *English.Abbreviation.NUMBER_ABBREVIATIONS))
# "p.m", "U.S", "e.g", "J" (an initial), "Ph.D": letters joined by dots, or one capital
_DOTTED_LETTERS = re.compile(r"(?:[A-Za-z]{1,2}\.)+[A-Za-z]{1,2}|[A-Z]")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")
# after a `.`: closers and spaces, then a whole word (something follows it)
_NEXT_WORD = re.compile(r"[\s\"')\]}”’」』）]*\w+[^\w]", re.S)


@functools.cache
def _english_segmenter() -> pysbd.Segmenter:
    return pysbd.Segmenter(language="en", clean=False)


def sentence_end(text: str, final: bool) -> int | None:
    """Index just past the first complete sentence of `text` (closing quotes included), or
    None when no sentence is complete yet. `final`: no more text will come (the whole text, or
    the end of a stream), so a sentence may end at the very end of `text`."""
    for i, ch in enumerate(text):
        if ch in CJK_SENTENCE_ENDS:
            end = i + 1
        elif ch in ASCII_SENTENCE_ENDS:
            end = i + 1
            while end < len(text) and text[end] in ASCII_SENTENCE_ENDS:
                end += 1  # "?!", "..."
            if end == len(text) and not final and (i == 0 or text[i - 1].isdigit()):
                return None  # "3." may go on as "3.5": the next token decides
            if end < len(text) and not (text[end].isspace() or text[end] in CLOSERS):
                continue  # "3.5", "v1.2", "example.com"
            if ch == "." and end == i + 1 and _may_be_abbreviation(text[:i]):
                if not final and not _NEXT_WORD.match(text, end):
                    return None  # "Mr." and no whole word after it yet: the next word decides
                if text[end:].strip(CLOSERS + " \t") and not _pysbd_boundary(text, i, end):
                    continue  # "Dr. Smith", "3 p.m. today"
        else:
            continue
        while end < len(text) and text[end] in CLOSERS:
            end += 1
        return end
    return None


def _may_be_abbreviation(before: str) -> bool:
    """The word before a `.` is one of pysbd's abbreviations, or dotted letters ("U.S", "p.m"),
    or a single capital (an initial)."""
    match = _WORD_BEFORE.search(before)
    if match is None:
        return False
    word = match.group(1)
    return word.lower().rstrip(".") in ABBREVIATIONS or bool(_DOTTED_LETTERS.fullmatch(word))


def _pysbd_boundary(text: str, i: int, end: int) -> bool:
    """pysbd's decision on the `.` at text[i] (a word follows it), from the sentence so far and
    LOOKAHEAD_CHARS of what follows."""
    return _window_boundary(text[: end + LOOKAHEAD_CHARS], i, end)


@functools.lru_cache(maxsize=DECISIONS_CACHED)
def _window_boundary(window: str, i: int, end: int) -> bool:
    """`_pysbd_boundary` on its window (a stream asks again on every token until the window is
    full: the answer is kept)."""
    after = window[end:]
    position = 0
    for segment in _english_segmenter().segment(window):
        position += len(segment)
        boundary = position - (len(segment) - len(segment.rstrip()))
        if boundary > i:  # the segment holding the `.`: does it end right after it?
            return boundary <= end + len(after) - len(after.lstrip(CLOSERS))
    return False
