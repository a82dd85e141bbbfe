"""Spoken questions find their FAQ answers: every English question of the shipped FAQ, said by
our Piper voice and transcribed by our Whisper (both on Triton), retrieves its own answer, and
so do the spellings speech recognition is known to produce (compounds split or joined, near
misses, numbers in words)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from piper_speech import voice_at_speed

from orchestrator.asr import WhisperOnTriton
from orchestrator.chat.knowledge import SHIPPED_DIR, KnowledgeBase
from orchestrator.language import has_cjk
from orchestrator.tts import PiperEngine, synthesize_all

pytestmark = pytest.mark.timeout(600)

RATE_16K = 16000
SAID_AGAIN_SPEED = 0.85  # a question Whisper got wrong is said again at this pace
# What Whisper tiny.en writes for a shipped question at every pace (0.8-1.2) and that retrieval
# does not resolve yet: "try" is a word of the knowledge base, and a join of words it knows is
# never read as a near miss ("run make" is two words, not one). Known limitation, checked below
# (strict xfail), so that a fix is noticed.
KNOWN_MISHEARD = {"Can I use my own Triton server?": "Can I use my own try and server?"}
FAQ = SHIPPED_DIR / "default" / "faq.csv"
# Whisper's transcripts of the questions as measured once (tests/chat/data/, written by
# `python tests/chat/test_spoken_faq.py`): the same retrieval without Triton.
RECORDED = Path(__file__).parent / "data" / "whisper_faq_transcripts.json"


def english_faq() -> dict[str, str]:
    with FAQ.open(encoding="utf-8") as f:
        return {row["question"]: row["answer"] for row in csv.DictReader(f)
                if not has_cjk(row["question"])}


@pytest.fixture(scope="module")
def shipped() -> KnowledgeBase:
    return KnowledgeBase.load(SHIPPED_DIR / "default", "default")


def misses(kb: KnowledgeBase, heard: dict[str, str]) -> list[str]:
    """What went wrong: '<question>' heard as '<transcript>' -> what it retrieved."""
    answers = english_faq()
    wrong = []
    for question, transcript in heard.items():
        match = kb.best_faq(transcript)
        if match is None or match.entry.answer != answers[question]:
            got = match.entry.question if match else "no answer"
            wrong.append(f"{question!r} heard as {transcript!r} -> {got!r}")
    return wrong


async def transcribe_questions(triton_url: str, questions: list[str],
                               speed: float = 1.0) -> dict[str, str]:
    """Each question said by Piper (voice joe, the same way every run, at `speed`) and
    transcribed by Whisper tiny.en, on Triton."""
    import scipy.signal

    piper = await PiperEngine.open(triton_url)
    asr = WhisperOnTriton(triton_url)
    try:
        heard = {}
        for question in questions:
            audio = await synthesize_all(piper, question, voice_at_speed(speed))
            g = np.gcd(piper.sample_rate_hz, RATE_16K)
            audio = scipy.signal.resample_poly(audio, RATE_16K // g, piper.sample_rate_hz // g)
            heard[question] = await asr.transcribe(audio.astype(np.float32))
        return heard
    finally:
        await asr.close()
        await piper.close()


@pytest.mark.parametrize("every", [
    pytest.param(3, id="every-third"),
    pytest.param(1, id="every-question", marks=pytest.mark.slow),
])
async def test_shipped_questions_spoken_retrieve_their_own_answers(triton, shipped, every):
    """Each question is said the same way every run (piper_speech.py); one that Whisper garbles
    beyond any spelling ("try and server" for Triton server) is said once more, more slowly, as
    a user would say it again. CI speaks every third question (the recorded transcripts of all
    of them are checked below); the slow run speaks all."""
    heard = await transcribe_questions(triton.url, list(english_faq())[::every])
    heard = {q: t for q, t in heard.items() if KNOWN_MISHEARD.get(q) != t}
    first = misses(shipped, heard)
    again = await transcribe_questions(triton.url, [q for q in heard if any(
        m.startswith(repr(q)) for m in first)], speed=SAID_AGAIN_SPEED)
    assert not misses(shipped, again), (first, misses(shipped, again))
    assert len(first) <= len(heard) // 10, first  # most are right the first time


def test_recorded_whisper_transcripts_retrieve_their_answers(shipped):
    heard = json.loads(RECORDED.read_text())
    assert set(heard) == set(english_faq())  # recorded for the FAQ as shipped
    assert not misses(shipped, heard)


@pytest.mark.parametrize("question, transcript", [
    ("What is livehuman?", "What is live human?"),
    ("What is livehuman?", "What is life human?"),
    ("What is livehuman?", "What is LiveHuman?"),
    ("How do I run livehuman?", "How do I run Life Human?"),
    ("Does livehuman need a GPU?", "Does live-human need a GPU?"),
    ("What is Triton used for?", "What is Trighton used for?"),
    ("What is Triton used for?", "What is tried and used for?"),  # sounds alike
    ("Can I use my own Triton server?", "Can I use my own tri-in server?"),
    ("How do I check that the server is healthy?", "How do I check that the server is healthy"),
])
def test_asr_spellings_retrieve_the_answer(shipped, question, transcript):
    assert not misses(shipped, {question: transcript})


@pytest.mark.xfail(strict=True, reason="a join of words the knowledge base knows is not a near "
                                       "miss (KNOWN_MISHEARD)")
@pytest.mark.parametrize("question, transcript", list(KNOWN_MISHEARD.items()))
def test_known_mishearings_are_not_resolved_yet(shipped, question, transcript):
    assert not misses(shipped, {question: transcript})


def test_numbers_in_words_find_numbers_in_digits(shipped):
    for query in ("which port is eight thousand ten", "port eighty ten", "port 8,010"):
        assert "port 8010" in shipped.search(query, 1)[0].text.lower().replace(" ", " "), query
    assert "25 frames" in shipped.search("twenty five frames a second", 1)[0].text


if __name__ == "__main__":  # record Whisper's transcripts of the shipped FAQ (RECORDED)
    import asyncio

    from orchestrator.triton.server import EmbeddedTriton

    async def record() -> None:
        repository = Path(__file__).resolve().parents[2] / "model_repository"
        server = EmbeddedTriton(repository, ["tts_piper", "piper_joe", "asr_whisper"])
        await server.start()
        try:
            heard = await transcribe_questions(server.url, list(english_faq()))
        finally:
            await server.stop()
        RECORDED.parent.mkdir(exist_ok=True)
        RECORDED.write_text(json.dumps(heard, indent=1, ensure_ascii=False) + "\n")
        print(json.dumps(heard, indent=1))

    asyncio.run(record())
