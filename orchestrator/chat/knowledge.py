"""Knowledge bases for `chat`: one folder per llmid, searched with BM25 (bm25s).

Questions may be spoken: their words are read as the knowledge base spells them first
(spellings.py: compounds split or joined, near misses, numbers as digits).

Folder format, `<data>/knowledge/<llmid>/`; the llmid "" means `default`, which falls back to
the one shipped in `shipped_knowledge/default/`:
- `*.md`, `*.txt`: UTF-8 documents. Markdown is split at `#` headings (the heading path goes into
  the passage source, `about.md: Running > Ports`), then at blank lines; paragraphs are merged,
  and long ones cut at sentence ends (`. ! ?` and `。！？`), into passages of at most 600 characters.
- `faq.csv`, `*.faq.csv`: UTF-8 CSV with the header `question,answer` (the FastGPT/Dify import
  format; other columns are ignored). Other phrasings of a question are more rows with the same
  answer.
- `profile.json` (optional): the LLM profile, keys as in `Profile`. API keys never live in it:
  `api_key_env` names the environment variable that holds the key.
Anything else is ignored. A file over 5 MB is an error.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import threading
import typing
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path

import bm25s
import jieba
import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS

from ..language import CJK_CHAR_CLASS, has_cjk, is_cjk
from .spellings import Spellings, Term, numbers_as_digits

SHIPPED_DIR = Path(__file__).parent / "shipped_knowledge"
DEFAULT_LLMID = "default"
LLMID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_PASSAGE_CHARS = 600
# best_faq answers only when the FAQ questions hold this share of the query's IDF weight.
FAQ_MIN_COVERAGE = 0.6

jieba.setLogLevel(logging.WARNING)  # its messages are not for stderr
# bm25s sets its own logger to DEBUG at import, which overrides the server's --log-level.
logging.getLogger("bm25s").setLevel(logging.WARNING)

_RUNS = re.compile(rf"([{CJK_CHAR_CLASS}]+)|([^\W_{CJK_CHAR_CLASS}]+)")
# Greetings and politeness carry no topic; unknown to the knowledge base they would weigh the
# most and sink an otherwise good FAQ match ("Hi, what is livehuman?").
_STOPWORDS_EN = frozenset(STOPWORDS_EN_PLUS) | {
    "please", "tell", "could", "would", "hi", "hello", "hey", "thanks", "thank", "ok", "okay",
    "know", "want", "like", "wondering", "excuse", "sorry", "um", "uh", "well"}
_STOPWORDS_ZH = frozenset(
    "的 地 得 了 着 过 吗 呢 吧 啊 呀 嘛 是 我 你 您 他 她 它 我们 你们 他们 这 那 这个 那个 "
    "什么 怎么 怎样 怎么样 如何 哪 哪个 哪些 为什么 在 有 和 与 或 就 都 也 还 请 请问 可以 "
    "能 能不能 不能 可不可以 有没有 会 要 想 一下 一个 多少 几 几个 这是 那是 哪里 "
    "你好 您好 嗨 哈喽 谢谢 麻烦 告诉 知道 想问 问一下".split()
)
_HEADING = re.compile(r"(#{1,6})\s+(.*?)(?:\s+#+)?\s*")  # ATX, optional closing #s
_SENTENCE = re.compile(r".+?(?:[。！？]+|[.!?]+(?:\s+|$)|$)", re.S)


class UnknownKnowledgeBase(KeyError):
    pass


@dataclass(frozen=True)
class Passage:
    text: str
    source: str  # file name, then the heading path or the FAQ question
    score: float = 0.0


@dataclass(frozen=True)
class FaqEntry:
    question: str
    answer: str
    source: str


@dataclass(frozen=True)
class FaqMatch:
    entry: FaqEntry
    score: float  # share of the query's IDF weight found in the questions, 0..1


@dataclass(frozen=True)
class Profile:
    system_prompt: str | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    no_match_answer: str | None = None
    no_match_answer_zh: str | None = None


def load_word_segmenter() -> None:
    """jieba's dictionary, loaded now (about 0.5 s, blocking: run it in an executor) rather than
    on the first Chinese text it cuts: a knowledge base with no Chinese, or the first Chinese
    question of a user, would otherwise pay for it."""
    jieba.initialize()


def word_segmenter_loaded() -> bool:
    return bool(jieba.dt.initialized)


def words(text: str) -> list[str]:
    """Lowercase words without stopwords: jieba's for CJK runs, `\\w` runs elsewhere (numbers
    in digits)."""
    return [term.word for term in _terms(text)]


def _terms(text: str, spellings: Spellings | None = None) -> list[Term]:
    """`words(text)` as Terms; with `spellings` (a question's), the latin words are read as the
    knowledge base spells them."""
    found: list[Term] = []
    latin: list[str] = []  # a run of latin words, read together (joins span words)

    def end_of_latin() -> None:
        if spellings is not None:
            found.extend(spellings.resolve(latin))
        else:
            found.extend(Term(_singular(w), w) for w in latin if w not in _STOPWORDS_EN)
        latin.clear()

    for cjk, word in _RUNS.findall(numbers_as_digits(text.lower())):
        if cjk:
            end_of_latin()
            found += [Term(w, w) for w in jieba.lcut(cjk) if w not in _STOPWORDS_ZH]
        else:
            latin.append(word)
    end_of_latin()
    return found


def tokenize(text: str) -> list[str]:
    """BM25 terms, for documents and queries alike: the words, and for long CJK words also the
    shorter words inside them (jieba's search mode), so that 服务 finds 服务器."""
    return _search_terms(words(text))


def _search_terms(found: list[str]) -> list[str]:
    terms: list[str] = []
    for word in found:
        terms += jieba.lcut_for_search(word) if len(word) > 2 and is_cjk(word[0]) else [word]
    return terms


def _singular(word: str) -> str:
    """Crude plural folding so "voices" finds "voice"; applied alike to documents and queries."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


class _Bm25:
    """bm25s over tokenized documents, also when there are none or the query knows no term."""

    def __init__(self, docs: list[list[str]]) -> None:
        self._count = len(docs)
        self._bm25: bm25s.BM25 | None = None
        if any(docs):  # bm25s cannot index a corpus without a single term
            self._bm25 = bm25s.BM25()
            self._bm25.index(docs, show_progress=False)

    def scores(self, terms: list[str]) -> np.ndarray:
        if self._bm25 is None or not terms:
            return np.zeros(self._count, dtype=np.float32)
        return self._bm25.get_scores(terms)


class KnowledgeBase:
    """Passages and FAQ of one llmid, with their indexes; read-only once built."""

    def __init__(
        self, llmid: str, profile: Profile, passages: list[Passage], faq: list[FaqEntry]
    ) -> None:
        self.llmid, self.profile, self.passages, self.faq = llmid, profile, passages, faq
        # Rows sharing an answer are one FAQ item: searched once, matched on all its questions.
        items: dict[tuple[str, str], list[FaqEntry]] = {}
        for entry in faq:
            items.setdefault((entry.source, entry.answer), []).append(entry)
        self._items = list(items.values())
        self._item_words = [{w for e in rows for w in words(e.question)} for rows in self._items]
        self._row_item = [i for i, rows in enumerate(self._items) for _ in rows]
        self._rows = [e for rows in self._items for e in rows]
        self._faq_index = _Bm25([tokenize(e.question) for e in self._rows])

        self._hits = list(passages) + [
            Passage(f"{first.question}\n{first.answer}", f"{first.source}: {first.question}")
            for first in (rows[0] for rows in self._items)
        ]
        docs = [tokenize(f"{_title(p.source)}\n{p.text}") for p in passages]
        docs += [
            tokenize("\n".join([*(e.question for e in rows), rows[0].answer]))
            for rows in self._items
        ]
        self._index = _Bm25(docs)
        self._df = Counter(t for doc in docs for t in set(doc))
        self._spellings = Spellings([t for t, _ in self._df.most_common()], _STOPWORDS_EN,
                                    _singular)

    @classmethod
    def load(cls, folder: Path, llmid: str) -> KnowledgeBase:
        profile, passages, faq = Profile(), [], []
        for path in sorted(Path(folder).iterdir()):
            name = path.name.lower()
            kind = (
                "profile" if name == "profile.json"
                else "faq" if name == "faq.csv" or name.endswith(".faq.csv")
                else "document" if name.endswith((".md", ".txt"))
                else None
            )
            if kind is None or not path.is_file():
                continue
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"{_shown(path)}: larger than {MAX_FILE_BYTES // 2**20} MB")
            text = _read_text(path)
            if kind == "profile":
                profile = _parse_profile(text, path)
            elif kind == "faq":
                faq += _parse_faq(text, path)
            else:
                passages += _split_document(text, path.name, markdown=name.endswith(".md"))
        return cls(llmid, profile, passages, faq)

    def question_terms(self, query: str) -> list[Term]:
        """The query's words as this knowledge base spells them (spellings.py), each once."""
        first: dict[str, Term] = {}
        for term in _terms(query, self._spellings):
            first.setdefault(term.word, term)
        return list(first.values())

    def search(self, query: str, k: int = 3) -> list[Passage]:
        """Best passages and FAQ items for the query, best first; only those sharing a term."""
        terms = _search_terms([t.word for t in self.question_terms(query)])
        scores = self._index.scores(_unique(terms))
        best = np.argsort(-scores, kind="stable")[: max(k, 0)]
        return [replace(self._hits[i], score=float(scores[i])) for i in best if scores[i] > 0]

    def best_faq(self, query: str) -> FaqMatch | None:
        """The FAQ entry asking what the query asks, or None.

        BM25 scores do not compare across queries, so the rule is a share: the IDF weight of
        the query's words found in an item's questions (all rows with its answer), over the IDF
        weight of all its words. Words the knowledge base has never seen weigh the most, so an
        off-topic question sharing one word with an FAQ question stays below FAQ_MIN_COVERAGE.
        The best item has the largest share, then is in the query's script (a Chinese question
        gets the Chinese answer), then has the highest BM25 score. A word read as another by its
        spelling (a near miss, a split or joined compound: spellings.py) weighs what an unknown
        word weighs: it counts for an item whose questions have the word it was taken for, and
        against every other.
        """
        terms = self.question_terms(query)
        if not terms or not self._rows:
            return None
        query_words = [t.word for t in terms]
        weights = [self._idf(t.said if t.corrected else t.word) for t in terms]
        coverage = [
            sum(wt for w, wt in zip(query_words, weights) if _found(w, vocab)) / sum(weights)
            for vocab in self._item_words
        ]
        scores = self._faq_index.scores(_unique(_search_terms(query_words)))
        chinese = has_cjk(query)
        row = max(
            range(len(self._rows)),
            key=lambda r: (
                coverage[self._row_item[r]], has_cjk(self._rows[r].question) == chinese, scores[r]
            ),
        )
        share = coverage[self._row_item[row]]
        return FaqMatch(self._rows[row], share) if share >= FAQ_MIN_COVERAGE else None

    def _idf(self, term: str) -> float:
        n, df = len(self._hits), self._df.get(term, 0)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))


