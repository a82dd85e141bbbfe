"""`GET /audio_stream?sessionid=N`: a voice agent's speech audio in, as it is synthesised; the
avatar lip-syncs it as it arrives (one WebSocket per agent, several segments on it).

The wire protocol is a public contract (issue 23; docs/INTEGRATIONS.md), shaped after LiveKit's
avatar data stream (PCM per utterance, `lk.clear_buffer`, `lk.playback_finished` with
`playback_position` and `interrupted`):

client → server
- text `{"type": "start", "sample_rate": 24000, "channels": 1, "format": "pcm_s16le",
  "id": "..."}`: a new segment (8000-48000 Hz, 1-2 interleaved channels, mixed to mono; `id`
  optional, the server makes one). A `start` while a segment is open ends that one first.
- binary: PCM of the open segment, any size (a sample split between messages is kept).
- text `{"type": "end"}`: the segment is complete; the avatar finishes speaking it.
- text `{"type": "clear"}`: interrupt now, as `/interrupt_talk` does (the session's whole
  speech queue, the open and queued segments included).
server → client
- `{"type": "playback_started", "id"}` when the segment's first frame plays;
- `{"type": "playback_finished", "id", "position_s", "interrupted"}`: seconds actually played;
- `{"type": "error", "code", "msg"}`: the message names the field; the socket stays usable.
A socket that closes ends its open segment as if `end` had come. Segments share the session's
one speech queue, its limits (one utterance each, counted by the seconds received) and its SSE
events (`kind` "stream"). While a segment's buffer is full (MAX_BUFFERED_S) the socket is not
read: the sender is held back by TCP, memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from ..errors import ApiError
from ..session.session import Session
from ..speech.items import Utterance
from ..speech.streamed_audio import StreamClosed
from .session_lookup import query_session

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE_HZ = 8_000
MAX_SAMPLE_RATE_HZ = 48_000
MAX_CHANNELS = 2
PCM_FORMAT = "pcm_s16le"
PCM_BYTES_PER_SAMPLE = 2
PCM_FULL_SCALE = 32768.0
MAX_SEGMENT_ID_CHARS = 200
# One binary message: 10 s of 48 kHz stereo s16 (a client sending a whole answer at once).
MAX_MESSAGE_BYTES = 10 * MAX_SAMPLE_RATE_HZ * MAX_CHANNELS * PCM_BYTES_PER_SAMPLE
AUDIO_STREAM_PATH = "/audio_stream"

routes = web.RouteTableDef()


class ProtocolError(Exception):
    """Bad input on the socket: answered with an `error` message, the socket stays open."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


@dataclass
class Segment:
    id: str
    utterance: Utterance
    channels: int
    leftover: bytes = b""  # the start of a frame split between two binary messages


