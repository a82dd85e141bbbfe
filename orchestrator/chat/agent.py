"""Answers for `chat`, one agent per session: retrieval from the session's knowledge base, then an
LLM streaming the answer, cut into sentences as they complete so the first one is spoken while
the rest is generated. A slow LLM that sends no sentence end for CLAUSE_FLUSH_AFTER_S has its
text so far cut at a natural break (a comma, before a conjunction, a space after a few words:
speech/clauses.py), so it is spoken instead of waited for. With no LLM configured, the best-matching FAQ answer, or a clear "I don't
know". The agent keeps a bounded memory of the conversation; it dies with its session.

The memory holds what the user heard, not what was produced: the speech pipeline reads ahead of
what is played, so an answer is remembered when the session's player says what of it was played
(`Answer.heard`): whole, cut at the interruption point, or not at all when nothing was heard.
A question whose answer the user cut off by speaking before hearing any of it was a fragment (a
pause mid-question taken for the end of the turn): it goes before the next question, so the
continuation is answered as the one question it is, from the FAQ and the LLM alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from ..language import language_of
from ..settings import DEFAULT_LLM_MAX_TOKENS, DEFAULT_LLM_MODEL
from ..speech.items import CUT_BY_USER, SentenceStream, join_sentences, split_sentences
from .knowledge import KnowledgeBase, Passage, Profile
from .llm import ChatLLM, LLMConfig, LLMError

log = logging.getLogger(__name__)

MEMORY_TURNS = 6
CONTEXT_PASSAGES = 3
# Text that has waited this long for a sentence end is cut at its last natural break.
CLAUSE_FLUSH_AFTER_S = 1.0
_END = object()  # the LLM stream's end, in the pump's queue
# A question cut off unheard by the user's speech joins the next question asked within this long.
QUESTION_FRAGMENT_TTL_S = 30.0
_FRAGMENT_END = ".。…"  # ASR ends a fragment as if it were a sentence: not kept when joined

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
    answer: str  # what the user heard of it
    interrupted: bool = False  # the answer was cut: `answer` is its beginning



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


def join_question(fragments: list[str], question: str) -> str:
    """Question fragments cut off by the user (oldest first) and the question that went on
    from them, as one question: "How many sessions." + "can run at once?" -> "How many
    sessions can run at once?"."""
    pieces = [f.strip().rstrip(_FRAGMENT_END).rstrip() for f in fragments] + [question.strip()]
    return join_sentences([p for p in pieces if p])


class Answer:
    """One answer of a ChatAgent: `sentences()` as they are produced (the speech pipeline's
    source), `heard(text, cut)` from the session's player (Utterance.on_heard) once it is
    known what the user heard of it. `question` is the question answered (fragments the user
    cut off before it included)."""

    def __init__(self, agent: ChatAgent, question: str) -> None:
        self.question = question
        self.produced: list[str] = []  # sentences produced so far
        self._agent = agent

    async def sentences(self) -> AsyncIterator[str]:
        """The answer's sentences, each as soon as it is complete. Closing the generator early
        (an interrupt) closes the LLM stream."""
        agent = self._agent
        pieces = (agent._from_faq(self.question) if agent._llm is None
                  else agent._from_llm(self.question, agent._context(self)))
        async with contextlib.aclosing(pieces):
            async for sentence in pieces:
                self.produced.append(sentence)
                yield sentence

    def heard(self, text: str, cut: str | None) -> None:
        """What the user heard of this answer (`text`, "" for nothing) and why it stopped short
        (a speech.items CUT_* reason, None when it was played to its end): the memory keeps it,
        cut at that point; an answer nobody heard is forgotten, and its question, when the
        user's speech cut it (CUT_BY_USER), becomes a fragment of the next question."""
        self._agent._settle(self, text, cut)


class ChatAgent:
    def __init__(self, knowledge: KnowledgeBase, llm: ChatLLM | None,
                 memory_turns: int = MEMORY_TURNS) -> None:
        self.knowledge = knowledge
        self._llm = llm
        self._memory: deque[ChatTurn] = deque(maxlen=memory_turns)
        self._unsettled: list[Answer] = []  # begun, not yet heard (or not) to the end
        self._fragments: list[tuple[str, float]] = []  # (question, monotonic time it was cut)

    @property
    def memory(self) -> list[ChatTurn]:
        """The conversation as the user heard it, oldest first."""
        return list(self._memory)

    def begin(self, question: str) -> Answer:
        """A new answer to `question`, after any fragment of a question the user cut off
        unheard less than QUESTION_FRAGMENT_TTL_S ago (`Answer.question` is the joined one)."""
        now = time.monotonic()
        fragments = [q for q, at in self._fragments if now - at <= QUESTION_FRAGMENT_TTL_S]
        self._fragments = []
        answer = Answer(self, join_question(fragments, question) if fragments else question)
        self._unsettled.append(answer)
        return answer

    def _context(self, answer: Answer) -> list[ChatTurn]:
        """The conversation before `answer`: the memory, then the earlier answers still
        playing (the pipeline reads ahead) as produced so far."""
        unsettled = self._unsettled
        earlier = unsettled[:unsettled.index(answer)] if answer in unsettled else unsettled
        playing = [ChatTurn(a.question, join_sentences(a.produced)) for a in earlier if a.produced]
        return [*self._memory, *playing][-(self._memory.maxlen or 0):]

    def _settle(self, answer: Answer, heard: str, cut: str | None) -> None:
        if answer not in self._unsettled:
            return  # told twice: the first word stands
        self._unsettled.remove(answer)
        if heard:
            self._memory.append(ChatTurn(answer.question, heard, interrupted=cut is not None))
        elif cut == CUT_BY_USER:
            self._fragments.append((answer.question, time.monotonic()))

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

    async def _from_llm(self, question: str, memory: list[ChatTurn]) -> AsyncIterator[str]:
        assert self._llm is not None
        loop = asyncio.get_running_loop()
        passages = await loop.run_in_executor(
            None, self.knowledge.search, question, CONTEXT_PASSAGES)
        messages = build_messages(self.knowledge.profile.system_prompt or DEFAULT_SYSTEM_PROMPT,
                                  passages, memory, question)
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