class KnowledgeStore:
    """Loads knowledge bases by llmid from one directory, once; ids never leave that directory."""

    def __init__(self, directory: Path, shipped: Path = SHIPPED_DIR) -> None:
        self.directory = Path(directory).resolve()
        self.shipped = Path(shipped).resolve()
        self._cache: dict[str, KnowledgeBase] = {}
        self._lock = threading.Lock()  # loads run in executor threads

    def folder_of(self, llmid: str) -> Path:
        """`""` and `default` fall back to the shipped knowledge base when the data has none."""
        name = llmid or DEFAULT_LLMID
        if not LLMID.fullmatch(name):
            raise ValueError(f"llmid {llmid!r} may only use letters, digits, '_' and '-' (1-64)")
        folder = (self.directory / name).resolve()
        if folder.parent != self.directory:  # a symlink pointing elsewhere
            raise ValueError(f"llmid {llmid!r} resolves outside the knowledge directory")
        if folder.is_dir():
            return folder
        if name == DEFAULT_LLMID:
            return self.shipped / DEFAULT_LLMID
        raise UnknownKnowledgeBase(llmid)

    def get(self, llmid: str) -> KnowledgeBase:
        """The base, loaded on first use (blocking: run it in an executor); UnknownKnowledgeBase,
        or ValueError for an id or a file that cannot be read."""
        name = llmid or DEFAULT_LLMID
        with self._lock:
            if name not in self._cache:
                self._cache[name] = KnowledgeBase.load(self.folder_of(llmid), name)
            return self._cache[name]

    def loaded(self, llmid: str) -> bool:
        """Whether the base is in memory already (a `get` would not read its folder)."""
        return (llmid or DEFAULT_LLMID) in self._cache


