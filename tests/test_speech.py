from orchestrator.speech import MAX_CLAUSE_CHARS, split_sentences


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
