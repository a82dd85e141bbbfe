"""A fake of Microsoft Edge's online TTS WebSocket (what the edge-tts library speaks) on 127.0.0.1.

The protocol, as edge-tts 7.x sends and reads it:
- the client connects to PATH?TrustedClientToken=...&ConnectionId=...&Sec-MS-GEC=...
  &Sec-MS-GEC-Version=... and sends two text messages: `Path:speech.config` (JSON naming the
  output format, audio-24khz-48kbitrate-mono-mp3) then `Path:ssml` (the SSML: voice, prosody);
- the service answers text `Path:turn.start`, binary `Path:audio` messages (a 2-byte big-endian
  header length, the header lines, then MP3 bytes; the last one has no Content-Type and no
  data), a text `Path:audio.metadata` (SentenceBoundary), and text `Path:turn.end`.
- A voice it does not know: the service closes the socket without audio (edge-tts raises
  NoAudioReceived).

The audio is real MP3 (libmp3lame through PyAV, 24 kHz mono, 48 kbit/s, no ID3 tag, as the
service sends it) of a tone with a syllable envelope, `SECONDS_PER_CHAR` per character, sent in
pieces at `FakeEdge.real_time_factor`.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import av
import numpy as np
from aiohttp import WSMsgType, web

HOST = "127.0.0.1"
EDGE_RATE_HZ = 24000
EDGE_BITRATE_BPS = 48000
EDGE_FORMAT = "audio-24khz-48kbitrate-mono-mp3"
SECONDS_PER_CHAR = 0.06
PIECE_S = 0.1  # audio per binary message
TONE_HZ = 220.0
SSML_NS = "{http://www.w3.org/2001/10/synthesis}"
LONG_VOICE_NAME = re.compile(r"Microsoft Server Speech Text to Speech Voice \((\S+), (\S+)\)")
QUERY_KEYS = ("TrustedClientToken", "ConnectionId", "Sec-MS-GEC", "Sec-MS-GEC-Version")


@dataclass
class FakeEdge:
    """What the fake does and saw: its voices, pace, and one dict per synthesis."""

    voices: tuple[str, ...] = ("zh-CN-YunxiaNeural", "en-US-AriaNeural", "zh-CN-XiaoxiaoNeural")
    real_time_factor: float = 0.2
    requests: list[dict] = field(default_factory=list)
    closed_early: int = 0


def mp3_bytes(audio: np.ndarray, rate_hz: int = EDGE_RATE_HZ) -> bytes:
    """float32 mono audio as raw MP3 frames (no ID3 tag, no Xing header), 48 kbit/s CBR."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp3", options={"id3v2_version": "0", "write_xing": "0"}) as c:
        stream = c.add_stream("libmp3lame", rate=rate_hz, layout="mono")
        stream.bit_rate = EDGE_BITRATE_BPS
        frame = av.AudioFrame.from_ndarray(audio.astype(np.float32).reshape(1, -1), format="flt",
                                           layout="mono")
        frame.sample_rate = rate_hz
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    return out.getvalue()


