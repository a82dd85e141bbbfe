"""Numbers, versions and units as they are said, in Chinese and in English, before TTS.

Versions, addresses and units are said in the language of the nearest word ("版本 v2.0.4" and
"5km的路" in Chinese); the other numbers run by run (language.script_runs: a number belongs to the
words before it, so in "iPhone 15发布了" the 15 is English and in "共1001米" it is Chinese):

- Chinese runs: cn2an reads numbers as they are said (1001米 -> 一千零一米, 2005元 -> 二千零五元,
  3.14 -> 三点一四, 2024年 -> 二零二四年, 50% -> 百分之五十, -5 -> 负五, 1/2 -> 二分之一), after our
  rules for what it reads wrongly: thousands separators (1,000 -> 1000), clock times (9:30 ->
  九点三十分), digit strings read digit by digit (phone numbers and ids of DIGIT_BY_DIGIT_MIN
  digits or more, and any with a leading zero: 007 -> 零零七), versions (v2.0.4 -> 版本二点零点四)
  and dotted addresses (192.168.1.1 -> 一九二点一六八点一点一), metric units after a number
  (5km -> 5公里).
- English runs: versions (v2.0.4 -> version 2 point 0 point 4), dotted addresses (192 dot 168 dot
  1 dot 1) and metric units after a number (5 km -> 5 kilometers). Other numbers stay digits:
  Piper's and eSpeak's English rules read them well.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import cn2an

from ..language import has_cjk, is_cjk, is_latin_letter, script_runs

# A run of this many digits or more (no separators) is an id or a phone number: read digit by
# digit in Chinese (English voices do that themselves).
DIGIT_BY_DIGIT_MIN = 7
CHINESE_DIGITS = "零一二三四五六七八九"
# unit after a number -> (English, Chinese); only units spelled as letters, which a voice would
# otherwise read letter by letter
METRIC_UNITS = {
    "km": ("kilometers", "公里"), "cm": ("centimeters", "厘米"), "mm": ("millimeters", "毫米"),
    "kg": ("kilograms", "公斤"), "mg": ("milligrams", "毫克"), "ml": ("milliliters", "毫升"),
    "mL": ("milliliters", "毫升"), "kWh": ("kilowatt hours", "千瓦时"), "kW": ("kilowatts", "千瓦"),
}
_UNIT = re.compile(r"(\d)\s?(" + "|".join(sorted(map(re.escape, METRIC_UNITS), key=len,
                                                   reverse=True)) + r")(?![A-Za-z])")
# v2.0.4, V1.2 (a "v" and at least one dot), 2.0.4 (at least three parts); not inside a word or
# a longer dotted number; a sentence's final "." is not part of it
_VERSION = re.compile(r"(?<![A-Za-z0-9.])([vV])?(\d+(?:\.\d+)+)(?![A-Za-z0-9]|\.\d)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_CLOCK = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?(?![\d:])")
_DIGIT_STRING = re.compile(rf"(?<![\d.,])(0\d+|\d{{{DIGIT_BY_DIGIT_MIN},}})(?![\d.]|,\d)")
_VERSION_WORD_ZH = "版本"


def spoken_numbers(text: str) -> str:
    """`text` with its numbers, versions and units as they are said: versions, addresses and
    units in the language of the words next to them; then each run (language.script_runs) in
    its own language, Chinese where it has Chinese characters, else English."""
    if not has_cjk(text):
        return _units_and_versions(text, lambda start, end: False)
    text = _units_and_versions(text, lambda start, end: _chinese_context(text, start, end))
    return "".join(_chinese(run) if has_cjk(run) else run for run in script_runs(text))


def _chinese_context(text: str, start: int, end: int) -> bool:
    """Whether the nearest letter before text[start:end] (else after it) is a Chinese one."""
    for ch in reversed(text[:start]):
        if is_cjk(ch) or is_latin_letter(ch):
            return is_cjk(ch)
    for ch in text[end:]:
        if is_cjk(ch) or is_latin_letter(ch):
            return is_cjk(ch)
    return False


def _units_and_versions(text: str, chinese: Callable[[int, int], bool]) -> str:
    """Versions, dotted addresses and metric units, each in Chinese where `chinese(start, end)`
    says its context is Chinese, else in English."""

    def version(m: re.Match) -> str:
        parts = m.group(2).split(".")
        address = m.group(1) is None and len(parts) == 4 and all(int(p) <= 255 for p in parts)
        if m.group(1) is None and len(parts) < 3:
            return m.group(0)  # 3.5: a decimal number (cn2an and the English voices read it)
        if chinese(m.start(), m.end()):
            if address:
                return "点".join(_digits(p) for p in parts)
            said_before = text[: m.start()].rstrip().endswith(_VERSION_WORD_ZH)
            prefix = _VERSION_WORD_ZH if m.group(1) and not said_before else ""
            return prefix + "点".join(_integer(p) for p in parts)
        if address:
            return " dot ".join(parts)
        said_before = re.search(r"\bversion\s*$", text[: m.start()], re.I) is not None
        return ("version " if m.group(1) and not said_before else "") + " point ".join(parts)

    def unit(m: re.Match) -> str:
        english, chinese_word = METRIC_UNITS[m.group(2)]
        if chinese(m.start(), m.end()):
            return f"{m.group(1)}{chinese_word}"
        return f"{m.group(1)} {english}"

    return _UNIT.sub(unit, _VERSION.sub(version, text))


def _digits(number: str) -> str:
    return "".join(CHINESE_DIGITS[int(d)] for d in number)


def _chinese(text: str) -> str:
    """A run with Chinese characters: numbers as Chinese says them (after the versions and
    units: `_units_and_versions`)."""

    def clock(m: re.Match) -> str:
        hours, minutes, seconds = m.group(1), m.group(2), m.group(3)
        said = f"{_integer(hours)}点"
        if minutes != "00" or seconds:
            said += ("零" if minutes[0] == "0" and minutes != "00" else "") + \
                f"{_integer(minutes)}分"
        if seconds:
            said += f"{_integer(seconds)}秒"
        return said

    text = _CLOCK.sub(clock, text)
    text = _DIGIT_STRING.sub(lambda m: _digits(m.group(1)), text)
    text = _THOUSANDS.sub("", text)
    with warnings.catch_warnings():  # cn2an warns (and leaves it) for numbers past its range
        warnings.simplefilter("ignore")
        return cn2an.transform(text, "an2cn")


def _integer(number: str) -> str:
    """A whole number in Chinese as it is said (10 -> 十, 2005 -> 二千零五)."""
    return cn2an.an2cn(str(int(number)))
