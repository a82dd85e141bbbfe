"""FunASR's online WebSocket protocol (what LiveTalking's `web/asr/` page speaks) on our ASR engine.

The client sends one JSON text message first (`mode` "offline" | "online" | "2pass",
`chunk_size`, `wav_name`, `is_speaking: true`, optional `wav_format` "pcm", `audio_fs`,
`hotwords`, `itn`), then binary PCM16 mono chunks (16 kHz unless `audio_fs` says otherwise; a
file sent whole may start with its WAV header), then `{"is_speaking": false}`. At that message
the buffered audio is transcribed and one JSON answer comes back: `{"mode": "offline" |
"2pass-offline" | "online", "text", "wav_name", "is_final": true}` (nothing when no words were
heard, as FunASR does). `is_speaking: true` again starts the next utterance on the same socket.

Whisper has no streaming decoder, so there are no partial (`2pass-online`) results: "online"
mode gets its one result at the end, labelled "online". Hotwords and ITN are accepted and
ignored; Whisper gives no timestamps, so answers carry none.

Bounds: one message at most MAX_MESSAGE_BYTES, the first must come within FIRST_MESSAGE_TIMEOUT_S,
an utterance longer than MAX_UTTERANCE_S is transcribed at that length (an `is_final: false`
answer) and the buffer starts again (the ASR engine takes up to MAX_UTTERANCE_S: longer than
Whisper's 30 s window, asr/base.py). A malformed message gets one error message `{"code",
"msg", "text": "", "is_final": true, "mode": "error"}` and the socket is closed (1003); a
message over MAX_MESSAGE_BYTES gets it too (code 413), then the close 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import wave
from dataclasses import dataclass

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from ..asr import ASR_SAMPLE_RATE_HZ, MAX_UTTERANCE_S, ASREngine, ASRError

log = logging.getLogger(__name__)

MODES = ("offline", "online", "2pass")
MAX_MESSAGE_BYTES = 256 * 1024  # the page sends 1920-byte chunks and a few hundred bytes of JSON
FIRST_MESSAGE_TIMEOUT_S = 10.0
MAX_WAV_NAME_CHARS = 256
MIN_AUDIO_FS_HZ = 8000
MAX_AUDIO_FS_HZ = 48000  # the highest rate a page records at; resampled to the pipeline's
PCM16_BYTES = 2
WAV_HEADER_MAX_BYTES = 4096  # RIFF header with its chunks before `data`


class ProtocolError(ValueError):
    """A message the protocol does not allow: answered with an error message, then closed."""


@dataclass
class StreamConfig:
    """What the client said in its first message (later text messages may change it)."""

    mode: str = "2pass"
    wav_name: str = "microphone"
    audio_fs_hz: int = ASR_SAMPLE_RATE_HZ
    is_speaking: bool = True

    def update(self, message: dict) -> None:
        """Apply one JSON text message; raises ProtocolError naming the bad field."""
        if "mode" in message:
            if message["mode"] not in MODES:
                raise ProtocolError(f"mode must be one of {', '.join(MODES)}")
            self.mode = message["mode"]
        if "wav_name" in message:
            name = message["wav_name"]
            if not isinstance(name, str) or len(name) > MAX_WAV_NAME_CHARS:
                raise ProtocolError(f"wav_name must be a string of at most "
                                    f"{MAX_WAV_NAME_CHARS} characters")
            self.wav_name = name
        if "wav_format" in message:
            fmt = message["wav_format"]
            # The page sends "PCM" for .wav files and the extension for others (mp3, ...).
            if not isinstance(fmt, str) or fmt.lower() not in ("pcm", "wav"):
                raise ProtocolError("wav_format must be pcm (16-bit mono samples or a WAV "
                                    "file); compressed formats are not decoded here")
        if "audio_fs" in message:
            rate = message["audio_fs"]
            if (isinstance(rate, bool) or not isinstance(rate, int)
                    or not MIN_AUDIO_FS_HZ <= rate <= MAX_AUDIO_FS_HZ):
                raise ProtocolError(f"audio_fs must be an integer from {MIN_AUDIO_FS_HZ} to "
                                    f"{MAX_AUDIO_FS_HZ}")
            self.audio_fs_hz = rate
        if "is_speaking" in message:
            if not isinstance(message["is_speaking"], bool):
                raise ProtocolError("is_speaking must be true or false")
            self.is_speaking = message["is_speaking"]


def parse_text(data: str) -> dict:
    try:
        message = json.loads(data)
    except ValueError:
        raise ProtocolError("a text message must be a JSON object") from None
    if not isinstance(message, dict):
        raise ProtocolError("a text message must be a JSON object")
    return message


def decode_audio(raw: bytes, rate_hz: int) -> np.ndarray:
    """PCM16 mono bytes (or a WAV file's bytes) -> float32 at ASR_SAMPLE_RATE_HZ."""
    channels = 1
    if raw[:4] == b"RIFF" and raw[8:12] == b"WAVE":
        try:
            with wave.open(io.BytesIO(raw)) as w:
                if w.getsampwidth() != PCM16_BYTES:
                    raise ProtocolError("a WAV file must hold 16-bit PCM")
                rate_hz, channels = w.getframerate(), w.getnchannels()
                raw = w.readframes(w.getnframes())
        except (wave.Error, EOFError) as exc:
            raise ProtocolError(f"unreadable WAV data: {exc}") from None
    samples = np.frombuffer(raw[:len(raw) // (PCM16_BYTES * channels) * PCM16_BYTES * channels],
                            np.int16).astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if rate_hz != ASR_SAMPLE_RATE_HZ and samples.size:
        import scipy.signal

        g = np.gcd(rate_hz, ASR_SAMPLE_RATE_HZ)
        samples = scipy.signal.resample_poly(samples, ASR_SAMPLE_RATE_HZ // g, rate_hz // g)
    return samples.astype(np.float32)


def error_message(code: int, msg: str) -> dict:
    # Shaped like a result too, so a FunASR page shows an empty, final text.
    return {"code": code, "msg": msg, "text": "", "is_final": True, "mode": "error"}


class RecognitionSocket(web.WebSocketResponse):
    """The WebSocket of one connection. aiohttp refuses a message over `max_msg_size` as its
    frame header arrives (before reading the payload) and closes with 1009 at once; this socket
    first says why, in the protocol's error message, like every other refusal."""

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"",
                    drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not self.closed:
            msg = (f"a message over {MAX_MESSAGE_BYTES} bytes (the limit of one message: send "
                   "audio in chunks)")
            log.info("asr websocket refused: %s", msg)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send_json(error_message(413, msg))
            message = message or b"message too big"
        return await super().close(code=code, message=message, drain=drain)


class RecognitionStream:
    """One WebSocket connection: buffers an utterance's audio, answers with its text."""

    def __init__(self, ws: web.WebSocketResponse, asr: ASREngine) -> None:
        self.ws = ws
        self.asr = asr
        self.config = StreamConfig()
        self.audio = bytearray()

    def _max_bytes(self) -> int:
        """MAX_UTTERANCE_S of PCM16 at the client's rate (and a WAV header's room, when the
        buffer is a WAV file): no more than the ASR engine takes."""
        header = WAV_HEADER_MAX_BYTES if self.audio[:4] == b"RIFF" else 0
        return int(MAX_UTTERANCE_S * self.config.audio_fs_hz) * PCM16_BYTES + header

    async def run(self) -> None:
        try:
            first = await self.ws.receive(timeout=FIRST_MESSAGE_TIMEOUT_S)
        except asyncio.TimeoutError:
            await self._refuse(WSCloseCode.POLICY_VIOLATION,
                               f"no configuration message within {FIRST_MESSAGE_TIMEOUT_S:g} s")
            return
        try:
            if first.type != WSMsgType.TEXT:
                if first.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    return
                raise ProtocolError("the first message must be the JSON configuration "
                                    "(mode, wav_name, is_speaking, ...)")
            self.config.update(parse_text(first.data))
            async for message in self.ws:
                if message.type == WSMsgType.BINARY:
                    await self._add_audio(message.data)
                elif message.type == WSMsgType.TEXT:
                    was_speaking = self.config.is_speaking
                    self.config.update(parse_text(message.data))
                    if was_speaking and not self.config.is_speaking:
                        await self._transcribe(final=True)
                else:
                    break
        except ProtocolError as exc:
            await self._refuse(WSCloseCode.UNSUPPORTED_DATA, str(exc))

    async def _add_audio(self, data: bytes) -> None:
        if len(self.audio) + len(data) > self._max_bytes():
            await self._transcribe(final=False)  # bounded: say what was heard, then go on
        self.audio += data

    async def _transcribe(self, final: bool) -> None:
        raw, self.audio = bytes(self.audio), bytearray()
        if not raw:
            return
        audio = decode_audio(raw, self.config.audio_fs_hz)
        try:
            text = (await self.asr.transcribe(audio)).strip()
        except ASRError as exc:
            log.warning("asr websocket: transcription failed: %s", exc)
            await self.ws.send_json({**error_message(503, f"transcription failed: {exc}"),
                                     "is_final": final})
            return
        if not text:
            return
        mode = {"2pass": "2pass-offline"}.get(self.config.mode, self.config.mode)
        await self.ws.send_json({"mode": mode, "text": text, "wav_name": self.config.wav_name,
                                 "is_final": final})

    async def _refuse(self, close_code: WSCloseCode, msg: str) -> None:
        log.info("asr websocket refused: %s", msg)
        if not self.ws.closed:
            await self.ws.send_json(error_message(400, msg))
            await self.ws.close(code=close_code, message=msg[:100].encode())


async def serve_recognition(request: web.Request, asr: ASREngine) -> web.WebSocketResponse:
    """Serve FunASR's WebSocket protocol on `asr` for one connection."""
    ws = RecognitionSocket(max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    await RecognitionStream(ws, asr).run()
    if not ws.closed:
        await ws.close()
    return ws