@dataclass
class AudioStreamConnection:
    """One socket's segments: the one open for audio, and every one not yet finished playing
    (by utterance id, for the playback messages)."""

    ws: web.WebSocketResponse
    session: Session
    open: Segment | None = None
    playing: dict[str, str] = field(default_factory=dict)  # utterance id → segment id
    next_id: int = 1

    async def send(self, message: dict) -> None:
        if not self.ws.closed:
            with contextlib.suppress(ConnectionResetError):
                await self.ws.send_json(message)

    async def on_text(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            raise ProtocolError(400, "a text message must be a JSON object") from None
        if not isinstance(message, dict):
            raise ProtocolError(400, "a text message must be a JSON object")
        kind = message.get("type")
        if kind == "start":
            await self.start(message)
        elif kind == "end":
            if self.open is None:
                raise ProtocolError(400, "field 'type': 'end' without an open segment")
            await self.end_open()
        elif kind == "clear":
            await self.clear()
        else:
            raise ProtocolError(400, f"field 'type': {kind!r} is not one of start, end, clear")

    async def start(self, message: dict) -> None:
        rate, channels = message.get("sample_rate"), message.get("channels", 1)
        if (not isinstance(rate, int) or isinstance(rate, bool)
                or not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ):
            raise ProtocolError(400, f"field 'sample_rate': an integer from {MIN_SAMPLE_RATE_HZ}"
                                     f" to {MAX_SAMPLE_RATE_HZ} (Hz), got {rate!r}")
        if (not isinstance(channels, int) or isinstance(channels, bool)
                or not 1 <= channels <= MAX_CHANNELS):
            raise ProtocolError(400, f"field 'channels': 1 or 2, got {channels!r}")
        if message.get("format", PCM_FORMAT) != PCM_FORMAT:
            raise ProtocolError(400, f"field 'format': only {PCM_FORMAT!r} "
                                     f"(16-bit little-endian PCM), got {message.get('format')!r}")
        segment_id = message.get("id")
        if segment_id is not None and (not isinstance(segment_id, str)
                                       or not 0 < len(segment_id) <= MAX_SEGMENT_ID_CHARS):
            raise ProtocolError(400, f"field 'id': a string of 1 to {MAX_SEGMENT_ID_CHARS} "
                                     "characters")
        if self.open is not None:
            await self.end_open()
        try:
            utterance = self.session.stream(rate)
        except ApiError as exc:
            raise ProtocolError(exc.status, exc.msg) from None
        if segment_id is None:
            segment_id = f"segment-{self.next_id}"
            self.next_id += 1
        self.open = Segment(segment_id, utterance, channels)
        self.playing[utterance.id] = segment_id

    async def on_binary(self, data: bytes) -> None:
        segment = self.open
        if segment is None:
            raise ProtocolError(400, "binary audio before a 'start' message (field 'type')")
        data = segment.leftover + data
        frame_bytes = PCM_BYTES_PER_SAMPLE * segment.channels
        usable = len(data) - len(data) % frame_bytes
        segment.leftover = data[usable:]
        pcm = np.frombuffer(data[:usable], "<i2").astype(np.float32) / PCM_FULL_SCALE
        if segment.channels > 1:
            pcm = pcm.reshape(-1, segment.channels).mean(axis=1)
        stream = segment.utterance.stream
        try:
            await stream.push(pcm)  # waits while the buffer is full: the socket is not read
        except StreamClosed:
            # Interrupted (here or by /interrupt_talk): the rest of this segment is dropped.
            self.open = None
            raise ProtocolError(
                409, "the segment was interrupted: send 'start' for new audio") from None

    async def end_open(self) -> None:
        segment, self.open = self.open, None
        if segment is not None:
            await segment.utterance.stream.end()

    async def clear(self) -> None:
        segment, self.open = self.open, None
        if segment is not None:
            await segment.utterance.stream.cancel()
        await self.session.interrupt()

    def on_event(self, event: dict) -> dict | None:
        """The playback message an SSE event of this socket's segments means, if any."""
        segment_id = self.playing.get(event.get("utterance_id", ""))
        if segment_id is None:
            return None
        kind = event["event"]
        if kind == "start":
            return {"type": "playback_started", "id": segment_id}
        if kind in ("end", "interrupted", "error"):
            del self.playing[event["utterance_id"]]
            return {"type": "playback_finished", "id": segment_id,
                    "position_s": event.get("played_s", 0.0), "interrupted": kind != "end"}
        return None

    async def forward_events(self, events: asyncio.Queue) -> None:
        while (event := await events.get()) is not None:
            message = self.on_event(event)
            if message is not None:
                await self.send(message)


@routes.get(AUDIO_STREAM_PATH)
async def audio_stream(request: web.Request) -> web.WebSocketResponse:
    session = query_session(request)  # 400/404 before the upgrade, as JSON
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30.0)
    await ws.prepare(request)
    connection = AudioStreamConnection(ws, session)
    events = session.events.subscribe()
    forwarder = asyncio.create_task(connection.forward_events(events))
    try:
        async for message in ws:
            try:
                if message.type == WSMsgType.TEXT:
                    await connection.on_text(message.data)
                elif message.type == WSMsgType.BINARY:
                    await connection.on_binary(message.data)
            except ProtocolError as exc:
                await connection.send({"type": "error", "code": exc.code, "msg": exc.msg})
        if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
            log.info("audio_stream sessionid=%s: a message over %d bytes; closed",
                     session.sessionid, MAX_MESSAGE_BYTES)
    finally:
        await connection.end_open()  # a closed socket ends its segment as 'end' would
        session.events.unsubscribe(events)
        forwarder.cancel()
        await asyncio.gather(forwarder, return_exceptions=True)
    return ws
