"""Chat LLM backends: one streaming interface, and the OpenAI-compatible client behind it.

Any server speaking the OpenAI chat-completions API works (OpenAI, vLLM, Ollama, Triton's
OpenAI frontend, DashScope compatible mode); only `base_url`, `api_key` and `model` change.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import openai

from ..errors import ExternalServiceError

# Local servers ignore the key, but the SDK refuses to start without one.
PLACEHOLDER_API_KEY = "none"
ERROR_DETAIL_MAX_CHARS = 300


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    api_key: str
    model: str
    # Applies to connecting and to every read, so the first token (and each later one) must
    # arrive within it.
    timeout_s: float = 30.0
    # Only before the stream starts: once text has been yielded, a retry would repeat it.
    max_retries: int = 2
    temperature: float | None = None
    max_tokens: int | None = None


class LLMError(ExternalServiceError):
    """An LLM request failed; the message is safe to show to users (it never holds the key)."""


class ChatLLM(Protocol):
    def stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        """Yield the reply to `messages` as text deltas, in order."""
        ...

    async def close(self) -> None: ...


class OpenAICompatibleLLM:
    """Streams chat completions from an OpenAI-compatible endpoint.

    Stopping the iteration early (`aclose()`, or cancelling the task that iterates) closes the
    HTTP response at once, so the server sees the disconnect and stops generating.
    """

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key or PLACEHOLDER_API_KEY,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )

    async def stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        request = self._client.chat.completions.create(
            model=self.config.model,
            messages=messages,
            stream=True,
            **self._sampling_options(),
        )
        try:
            # The SDK's timeout is per read and it retries timeouts: a server that accepts and
            # never answers would keep a listener waiting (1 + retries) x timeout. One deadline
            # for getting the stream started, retries included.
            async with asyncio.timeout(self.config.timeout_s):
                chunks = await request
        except TimeoutError:
            raise LLMError(f"LLM at {self.config.base_url} did not start answering within "
                           f"{self.config.timeout_s:g} s") from None
        except openai.OpenAIError as err:
            raise LLMError(self._describe(err)) from err
        try:
            async for chunk in chunks:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content
        except openai.OpenAIError as err:
            raise LLMError(self._describe(err)) from err
        finally:
            await chunks.close()

    async def close(self) -> None:
        await self._client.close()

    def _sampling_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.config.temperature is not None:
            options["temperature"] = self.config.temperature
        if self.config.max_tokens is not None:
            options["max_tokens"] = self.config.max_tokens
        return options

    def _describe(self, err: openai.OpenAIError) -> str:
        url = self.config.base_url
        if isinstance(err, openai.APITimeoutError):
            return f"LLM at {url} timed out (nothing received for {self.config.timeout_s:g} s)"
        if isinstance(err, openai.APIConnectionError):
            if _is_connection_refused(err):
                return f"connection refused to {url}"
            return f"cannot reach LLM at {url}: {self._redact(_root_cause(err))}"
        if isinstance(err, openai.APIStatusError):
            detail = _body_message(err.body)
            suffix = f": {self._redact(detail)}" if detail else ""
            return f"LLM at {url} answered HTTP {err.status_code}{suffix}"
        if isinstance(err, openai.APIError):
            return f"LLM stream from {url} failed: {self._redact(err.message)}"
        return f"LLM request to {url} failed: {self._redact(str(err))}"

    def _redact(self, text: str) -> str:
        # Some servers echo the key they rejected back in the error message.
        if self.config.api_key:
            text = text.replace(self.config.api_key, "***")
        return text[:ERROR_DETAIL_MAX_CHARS]


def _body_message(body: object) -> str:
    """The `message` of an OpenAI-style error body (the SDK already unwrapped `error`)."""
    if isinstance(body, dict):
        message = body.get("message")
        return message if isinstance(message, str) else ""
    return body.strip() if isinstance(body, str) else ""


def _causes(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    cause = err.__cause__ or err.__context__
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def _is_connection_refused(err: BaseException) -> bool:
    return any(
        isinstance(cause, ConnectionRefusedError)
        or (isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED)
        for cause in _causes(err)
    )


def _root_cause(err: BaseException) -> str:
    chain = _causes(err)
    return str(chain[-1]) if chain and str(chain[-1]) else str(err)
