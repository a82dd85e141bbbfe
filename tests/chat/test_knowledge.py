"""Knowledge bases: real folders on disk, the shipped default, BM25 search and FAQ matching."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from orchestrator.chat.knowledge import (
    MAX_FILE_BYTES,
    MAX_PASSAGE_CHARS,
    SHIPPED_DIR,
    KnowledgeBase,
    KnowledgeStore,
    Passage,
    Profile,
    UnknownKnowledgeBase,
)


def make_kb(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def shipped() -> KnowledgeBase:
    return KnowledgeBase.load(SHIPPED_DIR / "default", "default")


@pytest.fixture(scope="module")
def topics(tmp_path_factory) -> KnowledgeBase:
    """Four documents on unrelated topics and an FAQ on a fifth."""
    folder = make_kb(tmp_path_factory.mktemp("kb") / "topics", {
        "cooking.md": "# Cooking\n\n## Pasta\n\nBoil the pasta in salted water for nine to "
        "eleven minutes, stirring now and then.\n\n## Bread\n\nKnead the dough for ten minutes "
        "and let it rise for an hour in a warm place.\n",
        "astronomy.md": "# Planets\n\n## Mars\n\nMars is red because of iron oxide dust.\n\n"
        "## Saturn\n\nSaturn has bright rings made of ice and rock.\n",
        "gardening.txt": "Water tomato plants deeply twice a week, in the morning.\n\n"
        "Prune roses in late winter, before the buds open.\n",
        "茶.md": "# 泡茶\n\n绿茶适合用八十度左右的水冲泡，水太烫会让茶变苦。红茶可以用沸水。\n",
        "faq.csv": "question,answer\n"
        "How do I fix a flat bicycle tyre?,\"Remove the wheel, patch the tube, and pump it up.\"\n"
        "How do I repair a puncture?,\"Remove the wheel, patch the tube, and pump it up.\"\n",
    })
    return KnowledgeBase.load(folder, "topics")


# --- the shipped default knowledge base -------------------------------------------------------

@pytest.mark.parametrize("question, expected", [
    ("how can I start livehuman", "make run"),
    ("which port should I open in my browser", "8010"),
    ("how do I change the avatar's voice", "refaudio"),
    ("how to record my session", "MP4"),
    ("what's the difference between chat and echo", "exactly as you typed"),
    ("does it need a GPU", "ordinary CPU"),
    ("how can I stop it talking", "interrupt set to true"),
    # greetings and politeness around the question do not sink the match
    ("Hi, what is livehuman?", "real-time talking avatar"),
    ("Hello! Could you tell me how to record a session, please?", "MP4"),
])
def test_shipped_faq_matches_english_paraphrases(shipped, question, expected):
    match = shipped.best_faq(question)
    assert match is not None, question
    assert expected in match.entry.answer
    assert match.entry.source == "faq.csv"


@pytest.mark.parametrize("question, expected", [
    ("如何启动服务器", "make run"),
    ("端口是多少", "8010"),
    ("怎么换声音", "cmn"),
    ("怎样录视频", "MP4"),
    ("能不能打断它", "interrupt"),
    ("怎么接入大语言模型", "OPENAI_API_KEY"),  # 语言 is not in the FAQ: a share of about 0.7
    ("没有显卡可以用吗", "不需要"),
    # "livehuman" is in English questions too: the Chinese question gets the Chinese answer
    ("livehuman是什么呢", "实时互动的数字人"),
    ("你好，请问怎么录制视频？", "MP4"),
    ("嗨，livehuman是什么？", "实时互动的数字人"),
])
def test_shipped_faq_matches_chinese_paraphrases(shipped, question, expected):
    match = shipped.best_faq(question)
    assert match is not None, question
    assert expected in match.entry.answer


@pytest.mark.parametrize("question", [
    "What is the capital of France?",
    "How do I cook rice?",
    "What time is it?",
    "How do I start my car?",  # shares "start" with an FAQ question
    "Which port in Spain is biggest?",  # shares "port"
    "今天天气怎么样",
    "北京有什么好玩的地方",
    "电脑怎么启动不了",  # shares 启动
    "?!",
])
def test_shipped_faq_declines_unrelated_questions(shipped, question):
    assert shipped.best_faq(question) is None


def test_shipped_profile_and_documents(shipped):
    assert "livehuman" in shipped.profile.system_prompt
    assert shipped.profile.no_match_answer and shipped.profile.no_match_answer_zh
    assert any(p.source == "about.md: About livehuman > Recording" for p in shipped.passages)
    assert all(len(p.text) <= MAX_PASSAGE_CHARS for p in shipped.passages)


# --- search ---------------------------------------------------------------------------------

@pytest.mark.parametrize("query, source", [
    ("how long should pasta boil", "cooking.md: Cooking > Pasta"),
    ("which planet has rings", "astronomy.md: Planets > Saturn"),
    ("how often do tomato plants need water", "gardening.txt"),
    ("bread dough rising time", "cooking.md: Cooking > Bread"),
    ("when should a rose be pruned", "gardening.txt"),  # "roses" in the text
    ("绿茶用多少度的水泡", "茶.md: 泡茶"),
    ("my tyre has a puncture", "faq.csv: How do I fix a flat bicycle tyre?"),
])
def test_search_ranks_the_right_passage_first(topics, query, source):
    results = topics.search(query)
    assert results[0].source == source
    assert results[0].score > 0
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_search_returns_faq_items_once_with_question_and_answer(topics):
    hits = [p for p in topics.search("flat tyre puncture repair", k=10) if "faq" in p.source]
    assert hits == [Passage(
        "How do I fix a flat bicycle tyre?\nRemove the wheel, patch the tube, and pump it up.",
        "faq.csv: How do I fix a flat bicycle tyre?", hits[0].score,
    )]


def test_search_returns_only_matching_passages(topics):
    assert topics.search("quantum chromodynamics") == []
    assert len(topics.search("minutes", k=5)) == 2  # pasta and bread mention minutes
    assert topics.search("pasta", k=0) == []


def test_faq_rows_with_one_answer_match_any_of_their_questions(topics):
    assert topics.best_faq("repair a puncture").entry.question == "How do I repair a puncture?"
    assert topics.best_faq("flat tyre").entry.question == "How do I fix a flat bicycle tyre?"
    assert topics.best_faq("how long should pasta boil") is None  # documents are not FAQ


# --- documents --------------------------------------------------------------------------------

def test_long_paragraphs_split_at_sentence_ends(tmp_path):
    english = " ".join(f"Sentence number {i} talks about topic {i}." for i in range(60))
    chinese = "".join(f"这是第{i}句话，讲的是第{i}个话题。" for i in range(80))
    fenced = "```\n# not a heading\n```"
    kb = KnowledgeBase.load(make_kb(tmp_path / "kb", {
        "long.md": f"# Long\n\n{english}\n\n{chinese}\n\n{fenced}\n",
    }), "kb")
    texts = [p.text for p in kb.passages]
    assert len(texts) >= 4
    assert all(len(t) <= MAX_PASSAGE_CHARS for t in texts)
    assert all(t.endswith((".", "。", "```")) for t in texts)  # cut between sentences
    assert "".join(texts).replace(" ", "").replace("\n", "") == (
        english + chinese + fenced).replace(" ", "").replace("\n", "")
    assert {p.source for p in kb.passages} == {"long.md: Long"}


def test_short_paragraphs_are_merged_and_other_files_ignored(tmp_path):
    folder = make_kb(tmp_path / "kb", {
        "notes.txt": "First short paragraph.\n\nSecond short paragraph.\n",
        "image.png": "not text",
        "data.json": "{}",
    })
    (folder / "sub").mkdir()
    (folder / "sub" / "hidden.md").write_text("Hidden.")
    kb = KnowledgeBase.load(folder, "kb")
    assert kb.passages == [
        Passage("First short paragraph.\n\nSecond short paragraph.", "notes.txt")
    ]


# --- profile.json and faq.csv -------------------------------------------------------------------

def test_profile_parses_every_key(tmp_path):
    profile = {
        "system_prompt": "Be brief.", "model": "qwen2.5", "base_url": "http://llm:8000/v1",
        "api_key_env": "MY_KEY", "temperature": 1, "max_tokens": 200,
        "no_match_answer": "No idea.", "no_match_answer_zh": "不知道。",
    }
    kb = KnowledgeBase.load(make_kb(tmp_path / "kb", {"profile.json": json.dumps(profile)}), "kb")
    assert kb.profile == Profile(**{**profile, "temperature": 1.0})
    assert isinstance(kb.profile.temperature, float)


@pytest.mark.parametrize("profile, named", [
    ({"api_key": "sk-123"}, "'api_key'"),
    ({"max_tokens": "200"}, "'max_tokens'"),
    ({"max_tokens": 1.5}, "'max_tokens'"),
    ({"temperature": True}, "'temperature'"),
    ({"system_prompt": ["a"]}, "'system_prompt'"),
    (["system_prompt"], "JSON object"),
])
def test_profile_rejects_unknown_keys_and_wrong_types(tmp_path, profile, named):
    folder = make_kb(tmp_path / "kb", {"profile.json": json.dumps(profile)})
    with pytest.raises(ValueError) as error:
        KnowledgeBase.load(folder, "kb")
    assert named in str(error.value) and "profile.json" in str(error.value)


def test_faq_csv_needs_its_header_and_both_columns(tmp_path):
    with pytest.raises(ValueError, match="faq.csv.*question,answer"):
        KnowledgeBase.load(make_kb(tmp_path / "a", {"faq.csv": "q,a\nHi?,Hello.\n"}), "a")
    with pytest.raises(ValueError, match="line 3: empty question or answer"):
        KnowledgeBase.load(make_kb(tmp_path / "b", {"faq.csv": "question,answer\nA?,B.\nC?,\n"}), "b")


def test_faq_csv_from_a_spreadsheet(tmp_path):
    """A BOM, CRLF, extra columns, quoted commas and a second FAQ file all load."""
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "faq.csv").write_bytes(
        '\ufeffQuestion,Answer,index\r\nWho makes the coffee?,"Ana, on Mondays.",1\r\n'.encode()
    )
    make_kb(folder, {"extra.faq.csv": "question,answer\nWhere is the printer?,Room 4.\n"})
    kb = KnowledgeBase.load(folder, "kb")
    assert [(e.question, e.answer, e.source) for e in kb.faq] == [
        ("Where is the printer?", "Room 4.", "extra.faq.csv"),
        ("Who makes the coffee?", "Ana, on Mondays.", "faq.csv"),
    ]
    assert kb.best_faq("who makes coffee").entry.answer == "Ana, on Mondays."


def test_oversize_and_undecodable_files_are_rejected(tmp_path):
    folder = make_kb(tmp_path / "big", {})
    with open(folder / "manual.md", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ValueError, match="manual.md.*5 MB"):
        KnowledgeBase.load(folder, "big")
    os.rename(folder / "manual.md", folder / "manual.bin")  # ignored files may be any size
    assert KnowledgeBase.load(folder, "big").passages == []
    (folder / "notes.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match="notes.txt.*UTF-8"):
        KnowledgeBase.load(folder, "big")


def test_empty_knowledge_base(tmp_path):
    kb = KnowledgeBase.load(make_kb(tmp_path / "empty", {"faq.csv": "question,answer\n"}), "e")
    assert (kb.passages, kb.faq, kb.profile) == ([], [], Profile())
    assert kb.search("anything") == []
    assert kb.best_faq("anything") is None


# --- the store --------------------------------------------------------------------------------

def test_store_serves_the_shipped_default_for_empty_llmid(tmp_path):
    store = KnowledgeStore(tmp_path / "knowledge")
    kb = store.get("")
    assert kb.llmid == "default"
    assert store.get("default") is kb
    assert "make run" in kb.best_faq("how do I run livehuman").entry.answer


def test_store_default_in_the_data_directory_overrides_the_shipped_one(tmp_path):
    make_kb(tmp_path / "knowledge" / "default", {"faq.csv": "question,answer\nWho are you?,Bob.\n"})
    kb = KnowledgeStore(tmp_path / "knowledge").get("")
    assert [e.answer for e in kb.faq] == ["Bob."]
    assert kb.best_faq("how do I run livehuman") is None


def test_store_loads_named_knowledge_bases_once(tmp_path):
    make_kb(tmp_path / "knowledge" / "shop_1", {"faq.csv": "question,answer\nOpening hours?,9 to 5.\n"})
    store = KnowledgeStore(tmp_path / "knowledge")
    results: list[KnowledgeBase] = []
    threads = [threading.Thread(target=lambda: results.append(store.get("shop_1"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(kb) for kb in results}) == 1
    assert results[0].llmid == "shop_1" and results[0].faq[0].answer == "9 to 5."


def test_store_unknown_llmid(tmp_path):
    with pytest.raises(UnknownKnowledgeBase) as error:
        KnowledgeStore(tmp_path).get("nosuch")
    assert isinstance(error.value, KeyError) and error.value.args == ("nosuch",)


@pytest.mark.parametrize("llmid", ["../x", "a/b", "/etc", "a\x00b", "x" * 65, "a b", "abc\n", "."])
def test_store_rejects_bad_llmids(tmp_path, llmid):
    with pytest.raises(ValueError, match="llmid"):
        KnowledgeStore(tmp_path).get(llmid)


def test_store_rejects_symlinks_out_of_the_directory(tmp_path):
    outside = make_kb(tmp_path / "outside", {"faq.csv": "question,answer\nSecret?,Yes.\n"})
    (tmp_path / "knowledge").mkdir()
    (tmp_path / "knowledge" / "escape").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the knowledge directory"):
        KnowledgeStore(tmp_path / "knowledge").get("escape")
