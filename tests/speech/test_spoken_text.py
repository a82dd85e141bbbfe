"""Text for speech: Markdown, code, URLs, emoji and symbols out; subtitles keep the original."""

from __future__ import annotations

import pytest

from orchestrator.speech.spoken_text import SpokenText, spoken

CASES = [
    # plain text passes unchanged
    ("Hello, how are you today?", "Hello, how are you today?"),
    ("你好，我是数字人。", "你好，我是数字人。"),
    ("It costs $5 and takes 3.5 hours.", "It costs $5 and takes 3.5 hours."),
    # Markdown emphasis
    ("This is **very** important.", "This is very important."),
    ("This is *quite* _nice_ and ***bold italic***.", "This is quite nice and bold italic."),
    ("~~old~~ new", "old new"),
    ("这是**重点**内容。", "这是重点内容。"),
    ("keep snake_case names", "keep snake case names"),
    # headings, quotes, lists, rules
    ("## Getting started", "Getting started"),
    ("> A quoted line", "A quoted line"),
    ("- first item", "first item"),
    ("* second item", "second item"),
    ("1. Install it", "Install it"),
    ("1.", ""),
    ("---", ""),
    ("# 第一步", "第一步"),
    # links, images, URLs
    ("See [the docs](https://example.com/docs) now.", "See the docs now."),
    ("![a diagram](img/x.png) shows it", "a diagram shows it"),
    ("Visit https://www.example.com/path?q=1 for more.", "Visit example.com for more."),
    ("Go to <https://livehuman.dev/start>.", "Go to livehuman.dev."),
    ("网址是 https://www.baidu.com/s?wd=1 。", "网址是 baidu.com。"),
    ("www.github.com/foo/bar is the repo", "github.com is the repo"),
    # code
    ("Run `make test` first.", "Run make test first."),
    ("Try this:\n```python\nprint('hi')\n```\nThen go.", "Try this: Then go."),
    ("```\ncode only\n```", ""),
    ("<b>bold</b> and<br>more", "bold and more"),
    # tables
    ("| a | b |\n|---|---|\n| 1 | 2 |", "a, b. 1, 2"),
    # emoji and symbols
    ("Great job! 🎉🎉", "Great job!"),
    ("👍 好的！", "好的！"),
    ("I ❤️ it ✨", "I it"),
    ("family 👨‍👩‍👧 here", "family here"),
    ("🤖", ""),
    ("Step one → step two", "Step one to step two"),
    ("Tom & Jerry", "Tom and Jerry"),
    ("3 × 4 = 12", "3 times 4 = 12"),
    ("Copyright © 2024 Acme™", "Copyright 2024 Acme"),
    # dates, units, ranges
    ("The date is 2024-05-03.", "The date is May 3, 2024."),
    ("日期是2024-05-03。", "日期是2024年5月3日。"),
    ("It is 25°C outside.", "It is 25 degrees Celsius outside."),
    ("今天25℃。", "今天25 摄氏度。"),
    ("Turn 90° left", "Turn 90 degrees left"),
    ("Speed: 60 km/h.", "Speed: 60 kilometers per hour."),
    ("限速60km/h。", "限速60 公里每小时。"),
    ("Wait 3-5 days.", "Wait 3 to 5 days."),
    ("需要3-5天。", "需要3到5天。"),
    ("增长了50%。", "增长了百分之50。"),
    ("Up 50% this year.", "Up 50% this year."),
    ("Call 555-1234 now", "Call 555-1234 now"),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:30] for c in CASES])
def test_spoken(text, expected):
    assert spoken(text) == expected


def test_code_fence_across_streamed_pieces_is_not_read():
    """A chat answer arrives in pieces (lines): the fence's content is skipped until it closes."""
    text = SpokenText()
    pieces = ["Here is an example:", "```python", "import os", "print(os.getcwd())", "```",
              "That prints the directory."]
    assert [text.piece(p) for p in pieces] == [
        "Here is an example:", "", "", "", "", "That prints the directory."]


def test_nothing_speakable_is_empty():
    for text in ("", "   ", "**", "🎉", "```\nx = 1\n```", "---", "| |"):
        assert spoken(text) == ""
