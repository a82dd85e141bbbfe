"""A fake of Volcengine's Doubao TTS WebSocket (`/api/v1/tts/ws_binary`) on 127.0.0.1.

It reads the binary "full client request" the real service reads (a 4-byte header: version 1,
header size 1, message type 1, JSON, gzip; a 4-byte payload size; the gzipped JSON with `app`,
`user`, `audio`, `request`) after checking `Authorization: Bearer; TOKEN`, and answers as the
service does: an acknowledgement (audio-only message, no flags), audio-only messages with a
sequence number (negative on the last), a size and 16-bit PCM at the asked rate; a request it
refuses gets an error message (type 0xF: code, size, gzipped JSON message).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from aiohttp import WSMsgType, web
from fake_voice_servers import CHUNK_S, cloned_audio

HOST = "127.0.0.1"
DOUBAO_PATH = "/api/v1/tts/ws_binary"
DOUBAO_APP_ID = "7000000001"
DOUBAO_TOKEN = "doubao-test-token"
ERROR_UNKNOWN_VOICE, ERROR_BAD_REQUEST = 3001, 3000


@dataclass
class FakeDoubao:
    voices: tuple[str, ...] = ("BV001_streaming", "zh_female_cancan_mars_bigtts")
    real_time_factor: float = 0.2
    requests: list[dict] = field(default_factory=list)


def _audio_message(sequence: int, pcm: bytes) -> bytes:
    return bytes([0x11, 0xB0 | (0x3 if sequence < 0 else 0x1), 0x00, 0x00]) + struct.pack(
        ">iI", sequence, len(pcm)) + pcm


def _error_message(code: int, message: str) -> bytes:
    text = gzip.compress(json.dumps({"message": message}).encode())
    return bytes([0x11, 0xF0, 0x11, 0x00]) + struct.pack(">II", code, len(text)) + text


def doubao_app(fake: FakeDoubao) -> web.Application:
    async def synthesize(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer; {DOUBAO_TOKEN}":
            return web.Response(status=401, text="unauthorized")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        message = await ws.receive()
        if message.type != WSMsgType.BINARY or message.data[:4] != bytes([0x11, 0x10, 0x11, 0x00]):
            await ws.send_bytes(_error_message(ERROR_BAD_REQUEST, "not a full client request"))
            await ws.close()
            return ws
        (size,) = struct.unpack(">I", message.data[4:8])
        body = json.loads(gzip.decompress(message.data[8 : 8 + size]))
        fake.requests.append(body)
        app, audio, req = body.get("app", {}), body.get("audio", {}), body.get("request", {})
        if (app.get("appid") != DOUBAO_APP_ID or app.get("cluster") != "volcano_tts"
                or audio.get("encoding") != "pcm" or req.get("operation") != "submit"
                or not req.get("reqid") or not isinstance(req.get("text"), str)):
            await ws.send_bytes(_error_message(ERROR_BAD_REQUEST, "bad request"))
        elif audio.get("voice_type") not in fake.voices:
            await ws.send_bytes(_error_message(ERROR_UNKNOWN_VOICE, "voice_type not granted"))
        else:
            rate = audio.get("rate", 24000)
            pcm = (np.clip(cloned_audio(req["text"], rate, None), -1, 1) * 32767).astype(
                "<i2").tobytes()
            step = int(CHUNK_S * rate) * 2
            await ws.send_bytes(bytes([0x11, 0xB0, 0x00, 0x00]))  # the acknowledgement
            pieces = [pcm[i : i + step] for i in range(0, len(pcm), step)]
            for n, piece in enumerate(pieces, 1):
                await asyncio.sleep(CHUNK_S * fake.real_time_factor)
                await ws.send_bytes(_audio_message(-n if n == len(pieces) else n, piece))
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get(DOUBAO_PATH, synthesize)
    return app


@asynccontextmanager
async def run_fake_doubao_server(fake: FakeDoubao) -> AsyncIterator[str]:
    """The ws:// URL of the fake (what --tts-server takes)."""
    runner = web.AppRunner(doubao_app(fake), shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    try:
        yield f"ws://{HOST}:{runner.addresses[0][1]}{DOUBAO_PATH}"
    finally:
        await runner.cleanup()
