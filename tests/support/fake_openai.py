"""A scriptable OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

`POST /v1/chat/completions` answers like the real API: with `"stream": true`, server-sent
`chat.completion.chunk` events then `data: [DONE]`; without, one `chat.completion`; errors as
`{"error": {"message", "type", "param", "code"}}` with the status code.

    fake = FakeLLM(reply="Hello there.", token_delay_s=0.05)
    async with run_fake_openai(fake) as base_url:   # http://127.0.0.1:<port>/v1
        ...

As a script: `python tests/support/fake_openai.py --port 0 --tokens-per-second 20 --reply "..."`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

HOST = "127.0.0.1"
DEFAULT_REPLY = "Hello! I am a test assistant, and this is a streamed reply."
# Held streams are released on stop; this only bounds handlers stuck elsewhere.
SHUTDOWN_TIMEOUT_S = 1.0

# CJK ideographs, kana, hangul and full-width punctuation: streamed one or two at a time,
# as real tokenizers do, instead of as one "word" running to the next space.
_CJK = "\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
_PIECE = re.compile(rf"[{_CJK}]{{1,2}}\s*|[^\s{_CJK}]+\s*|\s+")

_ERROR_KINDS = {  # status -> (type, code) as the real API sends them
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def split_tokens(text: str) -> list[str]:
    """Token-like pieces that join back to `text`: words with their trailing space, CJK in
    pairs."""
    return _PIECE.findall(text)


@dataclass
class FakeLLM:
    """Behaviour of one fake server, and what it observed. Mutate between requests freely."""

    reply: str | Callable[[list[dict]], str] = DEFAULT_REPLY
    token_delay_s: float = 0.0  # between content chunks, paced from the stream start
    first_token_delay_s: float = 0.0  # after the headers, before the role chunk
    # Stream up to and including the first occurrence of `hold_after`, then wait for `release`.
    hold_after: str | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    fail_times: int = 0  # the first N requests answer `fail_status`
    fail_status: int = 503
    fail_always_status: int | None = None
    # Sent as `retry-after-ms` with errors; the SDK then waits this long instead of its
    # exponential backoff (0.5 s, 1 s, ...), which keeps retry tests fast.
    retry_after_s: float | None = None
    api_key: str | None = None  # when set, other bearer tokens get a 401

    requests: list[dict] = field(default_factory=list)
    disconnects: int = 0  # streams the client closed before [DONE]
    completed: int = 0  # streams that reached [DONE]
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def reply_for(self, messages: list[dict]) -> str:
        return self.reply(messages) if callable(self.reply) else self.reply


class _Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FakeOpenAI:
    """The aiohttp handlers serving one `FakeLLM`."""

    def __init__(self, fake: FakeLLM) -> None:
        self.fake = fake
        self._ids = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._parse(request)
            text = self.fake.reply_for(body["messages"])
            segments = self._segments(text)
        except _Failure as failure:
            return self._error(failure.status, failure.message)
        completion_id = f"chatcmpl-fake{next(self._ids)}"
        if not body.get("stream"):
            return web.json_response(self._completion(completion_id, body["model"], text))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            await self._stream(response, body, completion_id, segments)
        except ConnectionResetError:  # a write found the connection closed
            self._count_disconnect()
        except asyncio.CancelledError:  # the client went away while we slept or held
            self._count_disconnect()
            raise
        return response

    async def _parse(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as err:
            raise _Failure(400, "We could not parse the JSON body of your request.") from err
        if not isinstance(body, dict):
            raise _Failure(400, "The request body must be a JSON object.")
        fake = self.fake
        fake.requests.append(body)
        expected = f"Bearer {fake.api_key}"
        if fake.api_key is not None and request.headers.get("Authorization") != expected:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            raise _Failure(401, f"Incorrect API key provided: {given}.")
        if fake.fail_always_status is not None:
            raise _Failure(fake.fail_always_status, "The server had an error (scripted).")
        if len(fake.requests) <= fake.fail_times:
            raise _Failure(fake.fail_status, "The server had an error (scripted).")
        for name in ("model", "messages"):
            if name not in body:
                raise _Failure(400, f"Missing required parameter: '{name}'.")
        return body

    def _segments(self, text: str) -> list[list[str]]:
        """The reply's pieces, split where the stream waits for `release`."""
        if self.fake.hold_after is None:
            return [split_tokens(text)]
        at = text.find(self.fake.hold_after)
        if at < 0:  # a mis-scripted test must fail loudly, not stream without holding
            raise _Failure(500, f"hold_after {self.fake.hold_after!r} is not in the reply")
        end = at + len(self.fake.hold_after)
        return [split_tokens(text[:end]), split_tokens(text[end:])]

    def _error(self, status: int, message: str) -> web.Response:
        kind, code = _ERROR_KINDS.get(status, ("server_error", None))
        headers = {}
        if self.fake.retry_after_s is not None:
            headers["retry-after-ms"] = str(round(self.fake.retry_after_s * 1000))
        error = {"message": message, "type": kind, "param": None, "code": code}
        return web.json_response({"error": error}, status=status, headers=headers)

    async def _stream(
        self,
        response: web.StreamResponse,
        body: dict,
        completion_id: str,
        segments: list[list[str]],
    ) -> None:
        created = int(time.time())

        async def send(delta: dict, finish_reason: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            chunk = _envelope(completion_id, "chat.completion.chunk", body["model"], created)
            await _send_event(response, chunk | {"choices": [choice]})

        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.fake.first_token_delay_s)
        await send({"role": "assistant", "content": ""})
        for index, segment in enumerate(segments):
            if index:
                await self.fake.release.wait()
            # Paced from the segment's start, so slow writes do not accumulate into drift.
            start = loop.time()
            for sent, piece in enumerate(segment):
                delay_s = start + sent * self.fake.token_delay_s - loop.time()
                await asyncio.sleep(max(0.0, delay_s))
                await send({"content": piece})
        await send({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = _envelope(completion_id, "chat.completion.chunk", body["model"], created)
            tokens = sum(len(segment) for segment in segments)
            await _send_event(response, usage | {"choices": [], "usage": _usage(tokens)})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.fake.completed += 1

    def _completion(self, completion_id: str, model: str, text: str) -> dict:
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        envelope = _envelope(completion_id, "chat.completion", model, int(time.time()))
        return envelope | {"choices": [choice], "usage": _usage(len(split_tokens(text)))}

    def _count_disconnect(self) -> None:
        self.fake.disconnects += 1
        self.fake.disconnected.set()


def _envelope(completion_id: str, kind: str, model: str, created: int) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
    }


def _usage(completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": 0,
        "completion_tokens": completion_tokens,
        "total_tokens": completion_tokens,
    }


async def _send_event(response: web.StreamResponse, data: dict) -> None:
    payload = json.dumps(data, ensure_ascii=False)
    await response.write(f"data: {payload}\n\n".encode())


@asynccontextmanager
async def run_fake_openai(fake: FakeLLM, port: int = 0) -> AsyncIterator[str]:
    """Serve `fake` on 127.0.0.1; yields the base URL (ending in `/v1`)."""
    # handler_cancellation: a client that disconnects while we sleep or hold cancels the
    # handler, so disconnects are seen at once rather than at the next write.
    runner = web.AppRunner(
        FakeOpenAI(fake).app(),
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    try:
        yield f"http://{HOST}:{bound_port}/v1"
    finally:
        fake.release.set()
        await runner.cleanup()


@pytest.fixture(name="fake_openai")
async def fake_openai_fixture() -> AsyncIterator[tuple[FakeLLM, str]]:
    """`fake_openai`: (fake, base_url) of a fresh fake server; configure `fake` in the test."""
    fake = FakeLLM()
    async with run_fake_openai(fake) as base_url:
        yield fake, base_url


async def _serve_forever(fake: FakeLLM, port: int) -> None:
    async with run_fake_openai(fake, port) as base_url:
        print(base_url, flush=True)
        await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description="Fake OpenAI-compatible chat server on 127.0.0.1.")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    p.add_argument(
        "--tokens-per-second",
        type=float,
        default=0.0,
        help="streaming rate; 0 sends as fast as possible",
    )
    p.add_argument("--first-token-delay", type=float, default=0.0, help="seconds")
    p.add_argument("--reply", default=DEFAULT_REPLY)
    args = p.parse_args()
    delay_s = 1.0 / args.tokens_per_second if args.tokens_per_second > 0 else 0.0
    fake = FakeLLM(
        reply=args.reply, token_delay_s=delay_s, first_token_delay_s=args.first_token_delay
    )
    try:
        asyncio.run(_serve_forever(fake, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
