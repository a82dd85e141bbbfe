"""Which script and language a text is in: the one table of CJK ranges and the tests built on it.

Used by sentence splitting and speech-time estimates (speech/items.py), spoken-text rules
(speech/spoken_text.py, speech/spoken_numbers.py), mixed sentences cut by script for their
voices (tts/router.py), the language asked of voice-cloning servers (tts/cloning.py), chat
answers (chat/agent.py) and knowledge-base search (chat/knowledge.py). A leaf: imports nothing
from the project. (The eSpeak Triton model keeps its own check: model_repository/ code runs
inside Triton and imports nothing from here.)
"""

from __future__ import annotations

import unicodedata

# Chinese characters (Han ideographs): no spaces between words, a Chinese voice, jieba's words.
CJK_RANGES = (
    ("\u3400", "\u4dbf"),  # CJK unified ideographs extension A
    ("\u4e00", "\u9fff"),  # CJK unified ideographs
    ("\uf900", "\ufaff"),  # CJK compatibility ideographs
)
# The same ranges as the body of a regular-expression character class: rf"[{CJK_CHAR_CLASS}]".
CJK_CHAR_CLASS = "".join(f"{low}-{high}" for low, high in CJK_RANGES)


def is_cjk(ch: str) -> bool:
    """Whether one character is a Chinese character (in CJK_RANGES)."""
    return any(low <= ch <= high for low, high in CJK_RANGES)


def has_cjk(text: str) -> bool:
    """Whether any character of `text` is a Chinese character."""
    return any(is_cjk(ch) for ch in text)


def language_of(text: str) -> str:
    """'zh' for text with Chinese characters, else 'en' (the two languages the chat and the
    voice-cloning servers are asked for by default)."""
    return "zh" if has_cjk(text) else "en"


def is_latin_letter(ch: str) -> bool:
    """Whether one character is a letter of the Latin script (English, French, pinyin...)."""
    if ch.isascii():
        return ch.isalpha()
    return ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN")


def script_runs(text: str) -> list[str]:
    """`text` cut where its letters change between Chinese characters and Latin letters
    ("我喜欢 Python 编程" -> ["我喜欢 ", "Python ", "编程"]): each run holds letters of one of the
    two; digits, punctuation, spaces and other scripts stay with the run before them (at the
    start, with the first run). Joined, the runs are `text`; text in one script is one run."""
    runs: list[str] = []
    start = 0
    script = None  # of the run being read: "zh", "latin" or None before its first letter
    for i, ch in enumerate(text):
        kind = "zh" if is_cjk(ch) else "latin" if is_latin_letter(ch) else None
        if kind is None or kind == script:
            continue
        if script is not None:
            runs.append(text[start:i])
            start = i
        script = kind
    runs.append(text[start:])
    return [run for run in runs if run]
