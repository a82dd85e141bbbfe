"""What a spoken question's words stand for in a knowledge base: speech recognition writes names
and compounds its own way ("live human", "life human" for "livehuman"), gets rare words nearly
right ("Trighton"), and writes numbers in words or in digits ("twenty five", "eighty ten").

`Spellings` is built from a knowledge base's own words (its vocabulary) and reads a question's
words in order: adjacent words whose join is a vocabulary word are that word; a joined word that
the vocabulary has split ("lipsync") is its parts; a word (or adjacent words, joined) that is
not in the vocabulary but within a small edit distance of one word in it (rapidfuzz's
Levenshtein distance), or that sounds like one (jellyfish's Metaphone codes one edit apart:
"tried and", "tri-in" for Triton), is taken for that word. Numbers become digits on both sides
first (text2num's alpha2digit, "8,010" as 8010), so "eight thousand ten" finds 8010.

A word taken for another is marked (`Term.corrected`): knowledge.py weighs it as the unknown
word it was, so a correction can only help a match whose text really has the corrected word,
never lift an off-topic question over the FAQ's coverage threshold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import jellyfish
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein
from text_to_num import alpha2digit

# A near miss is one edit in a word of NEAR_MIN_CHARS or more, two from NEAR_TWO_EDITS_CHARS on.
NEAR_MIN_CHARS = 5
NEAR_TWO_EDITS_CHARS = 8
MAX_JOINED_WORDS = 3  # "live human" -> livehuman, "eighty ten" -> 8010
# Sounds like: Metaphone codes one edit apart (the question's of SOUND_MIN_CODE letters or more,
# the vocabulary word's of SOUND_MIN_WORD_CODE: short codes are shared by too many words), the
# same first letter, a vocabulary word of NEAR_MIN_CHARS or more, at most half the letters (of
# the longer word) different.
SOUND_MIN_CODE = 3
SOUND_MIN_WORD_CODE = 4
_THOUSANDS = re.compile(r"(?<=\d)[,\u202f](?=\d{3}\b)")


def numbers_as_digits(text: str) -> str:
    """Numbers written in English words as digits ("twenty five" -> "25"; small ones such as
    "one" and "two" stay words, they are rarely numbers in a question), and digit groups
    without their thousands separators ("8,010" -> "8010")."""
    return _THOUSANDS.sub("", alpha2digit(text, "en"))


@dataclass(frozen=True)
class Term:
    """A question's word as the knowledge base spells it: `word`, and `said`, what the question
    had ("life human" for livehuman), when it was taken for a vocabulary word by its spelling
    (`corrected`)."""

    word: str
    said: str
    corrected: bool = False


class Spellings:
    """A knowledge base's vocabulary (lowercase words), most frequent first, and the question
    words it resolves. `stopwords`: words never joined into a near miss nor corrected;
    `normal`: how a word is folded before it is looked up (the knowledge base's plural folding);
    both the knowledge base's own."""

    def __init__(self, vocabulary: Iterable[str], stopwords: frozenset[str],
                 normal=lambda word: word) -> None:
        self._words = [w for w in dict.fromkeys(vocabulary) if w.isascii() and w.isalnum()]
        self._known = set(self._words)
        self._sounds = [(w, code) for w in self._words if len(w) >= NEAR_MIN_CHARS and w.isalpha()
                        and len(code := jellyfish.metaphone(w)) >= SOUND_MIN_WORD_CODE]
        self._stopwords = stopwords
        self._normal = normal

    def resolve(self, said: list[str]) -> list[Term]:
        """`said`: a question's lowercase words in order (stopwords included: they may be part
        of a join); its terms, stopwords left out."""
        terms: list[Term] = []
        i = 0
        while i < len(said):
            joined = self._joined(said, i)
            if joined is not None:
                term, used = joined
                terms.append(term)
                i += used
                continue
            word = said[i]
            i += 1
            if word in self._stopwords:
                continue
            normal = self._normal(word)
            if normal in self._known or word.isdigit():
                terms.append(Term(normal, word))
            elif (parts := self._split(normal)) is not None:
                terms += [Term(part, word, corrected=True) for part in parts]
            elif (near := self._near(normal)) is not None:
                terms.append(Term(near, word, corrected=True))
            else:
                terms.append(Term(normal, word))
        return terms

    def _joined(self, said: list[str], i: int) -> tuple[Term, int] | None:
        """The vocabulary word that words i, i+1 (and i+2) make together, and how many."""
        for count in range(MAX_JOINED_WORDS, 1, -1):
            parts = said[i:i + count]
            if len(parts) < count:
                continue
            together = self._normal("".join(parts))
            if together in self._known:
                return Term(together, " ".join(parts)), count
            # A near miss only of words that are not all the knowledge base's own ("life human"
            # may be livehuman, "run make" is two words it knows), starting with a word that is
            # not a stopword ("tried and" may be Triton, "what is" is nothing).
            content = [p for p in parts if p not in self._stopwords]
            if parts[0] in self._stopwords or any(p.isdigit() for p in parts) or all(
                    self._normal(p) in self._known for p in content):
                continue
            near = self._near(together, joined=count == 2)  # three: one may be a word of its own
            if near is not None:
                return Term(near, " ".join(parts), corrected=True), count
        return None

    def _split(self, word: str) -> list[str] | None:
        """Two vocabulary words that make `word` ("lipsync" -> lip, sync), if any."""
        for cut in range(2, len(word) - 1):
            left, right = word[:cut], self._normal(word[cut:])
            if left in self._known and right in self._known and left not in self._stopwords \
                    and right not in self._stopwords:
                return [left, right]
        return None

    def _near(self, word: str, joined: bool = False) -> str | None:
        """The vocabulary word within the edit distance a word of its length allows (the most
        frequent among the closest), else one that sounds like it (`_sounds_like`: the same
        sounds for one word, one sound apart for words joined), if any."""
        if not word.isalpha():
            return None
        if len(word) >= NEAR_MIN_CHARS:
            edits = 2 if len(word) >= NEAR_TWO_EDITS_CHARS else 1
            found = process.extractOne(word, self._words, scorer=Levenshtein.distance,
                                       score_cutoff=edits)
            if found is not None:
                return found[0]
        return self._sounds_like(word, 1 if joined else 0)

    def _sounds_like(self, word: str, code_edits: int) -> str | None:
        """The vocabulary word whose Metaphone code is at most `code_edits` from `word`'s,
        with the same first letter and at most half of the longer one's letters different
        (the fewest). One word that merely sounds close ("train") is a word of its own; words
        that run together ("tried and") are a name said apart."""
        code = jellyfish.metaphone(word)
        if len(code) < SOUND_MIN_CODE:
            return None
        best: tuple[int, str] | None = None
        for candidate, candidate_code in self._sounds:
            if candidate[0] != word[0] or Levenshtein.distance(code, candidate_code) > code_edits:
                continue
            letters = Levenshtein.distance(word, candidate)
            if letters <= max(len(word), len(candidate)) // 2 and (best is None
                                                                  or letters < best[0]):
                best = (letters, candidate)
        return best[1] if best is not None else None
