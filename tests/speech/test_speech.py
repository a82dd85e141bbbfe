import pytest

from orchestrator.speech.items import (
    MAX_CLAUSE_CHARS,
    MAX_PIECE_CHARS,
    SentenceStream,
    split_sentences,
)


def test_english_sentences():
    assert split_sentences("Hello there. How are you? Fine!") == [
        "Hello there.", "How are you?", "Fine!"]


def test_chinese_sentences_keep_punctuation():
    assert split_sentences("你好，我是数字人。今天天气很好！我们开始吧") == [
        "你好，我是数字人。", "今天天气很好！", "我们开始吧"]


def test_long_clauses_are_cut_at_commas():
    text = ", ".join(["a clause of about thirty chars"] * 6) + "."
    pieces = split_sentences(text)
    assert len(pieces) > 1
    assert all(len(p) <= MAX_CLAUSE_CHARS + 35 for p in pieces)
    assert " ".join(pieces).replace("  ", " ").count("clause") == 6


def test_punctuation_only_is_nothing_to_say():
    assert split_sentences("... !!! 。") == []


def stream_pieces(tokens):
    """(piece, index of the token after which it came out) for a token stream."""
    stream = SentenceStream()
    out = []
    for i, token in enumerate(tokens):
        out += [(p, i) for p in stream.feed(token)]
    return out + [(p, len(tokens)) for p in stream.flush()]


def test_streamed_sentences_come_out_as_soon_as_complete():
    tokens = ["Hello", " there", ".", " How", " are", " you", "?", " I", " am", " fine"]
    assert stream_pieces(tokens) == [("Hello there.", 2), ("How are you?", 6), ("I am fine", 10)]


def test_streamed_chinese_cut_at_once():
    tokens = ["你好", "，我是", "数字人", "。今天", "天气很好", "！"]
    assert stream_pieces(tokens) == [("你好，我是数字人。", 3), ("今天天气很好！", 5)]


def test_decimal_points_and_versions_are_not_sentence_ends():
    tokens = ["It costs 3", ".", "5 dollars in v1", ".2 now", ". Thanks", "!"]
    assert [p for p, _ in stream_pieces(tokens)] == ["It costs 3.5 dollars in v1.2 now.", "Thanks!"]


def test_closing_quotes_stay_with_their_sentence():
    assert split_sentences('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]
    assert split_sentences("他说：“好。”然后走了。") == ["他说：“好。”", "然后走了。"]


def test_streaming_matches_whole_text_splitting():
    text = ("Welcome! Today, everything is on sale, and our team is happy to help you find what "
            "you need, whatever it is. 欢迎光临，今天全场打折，我们的团队很乐意帮助您。Ask me anything.")
    tokens = [text[i : i + 3] for i in range(0, len(text), 3)]
    assert [p for p, _ in stream_pieces(tokens)] == split_sentences(text)


def test_text_without_punctuation_is_cut_at_a_space():
    words = " ".join(["word"] * 100)
    pieces = split_sentences(words)
    assert len(pieces) > 1 and all(len(p) <= MAX_PIECE_CHARS for p in pieces)
    assert " ".join(pieces) == words


# --- abbreviations (issue 22): a "." after one is no sentence end unless what follows says so
@pytest.mark.parametrize("text, pieces", [
    ("Dr. Smith 来了", ["Dr. Smith 来了"]),
    ("Meet Mr. Li at 3 p.m. today.", ["Meet Mr. Li at 3 p.m. today."]),
    ("The U.S. team won, e.g. in chess.", ["The U.S. team won, e.g. in chess."]),
    ("Use i.e. this one, not Fig. 3 or No. 5 please.",
     ["Use i.e. this one, not Fig. 3 or No. 5 please."]),
    ("J. R. R. Tolkien wrote it. Mrs. Jones read it.",
     ["J. R. R. Tolkien wrote it.", "Mrs. Jones read it."]),
    # the same words end a sentence when the next one starts a new sentence
    ("I live in the U.S. It is big.", ["I live in the U.S.", "It is big."]),
    ("We met at 3 p.m. Then we left.", ["We met at 3 p.m.", "Then we left."]),
    ("I like apples etc. Then I go.", ["I like apples etc.", "Then I go."]),
    ("Version 2.0.4 is out. Dr. Li said so. 好的。", ["Version 2.0.4 is out.", "Dr. Li said so.",
                                                   "好的。"]),
])
def test_abbreviations_stay_inside_their_sentence(text, pieces):
    assert split_sentences(text) == pieces


def test_streamed_abbreviations_wait_for_the_next_word():
    tokens = ["Meet", " Mr", ".", " Li", " at", " 3", " p", ".m", ".", " today", ".", " Dr",
              ".", " Smith", " 来了", "。"]
    assert stream_pieces(tokens) == [("Meet Mr. Li at 3 p.m. today.", 10), ("Dr. Smith 来了。", 15)]
    tokens = ["I", " live", " in", " the", " U", ".S", ".", " It", " is", " big", "."]
    assert stream_pieces(tokens) == [("I live in the U.S.", 8), ("It is big.", 10)]
    # an ordinary word's "." still ends its sentence at once (no wait for a slow next token)
    assert stream_pieces(["Hello", " there", "."])[0] == ("Hello there.", 2)
