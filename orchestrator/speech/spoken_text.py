"""Text as it is said: what reaches TTS, not what is shown.

LLM answers and echo text come with Markdown, code, links and emoji that a voice would read out
("asterisk asterisk", "h t t p s colon slash slash"). `SpokenText` turns each piece (sentence or
clause, as the speech pipeline cuts them) into what should be heard; subtitles and SSE events keep
the original. English and Chinese:

- Markdown: emphasis, headings, quotes, list markers, tables and rules lose their marks; links
  and images keep their text; inline code keeps its content; fenced code blocks are not read
  (also when a stream cuts them into several pieces: the filter remembers an open fence).
- URLs are read as their domain (`https://www.example.com/a?b` -> `example.com`).
- Emoji, pictographs, arrows, dingbats and invisible characters are removed.
- English numbers stay for the engine (eSpeak and Piper read them), except what they read
  wrongly: ISO dates (`2024-05-03` -> `May 3, 2024` / `2024年5月3日`), degrees (`25°C`), some
  units (`km/h`), `&`, `×`, ranges (`3-5`), and percentages in Chinese (`百分之50`); then
  numbers, versions and units as they are said (speech/spoken_numbers.py: Chinese numbers
  in Chinese words, `1001米` -> `一千零一米`; `v2.0.4` -> `version 2 point 0 point 4`).
"""

from __future__ import annotations

import re
import unicodedata

from ..language import has_cjk
from .spoken_numbers import spoken_numbers

_FENCE = re.compile(r"^\s*(```|~~~)")
_FENCED_BLOCK = re.compile(r"(```|~~~)[^\n]*\n.*?(\n\s*\1|$)", re.S)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_AUTOLINK = re.compile(r"<((?:https?|ftp)://[^>\s]+)>")
_URL = re.compile(r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"'）)\]，。]*[^\s<>\"'）)\]，。.,;:!?]",
                  re.I)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_INLINE_CODE = re.compile(r"`+([^`]*)`+")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.M)
_QUOTE = re.compile(r"^\s{0,3}(?:>\s?)+", re.M)
_BULLET = re.compile(r"^\s*[-*+•·]\s+", re.M)
_ORDERED = re.compile(r"^\s*\d{1,3}[.)、]\s+", re.M)
_LONE_MARKER = re.compile(r"^\s*(?:\d{1,3}[.)、]|[-*+•·]|#{1,6})\s*$")
_RULE = re.compile(r"^[ \t]*([-*_=])(?:[ \t]*\1){2,}[ \t]*$", re.M)
_TABLE_SEPARATOR = re.compile(r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$",
                              re.M)
_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3}|~~)(?=\S)(.+?)(?<=\S)\1")
_SINGLE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_(?=\S)(.+?)(?<=\S)_(?![A-Za-z0-9])")
_ISO_DATE = re.compile(r"(?<![\d-])(\d{4})-(\d{1,2})-(\d{1,2})(?![\d-])")
_TABLE_ROW = re.compile(r"^[ \t]*\|(.*)\|[ \t]*$", re.M)
_RANGE = re.compile(r"(?<![\d.-])(\d+(?:\.\d+)?)\s?[-–~～](\d+(?:\.\d+)?)(?![\d-])")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s?[%％]")
_DEGREES = re.compile(r"(\d)\s?(?:°\s?([CF])\b|℃|℉|°)")
_SPACES = re.compile(r"[ \t\u3000]+")

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
# unit -> (English, Chinese); only units the engines spell out wrongly
UNITS = {
    "km/h": ("kilometers per hour", "公里每小时"),
    "m/s": ("meters per second", "米每秒"),
    "mph": ("miles per hour", "英里每小时"),
}
_UNIT = re.compile(r"(\d)\s?(" + "|".join(re.escape(u) for u in UNITS) + r")(?![A-Za-z])")
SYMBOL_WORDS = {"&": (" and ", "和"), "×": (" times ", "乘"), "÷": (" divided by ", "除以"),
                "±": (" plus or minus ", "正负"), "≈": (" about ", "约"), "→": (" to ", "到")}
DEGREE_WORDS = {"C": ("degrees Celsius", "摄氏度"), "F": ("degrees Fahrenheit", "华氏度"),
                "℃": ("degrees Celsius", "摄氏度"), "℉": ("degrees Fahrenheit", "华氏度"),
                "": ("degrees", "度")}
# characters that are never read: symbols (emoji, dingbats, arrows), format and private use;
# currency (Sc) and math (Sm: + = < >) stay for the engine, ° is handled above
_DROPPED_CATEGORIES = frozenset({"So", "Sk", "Cf", "Co", "Cs", "Cn"})
_KEPT_SYMBOLS = frozenset("°")


