"""`chat` end to end: a real session, knowledge bases on disk, a fake OpenAI-compatible LLM on
loopback that streams like the real API."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fake_openai import FakeLLM, fake_openai_fixture, run_fake_openai  # noqa: F401  (fixture)
from server_fixtures import refused_offer, running_server, server_settings

from orchestrator.chat.agent import FALLBACKS
from orchestrator.client import AvatarClient
from orchestrator.speech.items import split_sentences

SPEECH_RMS = 0.01
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
async def chat_server(triton, tmp_path_factory):
    """(base_url, services, knowledge_dir): a server whose knowledge bases the tests write."""
    knowledge_dir = tmp_path_factory.mktemp("knowledge")
    async with running_server(server_settings(triton, knowledge_dir=knowledge_dir)) as (url, services):
        yield url, services, knowledge_dir


def knowledge_base(folder, llmid: str, base_url: str | None, documents: dict[str, str] | None = None,
                   **profile) -> str:
    """Write a knowledge base whose profile points at `base_url` (None: no LLM)."""
    kb = folder / llmid
    kb.mkdir()
    if base_url:
        profile = {"base_url": base_url, "model": f"{llmid}-model", **profile}
    (kb / "profile.json").write_text(json.dumps(profile))
    for name, text in (documents or {}).items():
        (kb / name).write_text(text)
    return llmid


async def connected(base_url: str, llmid: str) -> AvatarClient:
    client = AvatarClient(base_url, keep_video=False)
    await client.connect(llmid=llmid)
    await client.wait_for_video(5)
    return client


def events_of(services, client, name: str) -> list[dict]:
    return [e for e in services.registry.get(client.sessionid).events.history if e["event"] == name]


async def wait_for_event(services, client, name: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = events_of(services, client, name)
        if found:
            return found[-1]
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no '{name}' event")


async def test_first_sentence_is_spoken_while_the_answer_still_streams(chat_server, fake_openai):
    base_url, services, folder = chat_server
    fake, llm_url = fake_openai
    fake.reply = "Hello from the model. " + "And here is a long rest of the answer. " * 3
    fake.hold_after = "model."
    client = await connected(base_url, knowledge_base(folder, "stream", llm_url))
    try:
        sent = time.monotonic()
        status, answer = await client.post("/human", type="chat", text="Say hello.")
        assert status == 200 and answer["code"] == 0
        await client.wait_for_speech(sent, SPEECH_RMS)
        assert fake.completed == 0, "speech began before the LLM finished"
        sentence = await wait_for_event(services, client, "sentence")
        assert sentence["text"] == "Hello from the model." and sentence["kind"] == "chat"
        fake.release.set()
        end = await wait_for_event(services, client, "end", timeout=30)
        assert end["text"] == "Say hello."
        assert end["answer"] == fake.reply.strip()
        assert fake.completed == 1
        assert fake.requests[0]["model"] == "stream-model" and fake.requests[0]["stream"] is True
        assert events_of(services, client, "question")[0]["text"] == "Say hello."
    finally:
        await client.close()


async def test_interrupt_closes_the_llm_stream(chat_server, fake_openai):
    base_url, services, folder = chat_server
    fake, llm_url = fake_openai
    fake.reply = "This answer starts now. " + "It keeps going for a long while, slowly. " * 20
    fake.token_delay_s = 0.05
    client = await connected(base_url, knowledge_base(folder, "interrupt", llm_url))
    try:
        sent = time.monotonic()
        await client.post("/human", type="chat", text="Talk for a long time.")
        await client.wait_for_speech(sent, SPEECH_RMS)
        await client.post("/interrupt_talk")
        await asyncio.wait_for(fake.disconnected.wait(), 1.0)
        assert fake.completed == 0
        assert events_of(services, client, "interrupted")
        assert (await client.post("/is_speaking"))[1]["data"] is False
    finally:
        await client.close()


async def test_retrieved_passage_and_memory_go_into_the_prompt(chat_server, fake_openai):
    base_url, services, folder = chat_server
    fake, llm_url = fake_openai
    fake.reply = "You can return it within thirty days."
    documents = {
        "returns.md": "# Returns\n\nUnused items can be returned within 30 days of delivery for a "
                      "full refund. Bring the receipt.",
        "shipping.md": "# Shipping\n\nOrders ship from our Leipzig warehouse within two business "
                       "days by courier.",
        "warranty.md": "# Warranty\n\nElectronics carry a two-year warranty covering defects.",
    }
    llmid = knowledge_base(folder, "shop", llm_url, documents, system_prompt="You sell things.")
    client = await connected(base_url, llmid)
    try:
        await client.post("/human", type="chat", text="How many days do I have to return an item?")
        await wait_for_event(services, client, "end")
        system = fake.requests[0]["messages"][0]
        assert system["role"] == "system" and system["content"].startswith("You sell things.")
        context = system["content"]
        assert "within 30 days of delivery" in context
        assert context.index("within 30 days") < context.find("Leipzig") or "Leipzig" not in context
        assert fake.requests[0]["messages"][-1] == {
            "role": "user", "content": "How many days do I have to return an item?"}

        fake.reply = "Two business days."
        await client.post("/human", type="chat", text="And how fast do you ship?")
        await wait_for_event(services, client, "end")
        while len(events_of(services, client, "end")) < 2:
            await asyncio.sleep(0.05)
        second = fake.requests[1]["messages"]
        assert "Leipzig warehouse" in second[0]["content"]
        # The conversation so far comes along (memory), then the new question.
        assert second[1:] == [
            {"role": "user", "content": "How many days do I have to return an item?"},
            {"role": "assistant", "content": "You can return it within thirty days."},
            {"role": "user", "content": "And how fast do you ship?"},
        ]
    finally:
        await client.close()
    # A new session starts with no memory.
    client = await connected(base_url, llmid)
    try:
        await client.post("/human", type="chat", text="Hello?")
        await wait_for_event(services, client, "end")
        assert [m["role"] for m in fake.requests[2]["messages"]] == ["system", "user"]
    finally:
        await client.close()


async def test_llm_failure_is_an_sse_error_and_a_spoken_apology(chat_server, fake_openai):
    base_url, services, folder = chat_server
    fake, llm_url = fake_openai
    fake.fail_always_status = 500
    fake.retry_after_s = 0.01
    client = await connected(base_url, knowledge_base(folder, "broken", llm_url))
    try:
        await client.post("/human", type="chat", text="Are you there?")
        error = await wait_for_event(services, client, "error")
        assert "500" in error["msg"]
        spoken = [e["text"] for e in events_of(services, client, "sentence")]
        assert spoken == [FALLBACKS["llm_failed"]["en"]]
        assert len(fake.requests) == 3, "one try and two retries"
        # The session goes on: echo still works.
        sent = time.monotonic()
        await client.post("/human", type="echo", text="Still here.")
        await client.wait_for_speech(sent, SPEECH_RMS)
    finally:
        await client.close()


async def test_chinese_answer_is_cut_at_chinese_punctuation(chat_server, fake_openai):
    base_url, services, folder = chat_server
    fake, llm_url = fake_openai
    fake.reply = "您好！我是数字人客服，很高兴为您服务。请问有什么可以帮您？"
    client = await connected(base_url, knowledge_base(folder, "zh", llm_url))
    try:
        await client.post("/human", type="chat", text="你好")
        end = await wait_for_event(services, client, "end")
        spoken = [e["text"] for e in events_of(services, client, "sentence")]
        assert spoken == ["您好！", "我是数字人客服，很高兴为您服务。", "请问有什么可以帮您？"]
        assert end["answer"] == fake.reply
    finally:
        await client.close()


@pytest.mark.parametrize(("llmid", "status"), [("nobody", "404"), ("../etc", "400"), ("a/b", "400")])
async def test_unknown_or_bad_llmid_is_refused_at_offer(chat_server, llmid, status):
    assert status in await refused_offer(chat_server[0], llmid=llmid)


async def test_without_an_llm_the_shipped_faq_answers_in_both_languages(chat_server):
    """llmid "" with no LLM configured anywhere: the shipped knowledge base about livehuman."""
    base_url, services, _ = chat_server
    assert services.llm_config is None
    shipped = services.knowledge.get("")
    client = await connected(base_url, "")
    asked = [
        ("How can I start the livehuman server?", "Run make run in the project folder."),
        ("What is the capital of France?", shipped.profile.no_match_answer),
        ("怎么启动服务器？", "在项目目录里运行 make run。"),
        ("今天天气怎么样？", shipped.profile.no_match_answer_zh),
    ]
    try:
        for question, expected_start in asked:
            sent = time.monotonic()
            # interrupt: each answer is checked by its first sentence, no need to hear it all
            status, answer = await client.post("/human", type="chat", text=question, interrupt=True)
            utterance_id = answer["data"]["utterance_id"]
            await client.wait_for_speech(sent, SPEECH_RMS)
            deadline = time.monotonic() + 10
            while not (said := [e["text"] for e in events_of(services, client, "sentence")
                                if e["utterance_id"] == utterance_id]):
                assert time.monotonic() < deadline, f"nothing said for {question!r}"
                await asyncio.sleep(0.05)
            assert said[0] == split_sentences(expected_start)[0], (question, said)
    finally:
        await client.close()