def speech_tone(text: str, rate_hz: int = EDGE_RATE_HZ) -> np.ndarray:
    """`text`'s length of a TONE_HZ tone with a 4 Hz syllable envelope (float32)."""
    t = np.arange(max(int(len(text) * SECONDS_PER_CHAR * rate_hz), rate_hz // 5)) / rate_hz
    return (0.4 * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * np.sin(2 * np.pi * TONE_HZ * t)
            ).astype(np.float32)


def _text_message(request_id: str, path: str, body: str = "") -> str:
    return (f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\n"
            f"Path:{path}\r\n\r\n{body}")


def _audio_message(request_id: str, data: bytes) -> bytes:
    headers = f"X-RequestId:{request_id}\r\n" + (
        "Content-Type:audio/mpeg\r\n" if data else "") + "X-StreamId:1\r\nPath:audio\r\n"
    encoded = headers.encode()
    return len(encoded).to_bytes(2, "big") + encoded + data


def _parts(message: str) -> tuple[dict[str, str], str]:
    head, _, body = message.partition("\r\n\r\n")
    headers = dict(line.split(":", 1) for line in head.split("\r\n") if ":" in line)
    return headers, body


def _short_name(name: str | None) -> str | None:
    """"Microsoft Server Speech Text to Speech Voice (zh-CN, YunxiaNeural)" (what Edge and
    edge-tts send) -> "zh-CN-YunxiaNeural"."""
    match = LONG_VOICE_NAME.fullmatch(name or "")
    return f"{match[1]}-{match[2]}" if match else name


def _ssml(body: str) -> dict:
    """voice (short name), text and prosody of edge-tts's SSML."""
    root = ET.fromstring(body)
    voice = root.find(f"{SSML_NS}voice")
    prosody = voice.find(f"{SSML_NS}prosody") if voice is not None else None
    return {"voice": _short_name(voice.get("name")) if voice is not None else None,
            "voice_sent": voice.get("name") if voice is not None else None,
            "text": "".join(prosody.itertext()) if prosody is not None else "",
            **({k: prosody.get(k) for k in ("rate", "volume", "pitch")} if prosody is not None
               else {})}


def edge_app(fake: FakeEdge, path: str) -> web.Application:
    async def synthesize(request: web.Request) -> web.StreamResponse:
        missing = [k for k in QUERY_KEYS if not request.query.get(k)]
        if missing:
            return web.Response(status=403, text=f"missing {', '.join(missing)}")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seen: dict = {"query": dict(request.query), "path": request.path,
                      "origin": request.headers.get("Origin", "")}
        # The answer is sent while the socket is read, as the service does: a client that
        # closes mid-answer (an interruption) is seen at once.
        answer: asyncio.Task | None = None
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                headers, body = _parts(message.data)
                if headers.get("Path") == "speech.config":
                    config = json.loads(body)
                    seen["format"] = config["context"]["synthesis"]["audio"]["outputFormat"]
                elif headers.get("Path") == "ssml":
                    seen.update(_ssml(body))
                    fake.requests.append(seen)
                    answer = asyncio.create_task(_answer(
                        ws, fake, headers.get("X-RequestId", uuid.uuid4().hex), seen))
                    seen = {**seen}
        finally:
            if answer is not None and not answer.done():
                answer.cancel()
                fake.closed_early += 1
            await asyncio.gather(*([answer] if answer else []), return_exceptions=True)
        return ws

    app = web.Application()
    app.router.add_get(path, synthesize)
    return app


async def _answer(ws: web.WebSocketResponse, fake: FakeEdge, request_id: str, seen: dict) -> None:
    if seen.get("format") != EDGE_FORMAT or seen.get("voice") not in fake.voices:
        await ws.close()  # the service ends the turn without audio
        return
    await ws.send_str(_text_message(request_id, "turn.start", '{"context":{}}'))
    data = mp3_bytes(speech_tone(seen["text"]))
    step = int(PIECE_S * EDGE_BITRATE_BPS / 8)
    for start in range(0, len(data), step):
        if start:
            await asyncio.sleep(PIECE_S * fake.real_time_factor)
        await ws.send_bytes(_audio_message(request_id, data[start : start + step]))
    await ws.send_bytes(_audio_message(request_id, b""))
    metadata = {"Metadata": [{"Type": "SentenceBoundary", "Data": {
        "Offset": 1000000, "Duration": len(data) * 8 * 10_000_000 // EDGE_BITRATE_BPS,
        "text": {"Text": seen["text"], "Length": len(seen["text"]), "BoundaryType":
                 "SentenceBoundary"}}}]}
    await ws.send_str(_text_message(request_id, "audio.metadata", json.dumps(metadata)))
    await ws.send_str(_text_message(request_id, "turn.end", '{"context":{}}'))


@asynccontextmanager
async def run_fake_edge_server(fake: FakeEdge, path: str = "/consumer/speech/synthesize/"
                               "readaloud/edge/v1") -> AsyncIterator[str]:
    """The ws:// URL of a fake edge endpoint on 127.0.0.1 (what --tts-server takes)."""
    runner = web.AppRunner(edge_app(fake, path), shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    try:
        yield f"ws://{HOST}:{runner.addresses[0][1]}{path}"
    finally:
        await runner.cleanup()
