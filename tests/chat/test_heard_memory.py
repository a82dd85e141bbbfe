"""The conversation remembers what the user heard: an answer cut off is remembered up to the
interruption point, one cut before anything was heard is forgotten, and a question the user cut
off by speaking on is joined with its continuation. Real sessions, Piper speech on a real aiortc
microphone, the shipped FAQ, and a fake OpenAI-compatible LLM on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import time

import numpy as np
import pytest
from fake_openai import fake_openai_fixture  # noqa: F401  (fixture)
from server_fixtures import running_server, server_settings

from orchestrator.chat.agent import ChatAgent, join_question
from orchestrator.chat.knowledge import SHIPPED_DIR, KnowledgeBase
from orchestrator.client import AvatarClient, Microphone
from orchestrator.session.heard import HeardText, heard_part
from orchestrator.speech.items import CUT_BY_REQUEST, CUT_BY_USER
from orchestrator.tts import PiperEngine, Voice, synthesize_all

pytestmark = pytest.mark.timeout(120)

SPEECH_RMS = 0.01
FIRST = "This first sentence of the answer is a long one, and it takes the avatar a good while."
SECOND = "The second sentence follows it and would take a while too."
# A question cut in two by a pause the VAD takes for the end of the turn; the rest alone gets no
# FAQ answer, and lasts long enough to barge in on the answer to the first half.
FRAGMENT, CONTINUATION = "How do I record", "a session of the avatar, please?"
RECORD_ANSWER = "Call the record endpoint"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


# --- what was heard, by the player's count ------------------------------------------------------

def test_heard_part_keeps_whole_words_said_within_the_share_played():
    sentence = "Eight by default, and the option changes that."
    assert heard_part(sentence, 0.0) == ""
    assert heard_part(sentence, 0.02) == ""  # one frame of a long sentence: not a word
    assert heard_part(sentence, 0.4) == "Eight by default,"
    assert heard_part(sentence, 1.0) == sentence
    assert heard_part("默认是八个会话。", 0.5) == "默认是八"
    heard = HeardText()
    heard.sentence("One two three four.", frames=10)
    for _ in range(10):
        heard.frame()
    heard.sentence("Five six seven eight.", frames=20)
    for _ in range(10):
        heard.frame()
    assert heard.heard == "One two three four. Five six"
    assert heard.whole == "One two three four. Five six seven eight."


def test_agent_remembers_what_was_heard_and_joins_a_cut_fragment():
    agent = ChatAgent(KnowledgeBase.load(SHIPPED_DIR / "default", "default"), llm=None)
    first = agent.begin("How many sessions can run at once?")
    first.heard("Eight by default,", CUT_BY_REQUEST)
    assert [(t.answer, t.interrupted) for t in agent.memory] == [("Eight by default,", True)]
    unheard = agent.begin("What is livehuman?")
    unheard.heard("", CUT_BY_REQUEST)  # cut by a request before anything was heard: forgotten
    assert len(agent.memory) == 1 and agent.begin("Hello").question == "Hello"
    fragment = agent.begin(f"{FRAGMENT}.")  # ASR ends a fragment with a full stop
    fragment.heard("", CUT_BY_USER)  # cut by the user speaking on
    assert agent.begin("a session?").question == f"{FRAGMENT} a session?"
    assert join_question(["怎么录制"], "视频？") == "怎么录制视频？"


# --- real sessions --------------------------------------------------------------------------

@pytest.fixture(scope="module")
async def heard_server(triton, tmp_path_factory):
    knowledge_dir = tmp_path_factory.mktemp("knowledge")
    async with running_server(server_settings(triton, knowledge_dir=knowledge_dir)) as (url, services):
        yield url, services, knowledge_dir


def llm_knowledge_base(folder, llmid: str, llm_url: str) -> str:
    (folder / llmid).mkdir(exist_ok=True)
    (folder / llmid / "profile.json").write_text(json.dumps({"base_url": llm_url,
                                                            "model": "m"}))
    return llmid


def history(services, client) -> list[dict]:
    return services.registry.get(client.sessionid).events.history


async def wait_event(services, client, name: str, count: int = 1, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in history(services, client) if e["event"] == name]
        if len(found) >= count:
            return found[count - 1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no '{name}' #{count}; got {[e['event'] for e in history(services, client)]}")


async def test_an_answer_cut_mid_sentence_is_remembered_as_far_as_it_was_heard(heard_server,
                                                                               fake_openai):
    base_url, services, folder = heard_server
    fake, llm_url = fake_openai
    fake.reply = f"{FIRST} {SECOND}"
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect(llmid=llm_knowledge_base(folder, "cut", llm_url))
        await client.wait_for_video(5)
        sent = time.monotonic()
        await client.post("/human", type="chat", text="Tell me something.")
        await client.wait_for_speech(sent, SPEECH_RMS)
        await asyncio.sleep(1.0)  # a few words of the first sentence
        await client.post("/interrupt_talk")
        interrupted = await wait_event(services, client, "interrupted")
        heard = interrupted["heard"]
        assert heard and FIRST.startswith(heard) and len(heard) < len(FIRST), interrupted
        fake.reply = "Sure."
        await client.post("/human", type="chat", text="What did you say?")
        await wait_event(services, client, "end")
        assert fake.requests[1]["messages"][1:] == [
            {"role": "user", "content": "Tell me something."},
            {"role": "assistant", "content": heard},
            {"role": "user", "content": "What did you say?"}]
    finally:
        await client.close()


async def test_an_answer_cut_before_it_was_heard_is_forgotten(heard_server, fake_openai):
    base_url, services, folder = heard_server
    fake, llm_url = fake_openai
    fake.reply = f"{FIRST} {SECOND}"
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect(llmid=llm_knowledge_base(folder, "unheard", llm_url))
        await client.wait_for_video(5)
        await client.post("/human", type="chat", text="Tell me something.")
        await wait_event(services, client, "start")  # its first frame is playing: ≤ 40 ms heard
        await client.post("/interrupt_talk")
        assert (await wait_event(services, client, "interrupted"))["heard"] == ""
        fake.reply = "Sure."
        await client.post("/human", type="chat", text="Hello?")
        await wait_event(services, client, "end")
        assert [m["role"] for m in fake.requests[1]["messages"]] == ["system", "user"]
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def cut_question(triton) -> tuple[np.ndarray, np.ndarray, int]:
    """Piper says the fragment and the rest: (fragment, rest, rate)."""
    piper = await PiperEngine.open(triton.url)
    try:
        voice = Voice.named("joe")
        fragment = await synthesize_all(piper, FRAGMENT, voice)
        rest = await synthesize_all(piper, CONTINUATION, voice)
        return fragment, rest, piper.sample_rate_hz
    finally:
        await piper.close()


@pytest.mark.parametrize("mode", [pytest.param("faq", marks=pytest.mark.slow), "llm"])  # CI: llm
async def test_a_question_cut_by_a_pause_is_answered_as_one(heard_server, fake_openai, cut_question,
                                                            mode):
    base_url, services, folder = heard_server
    fake, llm_url = fake_openai
    fake.reply = lambda messages: (f"{FIRST} {SECOND}" if words(messages[-1]["content"])
                                   == words(FRAGMENT) else "Recorded.")
    mic = Microphone()
    client = AvatarClient(base_url, keep_video=False, microphone=mic)
    llmid = llm_knowledge_base(folder, "pause", llm_url) if mode == "llm" else ""
    try:
        await client.connect(**({"llmid": llmid} if llmid else {}))
        await client.wait_for_video(5)
        await asyncio.sleep(0.5)
        fragment, rest, rate = cut_question
        mic.play(fragment, rate)
        first = await wait_event(services, client, "question")  # the pause ended the turn...
        mic.play(rest, rate)  # ...and the user goes on as its answer begins
        assert words(first["text"]) == words(FRAGMENT), first
        barge = await wait_event(services, client, "barge_in")
        assert barge, "the continuation cut the fragment's answer off"
        interrupted = await wait_event(services, client, "interrupted")
        assert interrupted["utterance_id"] == first["utterance_id"] and interrupted["heard"] == ""
        second = await wait_event(services, client, "question", count=2)
        joined = words(second["text"])  # the fragment as transcribed, then the rest
        assert joined[:len(words(first["text"]))] == words(first["text"]), second
        assert "avatar" in joined[len(words(first["text"])):], second
        end = await wait_event(services, client, "end")
        assert end["utterance_id"] == second["utterance_id"]
        if mode == "faq":
            assert end["answer"].startswith(RECORD_ANSWER), end
        else:
            last = fake.requests[-1]["messages"]
            assert [m["role"] for m in last] == ["system", "user"], last  # nothing heard before
            assert last[-1]["content"] == second["text"]
    finally:
        await client.close()