def _domain(match: re.Match) -> str:
    url = match.group(0)
    host = re.sub(r"^(?:(?:https?|ftp)://)?", "", url, flags=re.I).split("/")[0].split("?")[0]
    host = host.split("@")[-1].split(":")[0]
    host = re.sub(r"^www\.", "", host, flags=re.I).rstrip(".")
    return f" {host} " if "." in host else " "


def _drop_symbols(text: str) -> str:
    return "".join(ch for ch in text if ch in _KEPT_SYMBOLS or not (
        unicodedata.category(ch) in _DROPPED_CATEGORIES or "\ufe00" <= ch <= "\ufe0f"
        or "\U000e0000" <= ch <= "\U000e01ef"))  # variation selectors, emoji tags


def _expand(text: str, zh: bool) -> str:
    k = 1 if zh else 0

    def date(m: re.Match) -> str:
        year, month, day = m.group(1), int(m.group(2)), int(m.group(3))
        if not (1 <= month <= 12 and 1 <= day <= 31):
            return m.group(0)
        return f"{year}年{month}月{day}日" if zh else f"{MONTHS[month - 1]} {day}, {year}"

    text = _ISO_DATE.sub(date, text)
    def degrees(m: re.Match) -> str:
        mark = m.group(0)
        unit = m.group(2) or ("℃" if "℃" in mark else "℉" if "℉" in mark else "")
        return f"{m.group(1)} {DEGREE_WORDS[unit][k]} "

    text = _DEGREES.sub(degrees, text)
    text = _UNIT.sub(lambda m: f"{m.group(1)} {UNITS[m.group(2)][k]} ", text)
    def number_range(m: re.Match) -> str:
        low, high = m.group(1), m.group(2)
        phone = len(low) == 3 and len(high) == 4  # 555-1234
        if phone or float(low) >= float(high):
            return m.group(0)
        return f"{low}{'到' if zh else ' to '}{high}"

    text = _RANGE.sub(number_range, text)
    if zh:
        text = _PERCENT.sub(lambda m: f"百分之{m.group(1)}", text)
    for symbol, words in SYMBOL_WORDS.items():
        text = text.replace(symbol, words[k])
    return text


def spoken(text: str) -> str:
    """One self-contained text as it should be heard ("" when nothing is left to say)."""
    return SpokenText().piece(text)


class SpokenText:
    """Pieces of one utterance, in order (state: whether a code fence is open)."""

    def __init__(self) -> None:
        self.in_code = False

    def piece(self, text: str) -> str:
        text = _FENCED_BLOCK.sub(" ", text) if not self.in_code else text
        lines = []
        for line in text.split("\n"):
            if _FENCE.match(line):
                self.in_code = not self.in_code
                continue
            if not self.in_code:
                lines.append(line)
        return self._clean("\n".join(lines))

    @staticmethod
    def _clean(text: str) -> str:
        if _LONE_MARKER.match(text):
            return ""
        zh = has_cjk(text)
        text = _IMAGE.sub(r"\1", text)
        text = _LINK.sub(r"\1", text)
        text = _AUTOLINK.sub(r"\1", text)
        text = _URL.sub(_domain, text)
        text = _HTML_TAG.sub(" ", text)
        text = _INLINE_CODE.sub(r"\1", text)
        text = _TABLE_SEPARATOR.sub("", text)
        text = _TABLE_ROW.sub(r"\1", text)
        text = _RULE.sub("", text)
        text = _HEADING.sub("", text)
        text = _QUOTE.sub("", text)
        text = _BULLET.sub("", text)
        text = _ORDERED.sub("", text)
        for _ in range(2):  # nested: ***bold italic***, **_both_**
            text = _EMPHASIS.sub(r"\2", text)
            text = _SINGLE_UNDERSCORE.sub(r"\1", text)
        text = text.replace("|", "，" if zh else ", ")
        text = spoken_numbers(_expand(text, zh))
        text = _drop_symbols(text)
        text = re.sub(r"[*#`~^]+", " ", text)
        text = text.replace("_", " ")
        text = re.sub(r"([,.!?;:，。！？；：])\s*\n\s*", r"\1 ", text.strip())
        text = re.sub(r"\s*\n[\s\n]*", "，" if zh else ". ", text)
        text = _SPACES.sub(" ", text)
        text = re.sub(r"\s+([,.!?;:，。！？；：])", r"\1", text)
        text = re.sub(r"^[\s,.;:，。；：、]+", "", text)
        text = re.sub(r"([,，])[\s,，]*([,，.。!?！？])", r"\2", text)
        return text.strip() if any(ch.isalnum() for ch in text) else ""
