"""Volcengine's Doubao TTS (`--tts doubao`) over its binary WebSocket protocol
(`wss://openspeech.bytedance.com/api/v1/tts/ws_binary`), as LiveTalking's doubao.py wrote it.

One connection per sentence (header `Authorization: Bearer; TOKEN`). The client sends one
"full client request": a 4-byte header (protocol version 1, header size 1 word, message type 1,
JSON serialisation, gzip compression), the payload's size (4 bytes, big-endian) and the gzipped
JSON: `app` {appid, token, cluster "volcano_tts"}, `user` {uid}, `audio` {voice_type (the voice:
`--ref-file`/`tts.ref_file`, e.g. BV001_streaming), encoding pcm, rate 16000, speed_ratio,
volume_ratio, pitch_ratio}, `request` {reqid, text, text_type plain, operation submit}. The
service answers audio-only messages (type 0xB): without flags an acknowledgement, else a signed
sequence number (negative: the last), a size and 16-bit PCM; an error is type 0xF (code, size,
message). Credentials as LiveTalking reads them: DOUBAO_APPID, DOUBAO_TOKEN. `--tts-server
ws(s)://...` replaces the endpoint.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import struct
import uuid
from collections.abc import AsyncIterator

import aiohttp
import numpy as np

from .base import TTSEngine, TTSServerError, UnknownVoice, Voice, plausible_voice_name
from .cloning import passed_options
from .http_audio import CONNECT_TIMEOUT_S, INT16_FULL_SCALE, READ_TIMEOUT_S

DOUBAO_URL = "wss://openspeech.bytedance.com/api/v1/tts/ws_binary"
DOUBAO_CLUSTER = "volcano_tts"
DOUBAO_SAMPLE_RATE_HZ = 16000
# Volcengine's voice types: BV001_streaming, zh_female_cancan_mars_bigtts, ICL_...: an underscore.
DOUBAO_VOICE_NAME = re.compile(r"[A-Za-z0-9]+_[A-Za-z0-9_]+")
NUMBER = (int, float)
OPTIONS = {"speed_ratio": NUMBER, "volume_ratio": NUMBER, "pitch_ratio": NUMBER,
           "emotion": str, "language": str}
# Header bytes: version 1 | header size 1 (x4 bytes); message type | flags; serialisation |
# compression; reserved.
FULL_CLIENT_REQUEST = bytes([0x11, 0x10, 0x11, 0x00])
AUDIO_ONLY_RESPONSE, ERROR_MESSAGE = 0xB, 0xF
GZIP_COMPRESSION = 0x1
MAX_ERROR_CHARS = 200


def doubao_request(app_id: str, token: str, voice_type: str, text: str, options: dict) -> bytes:
    """The full client request for one sentence (header, size, gzipped JSON)."""
    body = {"app": {"appid": app_id, "token": token, "cluster": DOUBAO_CLUSTER},
            "user": {"uid": "livehuman"},
            "audio": {"voice_type": voice_type, "encoding": "pcm", "rate": DOUBAO_SAMPLE_RATE_HZ,
                      "speed_ratio": options.get("speed_ratio", 1.0),
                      "volume_ratio": options.get("volume_ratio", 1.0),
                      "pitch_ratio": options.get("pitch_ratio", 1.0),
                      **{k: options[k] for k in ("emotion", "language") if k in options}},
            "request": {"reqid": str(uuid.uuid4()), "text": text, "text_type": "plain",
                        "operation": "submit"}}
    payload = gzip.compress(json.dumps(body).encode())
    return FULL_CLIENT_REQUEST + struct.pack(">I", len(payload)) + payload


def parse_response(message: bytes) -> tuple[bytes | None, bool]:
    """(the audio a server message carries, or None; whether it is the last). Raises
    TTSServerError for an error message or one that is not the protocol's."""
    if len(message) < 4:
        raise TTSServerError("TTS server 'doubao' sent a message shorter than its header")
    header_bytes = (message[0] & 0x0F) * 4
    kind, flags = message[1] >> 4, message[1] & 0x0F
    payload = message[header_bytes:]
    if kind == AUDIO_ONLY_RESPONSE:
        if flags == 0:  # an acknowledgement: no sequence number, no audio
            return None, False
        if len(payload) < 8:
            raise TTSServerError("TTS server 'doubao' sent a truncated audio message")
        sequence, size = struct.unpack(">iI", payload[:8])
        return payload[8 : 8 + size], sequence < 0
    if kind == ERROR_MESSAGE and len(payload) >= 8:
        code, size = struct.unpack(">II", payload[:8])
        text = payload[8 : 8 + size]
        if message[2] & 0x0F == GZIP_COMPRESSION:
            try:
                text = gzip.decompress(text)
            except (OSError, EOFError):
                pass
        raise TTSServerError(f"TTS server 'doubao' answered error {code}: "
                             f"{text.decode(errors='replace')[:MAX_ERROR_CHARS]}")
    raise TTSServerError(f"TTS server 'doubao' sent message type {kind:#x}")


class DoubaoTTSEngine(TTSEngine):
    """Doubao (Volcengine) streaming TTS; the voice is its voice_type."""

    name = "doubao"
    understood_options = frozenset(OPTIONS) | {"speed"}

    def __init__(self, app_id: str, token: str, default_voice: str = "", url: str = "") -> None:
        self.app_id, self._token = app_id, token
        self.default_voice = default_voice
        self.url = url or DOUBAO_URL
        self._session: aiohttp.ClientSession | None = None

    @property
    def sample_rate_hz(self) -> int:
        return DOUBAO_SAMPLE_RATE_HZ

    def _name(self, voice: Voice) -> str:
        return self.default_voice if voice.auto else voice.name

    def _is_voice(self, name: str) -> bool:
        return bool(DOUBAO_VOICE_NAME.fullmatch(name)) and plausible_voice_name(name)

    async def check_voice(self, voice: Voice) -> None:
        if not self._is_voice(self._name(voice)):
            raise UnknownVoice(self._name(voice))

    def speaks(self, text: str, voice: Voice) -> bool:
        return self._is_voice(self._name(voice))

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S))
        return self._session

    async def synthesize(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        name = self._name(voice)
        if not self._is_voice(name):
            raise UnknownVoice(name)
        options = passed_options(voice.options, {**OPTIONS, "speed": NUMBER})
        if "speed" in options:
            options.setdefault("speed_ratio", options.pop("speed"))
        request = doubao_request(self.app_id, self._token, name, text, options)
        pending = b""  # an odd byte carried to the next chunk
        try:
            async with self.session.ws_connect(
                    self.url, headers={"Authorization": f"Bearer; {self._token}"},
                    autoping=False) as ws:
                await ws.send_bytes(request)
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.BINARY:
                        break
                    audio, last = parse_response(message.data)
                    if audio:
                        data = pending + audio
                        usable = len(data) - len(data) % 2
                        pending = data[usable:]
                        if usable:
                            yield (np.frombuffer(data[:usable], "<i2").astype(np.float32)
                                   / INT16_FULL_SCALE)
                    if last:
                        return
                raise TTSServerError("TTS server 'doubao' closed the connection before the "
                                     "last audio")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            why = (f"HTTP {exc.status} on connect" if isinstance(exc, aiohttp.WSServerHandshakeError)
                   else type(exc).__name__)
            raise TTSServerError(f"TTS server 'doubao' at {self.url.split('?')[0]} failed: "
                                 f"{why}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
