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
    ("日期是2024-05-03。", "日期是二零二四年五月三日。"),
    ("It is 25°C outside.", "It is 25 degrees Celsius outside."),
    ("今天25℃。", "今天二十五 摄氏度。"),
    ("Turn 90° left", "Turn 90 degrees left"),
    ("Speed: 60 km/h.", "Speed: 60 kilometers per hour."),
    ("限速60km/h。", "限速六十 公里每小时。"),
    ("Wait 3-5 days.", "Wait 3 to 5 days."),
    ("需要3-5天。", "需要三到五天。"),
    ("增长了50%。", "增长了百分之五十。"),
    ("Up 50% this year.", "Up 50% this year."),
    ("Call 555-1234 now", "Call 555-1234 now"),
    # numbers as they are said (issue 22): Chinese numbers in Chinese words, whatever the unit
    ("1001米", "一千零一米"),
    ("2005元", "二千零五元"),
    ("共1,000,000元，电话13800138000。", "共一百万元，电话一三八零零一三八零零零。"),
    ("9:05开会，007号房间。", "九点零五分开会，零零七号房间。"),
    ("走了5km，重3kg。", "走了五公里，重三公斤。"),
    ("It weighs 5 kg and runs 10km.", "It weighs 5 kilograms and runs 10 kilometers."),
    ("圆周率是3.14，第1名。", "圆周率是三点一四，第一名。"),
    # versions and addresses: read as parts, in the language around them
    ("我们发布了 v2.0.4。", "我们发布了 版本二点零点四。"),
    ("版本 v2.10.3 发布了", "版本 二点十点三 发布了"),
    ("Version v2.0.4 is out.", "Version 2 point 0 point 4 is out."),
    ("Update to v2.0.4 today.", "Update to version 2 point 0 point 4 today."),
    ("Ping 192.168.1.1 now.", "Ping 192 dot 168 dot 1 dot 1 now."),
    ("服务器192.168.1.1。", "服务器一九二点一六八点一点一。"),
    ("It costs 3.5 dollars in 2024.", "It costs 3.5 dollars in 2024."),
    # mixed: a number belongs to the words before it
    ("iPhone 15发布了。", "iPhone 15发布了。"),
    ("我有3个 apples。", "我有三个 apples。"),
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