def _found(word: str, vocabulary: set[str]) -> bool:
    """Exact, or for CJK words containment (换 in 更换, 服务 in 服务器): jieba cuts one idea
    differently in different sentences. A single character only counts inside a longer word."""
    if word in vocabulary:
        return True
    return is_cjk(word[0]) and any(
        is_cjk(v[0]) and (word in v or (len(v) > 1 and v in word)) for v in vocabulary
    )


def _unique(terms: list[str]) -> list[str]:
    """Query terms once each: jieba's search mode repeats overlapping words."""
    return list(dict.fromkeys(terms))


def _title(source: str) -> str:
    return source.partition(": ")[2]


def _shown(path: Path) -> str:
    """A knowledge file as errors name it: base and file, never the server's directories."""
    return f"{path.parent.name}/{path.name}"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports start with a BOM
    except UnicodeDecodeError as e:
        raise ValueError(f"{_shown(path)}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _parse_profile(text: str, path: Path) -> Profile:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{_shown(path)}: not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{_shown(path)}: must be a JSON object")
    hints = typing.get_type_hints(Profile)
    allowed = [f.name for f in fields(Profile)]
    for key, value in raw.items():
        if key not in allowed:
            raise ValueError(f"{_shown(path)}: unknown key {key!r} (allowed: {', '.join(allowed)})")
        kind = typing.get_args(hints[key])[0]  # `X | None` -> X
        accepted = (int, float) if kind is float else kind
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ValueError(f"{_shown(path)}: {key!r} must be a {kind.__name__}, not {value!r}")
    return Profile(**{k: float(v) if k == "temperature" else v for k, v in raw.items()})


