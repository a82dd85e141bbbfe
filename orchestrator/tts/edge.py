"""Microsoft Edge's online neural voices (`--tts edgetts`, LiveTalking's default) through the
`edge-tts` library: its MP3 stream decoded as it arrives.

The voice is a Microsoft voice name (`zh-CN-YunxiaNeural`, LiveTalking's default and ours;
`en-US-AriaNeural`, ...): `--ref-file`/`--REF_FILE`, `refaudio`, or `/human`'s `tts.ref_file`.
`tts` keys `rate` ("+10%"), `volume` ("-20%") and `pitch` ("+5Hz") are edge-tts's own prosody
settings. A name that is not a Microsoft voice is left to the other engines (eSpeak's `cmn`).

The service is on the internet (wss://speech.platform.bing.com/...). `--tts-server
ws://HOST:PORT/PATH` replaces that endpoint: edge-tts has no parameter for it (its `proxy` and
`connector` still go to Microsoft's host over TLS), so its module's `WSS_URL`, which it reads
each time it connects, is set to the given URL before each synthesis; its query parameters
(TrustedClientToken, ConnectionId, Sec-MS-GEC...) follow. Without network, start-up logs one
warning and each sentence ends with an `error` event naming edge-tts: sessions are never
refused for it (`--tts-fallback espeak` has eSpeak say the sentence instead).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import edge_tts
import edge_tts.communicate
import edge_tts.exceptions
import numpy as np
from edge_tts.constants import TRUSTED_CLIENT_TOKEN, WSS_URL

from ..media.audio_stream_decoding import AudioStreamDecoder
from .base import TTSEngine, TTSOptionError, TTSServerError, UnknownVoice, Voice
from .cloning import passed_options
from .http_audio import PROBE_TIMEOUT_S, PROBE_TTL_S

EDGE_DEFAULT_VOICE = "zh-CN-YunxiaNeural"  # LiveTalking's default (its users' Chinese voice)
# edge-tts asks for audio-24khz-48kbitrate-mono-mp3: the rate until the first frame says.
EDGE_SAMPLE_RATE_HZ = 24000
# Microsoft's voice names: language-REGION[-dialect]-NameNeural (zh-CN-liaoning-XiaobeiNeural),
# the shape edge-tts itself accepts.
EDGE_VOICE_NAME = re.compile(r"[a-z]{2,3}-[A-Z]{2,3}-[A-Za-z0-9-]{1,60}Neural")
OPTIONS = {"rate": str, "volume": str, "pitch": str}
CONNECT_TIMEOUT_S = 10  # edge-tts's own defaults, whole seconds (it checks int)
RECEIVE_TIMEOUT_S = 60
ENGINE_LABEL = "edge-tts"  # how errors name it: what the user installs and searches for
# What the library raises when the service fails or answers what it does not expect.
SERVICE_ERRORS = (edge_tts.exceptions.EdgeTTSException, aiohttp.ClientError,
                  asyncio.TimeoutError, OSError)


def edge_endpoint(server: str) -> str:
    """The library's WSS_URL for `--tts-server` (its base: `&ConnectionId=...` is appended):
    the given URL with edge-tts's TrustedClientToken as its first (or next) query parameter;
    Microsoft's endpoint for "". Raises ValueError for a URL that is not ws:// or wss://."""
    if not server:
        return WSS_URL
    if urlsplit(server).scheme not in ("ws", "wss"):
        raise ValueError(f"--tts-server {server}: edgetts takes a ws:// or wss:// URL (the "
                         "WebSocket endpoint that replaces Microsoft's)")
    return f"{server}{'&' if '?' in server else '?'}TrustedClientToken={TRUSTED_CLIENT_TOKEN}"


