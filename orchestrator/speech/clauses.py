"""Where a stalled stream of text may be cut before its sentence ends: the natural breaks a
speaker pauses at (a comma, before a conjunction, else a space after a few words), for an LLM
that has sent no sentence end for a while (chat/agent.py).
"""

from __future__ import annotations

import re

from ..language import is_cjk

# A piece cut at a space (no comma or conjunction) has at least this many characters: fewer
# would be spoken word by word.
MIN_SPACE_CUT_CHARS = 24
# Before a conjunction: at least this much text before it.
MIN_CONJUNCTION_CUT_CHARS = 12
# Chinese without punctuation: cut after this many characters.
MIN_CJK_CUT_CHARS = 10

_CLAUSE_MARKS = ",，、:：;；—–"
_CONJUNCTION = re.compile(
    r"\s(?=(?:and|but|or|so|because|which|while|although|though|then)\s)"
    r"|(?=但是|所以|因为|而且|然后|不过|可是|并且|或者|如果)", re.IGNORECASE)


def natural_break(text: str) -> int | None:
    """Index to cut `text` (streamed so far, its last word perhaps incomplete) at its last
    natural break: just after a clause mark, else before a conjunction, else at a space past
    MIN_SPACE_CUT_CHARS (or after MIN_CJK_CUT_CHARS of Chinese). None when there is none."""
    complete = _complete_part(text)
    marks = [i + 1 for i, ch in enumerate(complete) if ch in _CLAUSE_MARKS
             and not _inside_number(text, i) and _speakable(complete[:i])]
    if marks:
        return marks[-1]
    conjunctions = [m.start() for m in _CONJUNCTION.finditer(complete)
                    if len(complete[:m.start()].strip()) >= MIN_CONJUNCTION_CUT_CHARS]
    if conjunctions:
        return conjunctions[-1]
    spaces = [i for i, ch in enumerate(complete) if ch.isspace() and i >= MIN_SPACE_CUT_CHARS]
    if spaces:
        return spaces[-1]
    if complete and is_cjk(complete[-1]) and len(complete.strip()) >= MIN_CJK_CUT_CHARS:
        return len(complete)
    return None


def _complete_part(text: str) -> str:
    """`text` without a last word that may still be growing (Latin text not ending in a space or
    mark); Chinese characters are whole tokens."""
    if not text or text[-1].isspace() or text[-1] in _CLAUSE_MARKS or is_cjk(text[-1]):
        return text
    cut = max((i for i, ch in enumerate(text) if ch.isspace() or is_cjk(ch)), default=-1)
    return text[:cut + 1]


def _inside_number(text: str, i: int) -> bool:
    """A mark between digits ("1,000", "3:15"), or after a digit at the end (more may come)."""
    before = i > 0 and text[i - 1].isdigit()
    return before and (i + 1 == len(text) or text[i + 1].isdigit())


def _speakable(piece: str) -> bool:
    return any(ch.isalnum() for ch in piece)
