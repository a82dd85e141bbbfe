"""Alibaba DashScope's Qwen-TTS Realtime (`--tts qwentts`, as LiveTalking calls it through the
dashscope SDK): its WebSocket events, one connection per sentence.

`wss://dashscope.aliyuncs.com/api-ws/v1/realtime?model=MODEL` (`--tts-model-name`, default
qwen3-tts-flash-realtime; `--tts-server ws(s)://...` replaces the endpoint), `Authorization:
Bearer KEY` (DASHSCOPE_API_KEY, as LiveTalking reads it, or `--tts-api-key`). The service opens
with `session.created`; the client sends `session.update` (voice: `--ref-file`/`tts.ref_file`,
default Cherry; `response_format` pcm, `sample_rate` 24000, `mode` commit), then
`input_text_buffer.append` with the text and `input_text_buffer.commit`; the service answers
`response.audio.delta` events (base64 16-bit PCM at 24 kHz) until `response.done`, or `error`.
The client ends with `session.finish`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import aiohttp
import numpy as np

from .base import TTSEngine, TTSServerError, UnknownVoice, Voice
from .cloning import passed_options
from .http_audio import CONNECT_TIMEOUT_S, INT16_FULL_SCALE, READ_TIMEOUT_S

QWEN_REALTIME_URL = "wss://dashscope.aliyuncs.com/api-ws/v1/realtime"
QWEN_DEFAULT_MODEL = "qwen3-tts-flash-realtime"
QWEN_DEFAULT_VOICE = "Cherry"  # LiveTalking's default
QWEN_SAMPLE_RATE_HZ = 24000  # the only rate Qwen-TTS realtime sends (pcm)
# Its voices are capitalised names (Cherry, Ethan, Serena, Dylan...).
QWEN_VOICE_NAME = re.compile(r"[A-Z][A-Za-z_]{1,40}")
OPTIONS = {"language_type": str, "speech_rate": (int, float), "pitch_rate": (int, float),
           "volume": (int, float)}
MAX_ERROR_CHARS = 200


class QwenRealtimeEngine(TTSEngine):
    """Qwen-TTS Realtime over DashScope's WebSocket; the voice is its voice name."""

    name = "qwentts"
    understood_options = frozenset(OPTIONS)

    def __init__(self, api_key: str, default_voice: str = "", model: str = "",
                 url: str = "") -> None:
        self._api_key = api_key
        self.default_voice = default_voice or QWEN_DEFAULT_VOICE
        self.model = model or QWEN_DEFAULT_MODEL
        base = url or QWEN_REALTIME_URL
        self.url = f"{base}{'&' if '?' in base else '?'}{urlencode({'model': self.model})}"
        self._session: aiohttp.ClientSession | None = None

    @property
    def sample_rate_hz(self) -> int:
        return QWEN_SAMPLE_RATE_HZ

    def _name(self, voice: Voice) -> str:
        return self.default_voice if voice.auto else voice.name

    async def check_voice(self, voice: Voice) -> None:
        if not QWEN_VOICE_NAME.fullmatch(self._name(voice)):
            raise UnknownVoice(self._name(voice))

    def speaks(self, text: str, voice: Voice) -> bool:
        return bool(QWEN_VOICE_NAME.fullmatch(self._name(voice)))

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S))
        return self._session

    async def synthesize(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        name = self._name(voice)
        if not QWEN_VOICE_NAME.fullmatch(name):
            raise UnknownVoice(name)
        session = {"voice": name, "response_format": "pcm", "sample_rate": QWEN_SAMPLE_RATE_HZ,
                   "mode": "commit", **passed_options(voice.options, OPTIONS)}
        pending = b""
        try:
            async with self.session.ws_connect(
                    self.url, headers={"Authorization": f"Bearer {self._api_key}"}) as ws:
                await self._expect(ws, "session.created")
                await ws.send_json(_event("session.update", session=session))
                await self._expect(ws, "session.updated")
                await ws.send_json(_event("input_text_buffer.append", text=text))
                await ws.send_json(_event("input_text_buffer.commit"))
                async for message in ws:
                    event = self._decode(message)
                    kind = event.get("type")
                    if kind == "response.audio.delta":
                        try:
                            data = pending + base64.b64decode(event.get("delta") or "")
                        except (binascii.Error, ValueError):
                            raise TTSServerError("TTS server 'qwentts' sent audio that is not "
                                                 "base64") from None
                        usable = len(data) - len(data) % 2
                        pending = data[usable:]
                        if usable:
                            yield (np.frombuffer(data[:usable], "<i2").astype(np.float32)
                                   / INT16_FULL_SCALE)
                    elif kind == "response.done":
                        await ws.send_json(_event("session.finish"))
                        return
                raise TTSServerError("TTS server 'qwentts' closed the connection before "
                                     "response.done")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            why = (f"HTTP {exc.status} on connect" if isinstance(exc, aiohttp.WSServerHandshakeError)
                   else type(exc).__name__)
            raise TTSServerError(f"TTS server 'qwentts' at {self.url.split('?')[0]} failed: "
                                 f"{why}") from None

    async def _expect(self, ws: aiohttp.ClientWebSocketResponse, kind: str) -> None:
        event = self._decode(await ws.receive())
        if event.get("type") != kind:
            raise TTSServerError(f"TTS server 'qwentts' sent {event.get('type')!r} where "
                                 f"{kind} was expected")

    @staticmethod
    def _decode(message: aiohttp.WSMessage) -> dict:
        """One server event; TTSServerError for `error` events and what is not JSON text."""
        if message.type != aiohttp.WSMsgType.TEXT:
            raise TTSServerError("TTS server 'qwentts' closed the connection or sent binary "
                                 "data")
        try:
            event = json.loads(message.data)
        except ValueError:
            raise TTSServerError("TTS server 'qwentts' sent an event that is not JSON") from None
        if not isinstance(event, dict):
            raise TTSServerError("TTS server 'qwentts' sent an event that is not an object")
        if event.get("type") == "error":
            error = event.get("error") or {}
            detail = error.get("message", "") if isinstance(error, dict) else str(error)
            raise TTSServerError(f"TTS server 'qwentts' answered error: "
                                 f"{str(detail)[:MAX_ERROR_CHARS]}")
        return event

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _event(kind: str, **fields) -> dict:
    return {"event_id": f"event_{uuid.uuid4().hex}", "type": kind, **fields}