class EdgeTTSEngine(TTSEngine):
    """edge-tts: one WebSocket per sentence, MP3 chunks decoded as they arrive."""

    name = "edgetts"
    understood_options = frozenset(OPTIONS)

    def __init__(self, default_voice: str = "", server: str = "") -> None:
        self.default_voice = default_voice or EDGE_DEFAULT_VOICE
        self.endpoint = edge_endpoint(server)
        parts = urlsplit(self.endpoint)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "wss" else 80)
        self._rate_hz = EDGE_SAMPLE_RATE_HZ
        self.problem: str | None = None  # why the service looked unreachable when last probed
        self._probed_at: float | None = None
        self._probe: asyncio.Task | None = None

    @property
    def sample_rate_hz(self) -> int:
        return self._rate_hz

    def _name(self, voice: Voice) -> str:
        return self.default_voice if voice.auto else voice.name

    async def check_voice(self, voice: Voice) -> None:
        if not EDGE_VOICE_NAME.fullmatch(self._name(voice)):
            raise UnknownVoice(self._name(voice))

    def speaks(self, text: str, voice: Voice) -> bool:
        return bool(EDGE_VOICE_NAME.fullmatch(self._name(voice)))

    async def check_available(self) -> None:
        """Never refuses: without network the sentences fail with an error event each. The first
        call (start-up) waits for the probe (its warning is logged); later ones start a new
        probe in the background when the last is older than PROBE_TTL_S."""
        if self._probed_at is None:
            await self._reach()
        elif self.health_stale and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._reach(), name="edgetts-probe")

    async def _reach(self) -> None:
        """Open (and close) a TCP connection to the endpoint's host; the outcome in `problem`."""
        self._probed_at = time.monotonic()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                _, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            self.problem = (f"TTS '{self.name}' ({ENGINE_LABEL}, Microsoft's online voices) cannot "
                            f"reach {self.host}:{self.port} ({type(exc).__name__}): it needs "
                            "internet access (or --tts-server); each sentence ends with an error "
                            "event naming edge-tts, or eSpeak says it with --tts-fallback espeak")
            return
        writer.close()
        self.problem = None

    @property
    def health_warning(self) -> str | None:
        return self.problem

    @property
    def health_stale(self) -> bool:
        return self._probed_at is None or time.monotonic() - self._probed_at >= PROBE_TTL_S

    def communicate(self, text: str, voice: Voice) -> edge_tts.Communicate:
        """The library's request for one sentence. ValueError naming the `tts` key for a
        prosody value it refuses (e.g. rate "fast": it takes "+10%")."""
        options = passed_options(voice.options, OPTIONS)
        try:
            return edge_tts.Communicate(text, self._name(voice), **options,
                                        connect_timeout=CONNECT_TIMEOUT_S,
                                        receive_timeout=RECEIVE_TIMEOUT_S)
        except ValueError as exc:
            key = next((k for k in options if k in str(exc)), "")
            examples = {"rate": "+10%", "volume": "-20%", "pitch": "+5Hz"}
            raise TTSOptionError(f"tts.{key} must be like {examples[key]}" if key else
                                 f"edge-tts refused the voice or options: {exc}") from None

    async def synthesize(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        request = self.communicate(text, voice)
        decoder = AudioStreamDecoder("mp3")
        # The endpoint, read by the library when it connects (see the module's docstring).
        edge_tts.communicate.WSS_URL = self.endpoint
        stream = request.stream()
        try:
            async for message in stream:
                if message["type"] != "audio":
                    continue  # SentenceBoundary/WordBoundary timings
                audio = decoder.feed(message["data"])
                if audio.size:
                    self._rate_hz = decoder.rate_hz or self._rate_hz
                    yield audio
            audio = decoder.finish()
            if audio.size:
                yield audio
        except SERVICE_ERRORS as exc:
            raise self._failure(exc) from None
        finally:
            await stream.aclose()

    def _failure(self, exc: BaseException) -> TTSServerError:
        """One line naming edge-tts, the endpoint's host and the cause (no traceback)."""
        if isinstance(exc, edge_tts.exceptions.NoAudioReceived):
            why = "no audio (an unknown voice?)"
        elif isinstance(exc, aiohttp.WSServerHandshakeError):
            why = f"HTTP {exc.status} on connect"
        elif isinstance(exc, (aiohttp.ClientConnectorError, OSError)):
            why = f"{type(exc).__name__}: no network or --tts-server down"
            self.problem = (f"TTS '{self.name}' ({ENGINE_LABEL}) cannot reach "
                            f"{self.host}:{self.port}")
            self._probed_at = time.monotonic()
        else:
            why = f"{type(exc).__name__}: {str(exc)[:120]}"
        return TTSServerError(f"TTS server '{ENGINE_LABEL}' at {self.host}:{self.port} failed: "
                              f"{why}")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
