"""Which script and language a text is in: the one table of CJK ranges and the tests built on it.

Used by sentence splitting and speech-time estimates (speech/items.py), spoken-text rules
(speech/spoken_text.py), the language asked of voice-cloning servers (tts/cloning.py), chat
answers (chat/agent.py) and knowledge-base search (chat/knowledge.py). A leaf: imports nothing
from the project. (The eSpeak Triton model keeps its own check: model_repository/ code runs
inside Triton and imports nothing from here.)
"""

from __future__ import annotations

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
