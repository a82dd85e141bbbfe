"""A fake of DashScope's Qwen-TTS Realtime WebSocket (`/api-ws/v1/realtime?model=...`) on
127.0.0.1, speaking its events as the dashscope SDK and the service do: `session.created` on
connect; `session.update` -> `session.updated`; `input_text_buffer.append` then
`input_text_buffer.commit` -> `input_text_buffer.committed`, `response.created`, base64 PCM
(24 kHz) in `response.audio.delta` events, `response.audio.done`, `response.done`;
`session.finish` -> `session.finished`. A bad key is HTTP 401 at the handshake; an unknown voice
or a request it refuses an `error` event.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from aiohttp import WSMsgType, web
from fake_voice_servers import CHUNK_S, cloned_audio

HOST = "127.0.0.1"
QWEN_PATH = "/api-ws/v1/realtime"
QWEN_KEY = "sk-qwen-test"
QWEN_RATE_HZ = 24000
QWEN_MODELS = ("qwen3-tts-flash-realtime", "qwen-tts-realtime")


@dataclass
class FakeQwen:
    voices: tuple[str, ...] = ("Cherry", "Ethan", "Serena")
    real_time_factor: float = 0.2
    sessions: list[dict] = field(default_factory=list)  # each session.update's session
    texts: list[str] = field(default_factory=list)
    finished: int = 0


def _error(message: str, code: str = "InvalidParameter") -> dict:
    return {"type": "error", "error": {"type": "invalid_request_error", "code": code,
                                       "message": message}}


def qwen_app(fake: FakeQwen) -> web.Application:
    async def realtime(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {QWEN_KEY}":
            return web.json_response({"code": "InvalidApiKey", "message": "Invalid API-key"},
                                     status=401)
        if request.query.get("model") not in QWEN_MODELS:
            return web.json_response({"code": "ModelNotFound"}, status=404)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "session.created", "session": {"id": "sess_1"}})
        session: dict = {}
        text = ""
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                break
            event = message.json()
            kind = event.get("type")
            if kind == "session.update":
                session = event.get("session", {})
                fake.sessions.append(session)
                if session.get("voice") not in fake.voices:
                    await ws.send_json(_error(f"Voice '{session.get('voice')}' is not supported"))
                    continue
                await ws.send_json({"type": "session.updated", "session": session})
            elif kind == "input_text_buffer.append":
                text += event.get("text", "")
            elif kind == "input_text_buffer.commit":
                fake.texts.append(text)
                await ws.send_json({"type": "input_text_buffer.committed"})
                await ws.send_json({"type": "response.created", "response": {"id": "resp_1"}})
                rate = session.get("sample_rate", QWEN_RATE_HZ)
                pcm = (np.clip(cloned_audio(text, rate, None), -1, 1) * 32767).astype(
                    "<i2").tobytes()
                step = int(CHUNK_S * rate) * 2
                for start in range(0, len(pcm), step):
                    await asyncio.sleep(CHUNK_S * fake.real_time_factor)
                    await ws.send_json({"type": "response.audio.delta", "delta":
                                        base64.b64encode(pcm[start : start + step]).decode()})
                await ws.send_json({"type": "response.audio.done"})
                await ws.send_json({"type": "response.done", "response": {"status": "completed"}})
                text = ""
            elif kind == "session.finish":
                fake.finished += 1
                await ws.send_json({"type": "session.finished"})
                break
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get(QWEN_PATH, realtime)
    return app


@asynccontextmanager
async def run_fake_qwen_server(fake: FakeQwen) -> AsyncIterator[str]:
    """The ws:// URL of the fake's realtime endpoint (what --tts-server takes)."""
    runner = web.AppRunner(qwen_app(fake), shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    try:
        yield f"ws://{HOST}:{runner.addresses[0][1]}{QWEN_PATH}"
    finally:
        await runner.cleanup()
