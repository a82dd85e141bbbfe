"""Natural breaks of a stalled text stream (speech/clauses.py): where a slow LLM's text is cut
when no sentence end has come for a while (issue 22, item 3)."""

from orchestrator.speech.clauses import natural_break
from orchestrator.speech.items import SentenceStream


def cut(text: str) -> str | None:
    at = natural_break(text)
    return None if at is None else text[:at]


def test_a_comma_is_the_first_choice():
    assert cut("Well, I think that the answer is") == "Well,"
    assert cut("First we go, then we stay, and") == "First we go, then we stay,"
    assert cut("你好，我是") == "你好，"


def test_before_a_conjunction():
    assert cut("The weather was fine and the sea was calm but ") == \
        "The weather was fine and the sea was calm"


def test_a_space_only_after_a_few_words():
    assert cut("The capital of") is None
    assert cut("The capital of the country that lies north ") == \
        "The capital of the country that lies north"


def test_a_word_still_growing_is_left_alone():
    assert cut("The capital of the country that lies nor") == "The capital of the country that lies"


def test_numbers_are_not_cut_at_their_separators():
    assert cut("It costs 1,") is None
    assert cut("It costs 1,000 dollars today") is None


def test_chinese_without_punctuation_after_some_characters():
    assert cut("今天天气") is None
    assert cut("今天天气很好我们一起出去走走") == "今天天气很好我们一起出去走走"


def test_the_stream_keeps_the_rest():
    stream = SentenceStream()
    assert stream.feed("Well, I think the answer ") == []
    assert stream.pending
    assert stream.flush_clause() == ["Well,"]
    assert stream.flush_clause() == []
    assert stream.feed("is yes. Next") == ["I think the answer is yes."]
    assert stream.flush() == ["Next"]
