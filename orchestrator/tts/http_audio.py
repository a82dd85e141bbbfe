"""What the voice-cloning engines share: one aiohttp session per engine, a reachability probe,
server errors turned into one exception, and a decoder for streamed 16-bit PCM (raw, or WAV
whose header may arrive split over chunks and whose sizes streaming servers leave at 0 or
0xFFFFFFFF).

The engines themselves (cosyvoice.py, gpt_sovits.py, fish_speech.py, openai_speech.py) only
build their server's request and say how its answer is encoded.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import numpy as np

from .base import TTSServerError, TTSServerUnavailable

CONNECT_TIMEOUT_S = 5.0
# A cloning server may think for a while before its first chunk (long sentence, cold GPU).
READ_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 3.0
PROBE_TTL_S = 5.0  # a server seen up this recently is not asked again (each /offer asks)
READ_CHUNK_BYTES = 1 << 14
MAX_ERROR_CHARS = 200
INT16_FULL_SCALE = 32768.0
WAV_HEADER_MAX_BYTES = 4096  # RIFF chunks before "data" (fmt, LIST, fact...): bounded
MIN_RATE_HZ, MAX_RATE_HZ = 8000, 192000
NOT_AUDIO_TYPES = ("text/", "application/json", "application/xml")


class HTTPVoiceServer:
    """One cloning server: its base URL, a connection pool, the last time it answered."""

    def __init__(self, engine: str, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.engine = engine
        self.base_url = base_url.rstrip("/")
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None
        self._seen_up_at = -PROBE_TTL_S
        self._asked_at = -PROBE_TTL_S  # the last probe's time (monotonic s)
        #: why the server was last seen failing to be reached (None: it answered since)
        self.problem: str | None = None

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(connect=CONNECT_TIMEOUT_S,
                                              sock_read=READ_TIMEOUT_S))
        return self._session

    def unavailable(self, why: str) -> TTSServerUnavailable:
        return TTSServerUnavailable(f"TTS server '{self.engine}' at {self.base_url} is "
                                    f"unreachable ({why})")

    @property
    def checked_recently(self) -> bool:
        """Whether a probe ran (or an answer came) within PROBE_TTL_S."""
        return time.monotonic() - max(self._asked_at, self._seen_up_at) < PROBE_TTL_S

    async def probe(self) -> None:
        """Raises TTSServerUnavailable unless the server answers HTTP at all (any status:
        these servers have no common health route). Kept in `problem`."""
        if time.monotonic() - self._seen_up_at < PROBE_TTL_S:
            return
        self._asked_at = time.monotonic()
        try:
            async with self.session.get(self.base_url + "/",
                                        timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)):
                pass
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            error = self.unavailable(type(exc).__name__)
            self.problem = str(error)
            raise error from None
        self._seen_up_at = time.monotonic()
        self.problem = None

    async def stream(self, method: str, path: str, on_headers: Callable[[Mapping], None] | None = None,
                     **request) -> AsyncIterator[bytes]:
        """The body of one answer, chunk by chunk as it arrives (`on_headers` sees the
        response headers first). Raises TTSServerError for a server that is down, answers
        4xx/5xx (with its message) or answers something that is not audio."""
        try:
            async with self.session.request(method, self.url(path), **request) as response:
                if response.status >= 400:
                    detail = (await response.text(errors="replace"))[:MAX_ERROR_CHARS]
                    # No such route (a web framework's own 404/405, not the server's "unknown
                    # voice"): --tts-server is not the server's base URL.
                    if response.status == 405 or (response.status == 404
                                                  and "Not Found" in detail):
                        self.problem = (f"TTS server '{self.engine}' at {self.base_url} answered "
                                        f"HTTP {response.status} for {path}: is --tts-server its "
                                        "base URL?")
                    raise TTSServerError(f"TTS server '{self.engine}' answered HTTP "
                                         f"{response.status} for {path}: {detail.strip()}")
                if response.content_type.startswith(NOT_AUDIO_TYPES):
                    # A JSON answer is the server's error (Tencent's {"Response": {"Error"}}).
                    detail = ((await response.text(errors="replace"))[:MAX_ERROR_CHARS].strip()
                              if response.content_type == "application/json" else "")
                    raise TTSServerError(f"TTS server '{self.engine}' answered "
                                         f"{response.content_type}, not audio"
                                         + (f": {detail}" if detail else ""))
                self._seen_up_at = time.monotonic()
                self.problem = None
                if on_headers is not None:
                    on_headers(response.headers)
                async for chunk in response.content.iter_chunked(READ_CHUNK_BYTES):
                    yield chunk
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            message = (f"TTS server '{self.engine}' at {self.base_url} failed: "
                       f"{type(exc).__name__}")
            if isinstance(exc, aiohttp.ClientConnectorError) and self.problem is None:
                self.problem = message
            raise TTSServerError(message) from None

    async def json(self, method: str, path: str, **request) -> object:
        """One request whose answer is JSON (xtts's /clone_speaker): the decoded body. Raises
        TTSServerError for a server that is down, answers 4xx/5xx (with its message) or answers
        something that is not JSON."""
        try:
            async with self.session.request(method, self.url(path), **request) as response:
                if response.status >= 400:
                    detail = (await response.text(errors="replace"))[:MAX_ERROR_CHARS]
                    raise TTSServerError(f"TTS server '{self.engine}' answered HTTP "
                                         f"{response.status} for {path}: {detail.strip()}")
                self._seen_up_at = time.monotonic()
                self.problem = None
                return await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise TTSServerError(f"TTS server '{self.engine}' at {self.base_url} failed: "
                                 f"{type(exc).__name__}") from None
        except ValueError:
            raise TTSServerError(f"TTS server '{self.engine}' answered {path} with something "
                                 "that is not JSON") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class PCMDecoder:
    """Bytes of 16-bit little-endian mono PCM (raw, or behind a WAV header) -> float32 chunks.

    `wav=True`: the stream starts with a RIFF header; its format (16-bit PCM, mono) is checked
    and its sample rate read. Odd bytes are carried over to the next chunk.
    """

    def __init__(self, rate_hz: int, wav: bool) -> None:
        self.rate_hz = rate_hz
        self._header_pending = wav
        self._pending = b""

    def feed(self, data: bytes) -> np.ndarray:
        data = self._pending + data
        self._pending = b""
        if self._header_pending:
            parsed = parse_wav_header(data)
            if parsed is None:  # the header is not complete yet
                if len(data) > WAV_HEADER_MAX_BYTES:
                    raise TTSServerError("TTS server's WAV header has no 'data' chunk")
                self._pending = data
                return np.zeros(0, np.float32)
            self.rate_hz, offset = parsed
            self._header_pending = False
            data = data[offset:]
        usable = len(data) - len(data) % 2
        self._pending = data[usable:]
        samples = np.frombuffer(data[:usable], dtype="<i2")
        return samples.astype(np.float32) / INT16_FULL_SCALE

    def finish(self) -> None:
        if self._header_pending and self._pending:
            raise TTSServerError("TTS server's answer ended inside its WAV header")


def parse_wav_header(data: bytes) -> tuple[int, int] | None:
    """(sample rate, offset of the samples) of a WAV header; None while incomplete. Raises
    TTSServerError for what is not 16-bit mono PCM WAV."""
    if len(data) < 12:
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise TTSServerError("TTS server's answer is not WAV (no RIFF/WAVE header)")
    offset = 12
    rate_hz: int | None = None
    while len(data) >= offset + 8:
        kind, size = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
        body = offset + 8
        if kind == b"data":
            if rate_hz is None:
                raise TTSServerError("TTS server's WAV has no 'fmt ' chunk before its data")
            return rate_hz, body  # the size is 0 or 0xFFFFFFFF when streamed: ignored
        if len(data) < body + size:
            return None
        if kind == b"fmt ":
            fmt, channels, rate_hz, _, _, bits = struct.unpack("<HHIIHH", data[body:body + 16])
            if fmt not in (1, 0xFFFE) or bits != 16 or channels != 1:
                raise TTSServerError(f"TTS server's WAV is format {fmt}, {channels} channel(s), "
                                     f"{bits} bits; 16-bit mono PCM expected")
            if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
                raise TTSServerError(f"TTS server's WAV has sample rate {rate_hz}")
        offset = body + size + (size & 1)
    return None


async def pcm_chunks(chunks: AsyncIterator[bytes], decoder: PCMDecoder) -> AsyncIterator[np.ndarray]:
    """Decoded audio as the bytes arrive (empty decodes skipped)."""
    async for chunk in chunks:
        audio = decoder.feed(chunk)
        if audio.size:
            yield audio
    decoder.finish()
