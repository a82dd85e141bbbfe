"""OpenAICompatibleLLM against the fake OpenAI server over loopback."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from fake_openai import fake_openai_fixture, split_tokens  # noqa: F401  (fixture)

from orchestrator.chat.llm import LLMConfig, LLMError, OpenAICompatibleLLM
from orchestrator.services import llm_config
from orchestrator.settings import DEFAULT_LLM_MODEL, DEFAULT_OPENAI_BASE_URL, parse_settings

pytestmark = pytest.mark.timeout(10)

MODEL = "fake-model"
MESSAGES = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Say hello."},
]
LONG_REPLY = " ".join(f"word{i}" for i in range(200))
SHORT_TIMEOUT_S = 0.5
DISCONNECT_SEEN_WITHIN_S = 1.0
FAST_RETRY_S = 0.01  # the fake's retry-after, instead of the SDK's 0.5 s+ backoff


@pytest.fixture
async def make_llm():
    """Builds clients for a base URL and closes them after the test."""
    made: list[OpenAICompatibleLLM] = []

    def make(base_url: str, **options) -> OpenAICompatibleLLM:
        options.setdefault("api_key", "")
        llm = OpenAICompatibleLLM(LLMConfig(base_url=base_url, model=MODEL, **options))
        made.append(llm)
        return llm

    yield make
    for llm in made:
        await llm.close()


async def collect(llm: OpenAICompatibleLLM, messages=MESSAGES) -> list[str]:
    return [delta async for delta in llm.stream(messages)]


async def test_streams_deltas_in_order(fake_openai, make_llm):
    fake, base_url = fake_openai
    fake.reply = "Hello there! How can I help you today?"
    deltas = await collect(make_llm(base_url))
    assert deltas == split_tokens(fake.reply)
    assert len(deltas) > 1
    assert "".join(deltas) == fake.reply
    (body,) = fake.requests
    assert body["model"] == MODEL
    assert body["messages"] == MESSAGES
    assert body["stream"] is True
    assert "temperature" not in body and "max_tokens" not in body
    assert fake.completed == 1 and fake.disconnects == 0


async def test_sends_sampling_options(fake_openai, make_llm):
    fake, base_url = fake_openai
    await collect(make_llm(base_url, temperature=0.3, max_tokens=64))
    (body,) = fake.requests
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 64


async def test_chinese_reply_streams_in_small_pieces(fake_openai, make_llm):
    fake, base_url = fake_openai
    fake.reply = "你好！我是数字人助手，很高兴为你服务。"
    deltas = await collect(make_llm(base_url))
    assert "".join(deltas) == fake.reply
    assert all(1 <= len(delta) <= 2 for delta in deltas)


async def test_reply_can_depend_on_the_prompt(fake_openai, make_llm):
    fake, base_url = fake_openai
    fake.reply = lambda messages: f"You said: {messages[-1]['content']}"
    assert "".join(await collect(make_llm(base_url))) == "You said: Say hello."


async def test_hold_after_pauses_the_stream_until_released(fake_openai, make_llm):
    fake, base_url = fake_openai
    fake.reply, fake.hold_after = "First sentence. Second sentence.", "First sentence."
    deltas = make_llm(base_url).stream(MESSAGES)
    head = ""
    async for delta in deltas:
        head += delta
        if head == "First sentence.":
            break
    assert fake.completed == 0
    fake.release.set()
    tail = "".join([delta async for delta in deltas])
    assert head + tail == fake.reply
    assert fake.completed == 1


@pytest.mark.parametrize("status", [503, 429])
async def test_retries_before_the_stream_starts(fake_openai, make_llm, status):
    fake, base_url = fake_openai
    fake.fail_times, fake.fail_status, fake.retry_after_s = 1, status, FAST_RETRY_S
    assert "".join(await collect(make_llm(base_url))) == fake.reply
    assert len(fake.requests) == 2


async def test_persistent_server_error_gives_up_after_max_retries(fake_openai, make_llm):
    fake, base_url = fake_openai
    fake.fail_always_status, fake.retry_after_s = 500, FAST_RETRY_S
    with pytest.raises(LLMError, match="500"):
        await collect(make_llm(base_url, max_retries=2))
    assert len(fake.requests) == 3


async def test_rejected_key_is_not_retried_nor_shown(fake_openai, make_llm):
    fake, base_url = fake_openai
    fake.api_key, fake.retry_after_s = "sk-right", FAST_RETRY_S
    secret = "sk-wrong-0123456789"
    with pytest.raises(LLMError, match="401") as caught:
        await collect(make_llm(base_url, api_key=secret))
    assert secret not in str(caught.value)
    assert len(fake.requests) == 1


async def test_connection_refused(make_llm):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(LLMError, match="connection refused") as caught:
        await collect(make_llm(base_url, max_retries=0))
    assert base_url in str(caught.value)


async def test_slow_first_token_times_out(fake_openai, make_llm):
    fake, base_url = fake_openai
    fake.first_token_delay_s = 3.0
    started = time.monotonic()
    with pytest.raises(LLMError, match="timed out"):
        await collect(make_llm(base_url, timeout_s=SHORT_TIMEOUT_S))
    assert time.monotonic() - started < 3 * SHORT_TIMEOUT_S
    # The headers had arrived, so the stream had started: no retry.
    assert len(fake.requests) == 1


async def test_stall_mid_stream_times_out(fake_openai, make_llm):
    fake, base_url = fake_openai
    fake.reply, fake.hold_after = "Part one. Part two.", "Part one."
    received = []
    with pytest.raises(LLMError, match="timed out"):
        async for delta in make_llm(base_url, timeout_s=SHORT_TIMEOUT_S).stream(MESSAGES):
            received.append(delta)
    assert "".join(received) == "Part one."
    await asyncio.wait_for(fake.disconnected.wait(), DISCONNECT_SEEN_WITHIN_S)


async def test_aclose_disconnects_at_once(fake_openai, make_llm):
    fake, base_url = fake_openai
    fake.reply, fake.token_delay_s = LONG_REPLY, 0.02
    deltas = make_llm(base_url).stream(MESSAGES)
    for _ in range(3):
        await deltas.__anext__()
    await deltas.aclose()
    await asyncio.wait_for(fake.disconnected.wait(), DISCONNECT_SEEN_WITHIN_S)
    assert fake.completed == 0


async def test_cancelling_the_consumer_disconnects_at_once(fake_openai, make_llm):
    fake, base_url = fake_openai
    fake.reply, fake.token_delay_s = LONG_REPLY, 0.02
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in make_llm(base_url).stream(MESSAGES):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), DISCONNECT_SEEN_WITHIN_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.disconnected.wait(), DISCONNECT_SEEN_WITHIN_S)
    assert fake.completed == 0


def test_server_wide_llm_from_flags_and_environment(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert llm_config(parse_settings([])) is None, "nothing configured: chat answers from the FAQ"

    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    only_key = llm_config(parse_settings([]))
    assert (only_key.base_url, only_key.api_key, only_key.model) == (
        DEFAULT_OPENAI_BASE_URL, "sk-env", DEFAULT_LLM_MODEL)

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    from_env = llm_config(parse_settings([]))
    assert (from_env.base_url, from_env.model) == ("http://127.0.0.1:9/v1", "env-model")

    flags = llm_config(parse_settings(["--llm-base-url", "http://127.0.0.1:8000/v1",
                                       "--llm-model", "flag-model", "--llm-timeout", "5"]))
    assert (flags.base_url, flags.api_key, flags.model, flags.timeout_s) == (
        "http://127.0.0.1:8000/v1", "sk-env", "flag-model", 5.0)


def test_local_server_needs_no_key(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    config = llm_config(parse_settings(["--llm-base-url", "http://127.0.0.1:11434/v1"]))
    assert (config.api_key, config.model) == ("", DEFAULT_LLM_MODEL)


async def test_a_server_that_never_answers_is_given_up_within_the_timeout(make_llm):
    """Accepts the connection, never sends headers: retries must not multiply the wait."""
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    llm = make_llm(f"http://127.0.0.1:{port}/v1", timeout_s=SHORT_TIMEOUT_S, max_retries=2)
    started = time.monotonic()
    try:
        with pytest.raises(LLMError, match="did not start answering"):
            async for _ in llm.stream(MESSAGES):
                pass
        assert time.monotonic() - started < SHORT_TIMEOUT_S + 0.5
    finally:
        server.close()
        await server.wait_closed()


def test_a_profile_endpoint_without_a_model_gets_the_default_model():
    from orchestrator.chat.agent import llm_config_for
    from orchestrator.chat.knowledge import Profile

    config = llm_config_for(Profile(base_url="http://127.0.0.1:9/v1"), None)
    assert (config.base_url, config.model) == ("http://127.0.0.1:9/v1", DEFAULT_LLM_MODEL)
    assert llm_config_for(Profile(), None) is None
