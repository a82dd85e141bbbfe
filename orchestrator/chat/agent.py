"""Answers for `chat`, one agent per session: retrieval from the session's knowledge base, then an
LLM streaming the answer, cut into sentences as they complete so the first one is spoken while
the rest is generated. A slow LLM that sends no sentence end for CLAUSE_FLUSH_AFTER_S has its
text so far cut at a natural break (a comma, before a conjunction, a space after a few words:
speech/clauses.py), so it is spoken instead of waited for. With no LLM configured, the best-matching FAQ answer, or a clear "I don't
know". The agent keeps a bounded memory of the conversation; it dies with its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from ..language import language_of
from ..settings import DEFAULT_LLM_MAX_TOKENS, DEFAULT_LLM_MODEL
from ..speech.items import SentenceStream, join_sentences, split_sentences
from .knowledge import KnowledgeBase, Passage, Profile
from .llm import ChatLLM, LLMConfig, LLMError

log = logging.getLogger(__name__)

MEMORY_TURNS = 6
CONTEXT_PASSAGES = 3
# Text that has waited this long for a sentence end is cut at its last natural break.
CLAUSE_FLUSH_AFTER_S = 1.0
_END = object()  # the LLM stream's end, in the pump's queue

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly talking avatar. Your answers are spoken aloud: keep them short, plain "
    "and conversational, with no lists, Markdown or links. Answer from the context below when it "
    "helps; if you do not know, say so briefly."
)
# What the avatar says when it has nothing better; a profile may replace them.
FALLBACKS = {
    "no_match": {"en": "Sorry, I don't know the answer to that yet.",
                 "zh": "抱歉，这个问题我暂时还不知道答案。"},
    "llm_failed": {"en": "Sorry, I can't answer right now. Please try again in a moment.",
                   "zh": "抱歉，我现在无法回答，请稍后再试。"},
}


@dataclass(frozen=True)
class ChatTurn:
    question: str
    answer: str



def llm_config_for(profile: Profile, base: LLMConfig | None,
                   max_tokens: int = DEFAULT_LLM_MAX_TOKENS) -> LLMConfig | None:
    """The LLM a knowledge base's profile asks for, on top of the server-wide configuration;
    `max_tokens` (--llm-max-tokens) unless the profile or the server-wide one sets it.

    None (answer from the FAQ) unless an endpoint is configured somewhere.
    """
    base_url = profile.base_url or (base.base_url if base else None)
    if base_url is None:
        return None
    if profile.api_key_env:
        api_key = os.environ.get(profile.api_key_env, "")
    else:
        api_key = base.api_key if base and base.base_url == base_url else ""
    config = base or LLMConfig(base_url=base_url, api_key=api_key, model=DEFAULT_LLM_MODEL)
    return replace(
        config,
        base_url=base_url,
        api_key=api_key,
        model=profile.model or config.model,
        temperature=profile.temperature if profile.temperature is not None else config.temperature,
        max_tokens=(profile.max_tokens if profile.max_tokens is not None
                    else config.max_tokens if config.max_tokens is not None else max_tokens),
    )


def build_messages(system_prompt: str, passages: list[Passage], memory: list[ChatTurn],
                   question: str) -> list[dict[str, str]]:
    """OpenAI chat messages: instructions and retrieved context, the conversation so far, the question."""
    system = system_prompt
    if passages:
        context = "\n\n".join(f"[{i}] ({p.source})\n{p.text}" for i, p in enumerate(passages, 1))
        system += "\n\nContext:\n" + context
    messages = [{"role": "system", "content": system}]
    for turn in memory:
        messages += [{"role": "user", "content": turn.question},
                     {"role": "assistant", "content": turn.answer}]
    messages.append({"role": "user", "content": question})
    return messages


class ChatAgent:
    def __init__(self, knowledge: KnowledgeBase, llm: ChatLLM | None,
                 memory_turns: int = MEMORY_TURNS) -> None:
        self.knowledge = knowledge
        self._llm = llm
        self._memory: deque[ChatTurn] = deque(maxlen=memory_turns)

    @property
    def memory(self) -> list[ChatTurn]:
        return list(self._memory)

    async def answer(self, question: str) -> AsyncIterator[str]:
        """The answer's sentences, each as soon as it is complete.

        Closing the generator early (an interrupt) closes the LLM stream; what was said until
        then is remembered as the answer.
        """
        spoken: list[str] = []
        pieces = self._from_faq(question) if self._llm is None else self._from_llm(question)
        try:
            async with contextlib.aclosing(pieces):
                async for sentence in pieces:
                    spoken.append(sentence)
                    yield sentence
        finally:
            if spoken:
                self._memory.append(ChatTurn(question, join_sentences(spoken)))

    def _fallback(self, kind: str, question: str) -> str:
        language = language_of(question)
        profile = self.knowledge.profile
        if kind == "no_match":
            custom = profile.no_match_answer_zh if language == "zh" else profile.no_match_answer
            if custom:
                return custom
        return FALLBACKS[kind][language]

    async def _from_faq(self, question: str) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        match = await loop.run_in_executor(None, self.knowledge.best_faq, question)
        answer = match.entry.answer if match else self._fallback("no_match", question)
        for sentence in split_sentences(answer):
            yield sentence

    async def _from_llm(self, question: str) -> AsyncIterator[str]:
        assert self._llm is not None
        loop = asyncio.get_running_loop()
        passages = await loop.run_in_executor(
            None, self.knowledge.search, question, CONTEXT_PASSAGES)
        messages = build_messages(self.knowledge.profile.system_prompt or DEFAULT_SYSTEM_PROMPT,
                                  passages, list(self._memory), question)
        said_something = False
        try:
            async with contextlib.aclosing(self._pieces(messages)) as pieces:
                async for piece in pieces:
                    said_something = True
                    yield piece
        except LLMError:  # logged once, as the utterance's failure (speech/pipeline.py)
            if not said_something:  # the listener hears why there is no answer...
                yield self._fallback("llm_failed", question)
            raise  # ...and the failure reaches the session's events

    async def _pieces(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        """The LLM's answer as speakable pieces: sentences as they complete, and a clause cut
        at a natural break when no sentence end has come for CLAUSE_FLUSH_AFTER_S. Raises
        LLMError. The stream is read by a pump task, so waiting for the next token can time
        out without cutting the stream."""
        assert self._llm is not None
        deltas: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async with contextlib.aclosing(self._llm.stream(messages)) as stream:
                    async for delta in stream:
                        deltas.put_nowait(delta)
            except Exception as exc:  # handed to the reader, which raises it
                deltas.put_nowait(exc)
                return
            deltas.put_nowait(_END)

        loop = asyncio.get_running_loop()
        reader = asyncio.create_task(pump(), name="llm-stream")
        sentences = SentenceStream()
        last_piece = loop.time()
        try:
            while True:
                wait_s = (max(last_piece + CLAUSE_FLUSH_AFTER_S - loop.time(), 0.0)
                          if sentences.pending else None)
                try:
                    async with asyncio.timeout(wait_s):
                        delta = await deltas.get()
                except TimeoutError:  # no sentence end for a while: a clause, if there is one
                    pieces = sentences.flush_clause()
                    last_piece = loop.time()  # either way, the next try after as long again
                else:
                    if delta is _END:
                        break
                    if isinstance(delta, Exception):
                        raise delta
                    pieces = sentences.feed(delta)
                    if pieces:
                        last_piece = loop.time()
                for piece in pieces:
                    yield piece
            for piece in sentences.flush():
                yield piece
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