def _parse_faq(text: str, path: Path) -> list[FaqEntry]:
    reader = csv.DictReader(io.StringIO(text))
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
    if "question" not in columns or "answer" not in columns:
        raise ValueError(f"{_shown(path)}: the header must name the columns question,answer")
    entries = []
    for row in reader:
        question = (row[columns["question"]] or "").strip()
        answer = (row[columns["answer"]] or "").strip()
        if not question or not answer:
            raise ValueError(f"{_shown(path)}, line {reader.line_num}: empty question or answer")
        entries.append(FaqEntry(question, answer, path.name))
    return entries


def _split_document(text: str, name: str, markdown: bool) -> list[Passage]:
    passages = []
    for heading_path, body in _sections(text, markdown):
        source = f"{name}: {' > '.join(heading_path)}" if heading_path else name
        passages += [Passage(chunk, source) for chunk in _chunks(body)]
    return passages


def _sections(text: str, markdown: bool) -> list[tuple[list[str], str]]:
    """(heading path, body) pairs; `#` lines inside code fences are not headings."""
    sections: list[tuple[list[str], str]] = []
    path: list[str] = []
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        fenced ^= line.lstrip().startswith("```")
        heading = _HEADING.fullmatch(line) if markdown and not fenced else None
        if heading:
            sections.append((path, "\n".join(lines)))
            path, lines = [*path[: len(heading[1]) - 1], heading[2]], []
        else:
            lines.append(line)
    sections.append((path, "\n".join(lines)))
    return sections


def _chunks(body: str) -> list[str]:
    """Paragraphs merged up to MAX_PASSAGE_CHARS; a longer one is cut at sentence ends."""
    pieces = []
    for paragraph in re.split(r"\n\s*\n", body.strip()):
        paragraph = paragraph.strip()
        if len(paragraph) <= MAX_PASSAGE_CHARS:
            pieces.append(paragraph)
        else:
            sentences = [
                s[i : i + MAX_PASSAGE_CHARS]  # a sentence longer than a passage: cut anywhere
                for s in _SENTENCE.findall(paragraph)
                for i in range(0, len(s), MAX_PASSAGE_CHARS)
            ]
            pieces += [p.strip() for p in _pack(sentences, "")]
    return _pack([p for p in pieces if p], "\n\n")


def _pack(pieces: list[str], separator: str) -> list[str]:
    """Greedily join consecutive pieces while the result stays within MAX_PASSAGE_CHARS."""
    packed: list[str] = []
    for piece in pieces:
        if packed and len(packed[-1]) + len(separator) + len(piece) <= MAX_PASSAGE_CHARS:
            packed[-1] += separator + piece
        else:
            packed.append(piece)
    return packed
