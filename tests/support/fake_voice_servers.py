"""Fake voice-cloning servers on 127.0.0.1 that speak the real protocols, for tests and the bench.

Each checks the fields its real server requires (names, types, reference audio and transcript
present) and answers 400/422 like it when one is wrong, and streams audio the way it does:

- CosyVoice FastAPI (`/inference_zero_shot`, `/inference_cross_lingual`, `/inference_sft`,
  `/inference_instruct2`, `/inference_instruct`): multipart form in, raw int16 PCM at 24 kHz out.
- GPT-SoVITS api_v2 (`POST /tts`, JSON): a WAV header (size 0, 32 kHz) then raw int16 PCM.
- Fish-Speech (`POST /v1/tts`, MessagePack or JSON with base64 audio): WAV header (44.1 kHz),
  then PCM; streaming only with format wav.
- OpenAI (`POST /v1/audio/speech`, JSON): raw int16 PCM at 24 kHz (`pcm`) or WAV.
- vLLM-Omni (`POST /v1/audio/speech`, its fields; Base task clones a base64 `ref_audio`): WAV
  (its default) at the model's rate (`FakeVoice.omni_rate_hz`, 44.1 kHz) or raw PCM.
- Coqui xtts-streaming-server (`/clone_speaker` multipart -> latents JSON; `/tts_stream` JSON ->
  WAV header at 24 kHz then PCM).
- Tencent Cloud (`POST /stream`, JSON, HMAC-SHA1 `Authorization`): raw PCM at its SampleRate,
  errors as HTTP 200 JSON `{"Response": {"Error": ...}}`.
- Azure Speech REST (`POST /cognitiveservices/v1`, SSML, Ocp-Apim-Subscription-Key
  `AZURE_KEY`, X-Microsoft-OutputFormat riff-/raw-16/24khz-16bit-mono-pcm).

The "cloned" voice is the reference clip itself, resampled and repeated to the text's length
(so a test can hear that the reference reached the server); a server-side voice id is a tone.
Every reference clip received is described in `FakeVoice.references` (rate, channels, seconds,
dominant tone).
`FakeVoice.fail` makes the next answers fail: "status" (500), "html" (200 text/html), "cut"
(the stream stops half way, connection closed), "garbage" (a RIFF header that is not PCM),
"hang" (the request is read, then nothing is answered, not even headers, until the client goes),
"trickle" (headers, then 2 bytes every `trickle_every_s`, for ever). `closed_early` counts the
answers whose client went away before their end.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import time
import wave
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgpack
import numpy as np
from aiohttp import web
from scipy.signal import resample_poly

from orchestrator.media.wav_file import wav_bytes

HOST = "127.0.0.1"
SECONDS_PER_CHAR = 0.06  # the audio answered: about normal speech for the text's length
CHUNK_S = 0.1  # audio per streamed chunk
HANG_POLL_S = 0.05  # how often a hanging answer looks whether its client has gone


@dataclass
class FakeVoice:
    """What one fake server does: its timing, failures, and the requests it saw."""

    first_chunk_delay_s: float = 0.05  # "thinking" before the first chunk
    real_time_factor: float = 0.2  # synthesis time per second of audio, for later chunks
    fail: str = ""
    trickle_every_s: float = 25.0
    requests: list[dict] = field(default_factory=list)
    closed_early: int = 0
    server_voices: tuple[str, ...] = ("alloy", "中文女", "speaker1", "vivian",
                                      "zh-CN-XiaoxiaoMultilingualNeural", "en-US-AriaNeural")
    # What each reference clip received looked like (reference_facts), in order.
    references: list[dict] = field(default_factory=list)
    omni_rate_hz: int = 44100  # vLLM-Omni's model rate (Qwen3-TTS 24k, Fish S2 44.1k...)


def _wav_header(rate_hz: int) -> bytes:
    """The header a streaming server sends first: 16-bit mono, data size 0 (as api_v2's
    `wave_header_chunk` and fish-speech's `wav_chunk_header` write it)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(b"")
    return buffer.getvalue()


def _decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError("16-bit WAV expected")
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768
        return pcm.reshape(-1, wav.getnchannels()).mean(axis=1), wav.getframerate()


def _wav_rate(data: object) -> int:
    """The rate a WAV clip says it has (0: not a WAV)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:  # type: ignore[arg-type]
            return wav.getframerate()
    except (wave.Error, EOFError, TypeError):
        return 0


def reference_facts(data: bytes) -> dict:
    """What a reference clip a server received is: rate, channels, seconds, its tone (Hz)."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, channels)
    mono = pcm.mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(mono.size)))
    return {"rate_hz": rate, "channels": channels, "seconds": mono.size / rate,
            "tone_hz": float(np.fft.rfftfreq(mono.size, 1 / rate)[spectrum.argmax()])}


def cloned_audio(text: str, rate_hz: int, reference: bytes | None) -> np.ndarray:
    """float32 audio for `text`: the reference clip repeated, or a 200 Hz tone with a syllable
    envelope for a server-side voice."""
    samples = max(int(len(text) * SECONDS_PER_CHAR * rate_hz), rate_hz // 5)
    if reference is not None:
        clip, clip_rate = _decode_wav(reference)
        clip = resample_poly(clip, rate_hz, clip_rate).astype(np.float32)
        return np.resize(clip, samples)
    t = np.arange(samples) / rate_hz
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.4 * envelope * np.sin(2 * np.pi * 200 * t)).astype(np.float32)


async def stream_audio(request: web.Request, fake: FakeVoice, audio: np.ndarray, rate_hz: int,
                       header: bytes = b"", content_type: str = "application/octet-stream",
                       headers: dict | None = None) -> web.StreamResponse:
    """Streams `audio` as int16 PCM (after `header`) in CHUNK_S pieces at the fake's pace."""
    if fake.fail == "status":
        return web.json_response({"message": "tts failed", "Exception": "CUDA out of memory"},
                                 status=500)
    if fake.fail == "html":
        return web.Response(text="<html>proxy error</html>", content_type="text/html")
    if fake.fail == "hang":  # until the client closes its connection
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(HANG_POLL_S)
        fake.closed_early += 1
        return web.Response(status=499)
    response = web.StreamResponse(headers={"Content-Type": content_type, **(headers or {})})
    await response.prepare(request)
    if fake.fail == "trickle":
        try:
            while True:
                await response.write(header[:2] if header else b"\x00\x00")
                header = header[2:]
                await asyncio.sleep(fake.trickle_every_s)
        except ConnectionError:  # the client went away
            fake.closed_early += 1
            return response
    await asyncio.sleep(fake.first_chunk_delay_s)
    if fake.fail == "garbage":
        await response.write(b"RIFF\x00\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\x03\x00\x02\x00"
                             + b"\x00" * 12 + b"data\x00\x00\x00\x00" + b"\x00" * 64)
        return response
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(CHUNK_S * rate_hz) * 2
    if header:
        await response.write(header)
    for start in range(0, len(pcm), step):
        if fake.fail == "cut" and start >= len(pcm) // 2:
            request.transport.close()  # mid-stream: the client sees the connection end
            return response
        if start:
            await asyncio.sleep(CHUNK_S * fake.real_time_factor)
        await response.write(pcm[start : start + step])
    await response.write_eof()
    return response


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"message": message}, status=status)


# --- CosyVoice (runtime/python/fastapi/server.py) -----------------------------------------
COSYVOICE_RATE_HZ = 24000
COSYVOICE_PROMPT_RATE_HZ = 16000  # load_wav(prompt_wav.file, 16000) asserts at least this
COSYVOICE_ROUTES = {  # route -> required form fields (prompt_wav a file)
    "/inference_zero_shot": ("tts_text", "prompt_text", "prompt_wav"),
    "/inference_cross_lingual": ("tts_text", "prompt_wav"),
    "/inference_sft": ("tts_text", "spk_id"),
    "/inference_instruct": ("tts_text", "spk_id", "instruct_text"),
    "/inference_instruct2": ("tts_text", "instruct_text", "prompt_wav"),
}


def cosyvoice_app(fake: FakeVoice) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        route = request.path
        if request.content_type not in ("multipart/form-data",
                                        "application/x-www-form-urlencoded"):
            return _bad("Field required (form)", 422)  # FastAPI's Form() takes either
        form: dict[str, object] = {}
        for key, value in (await request.post()).items():
            form[key] = value.file.read() if isinstance(value, web.FileField) else value
        fake.requests.append({"route": route, **{k: v for k, v in form.items()
                                                 if not isinstance(v, bytes)},
                              "prompt_wav_bytes": len(form.get("prompt_wav", b"")),
                              "prompt_wav_rate_hz": _wav_rate(form.get("prompt_wav"))})
        missing = [f for f in COSYVOICE_ROUTES[route] if f not in form]
        if missing:  # FastAPI's answer to a missing Form()/File()
            return web.json_response({"detail": [{"type": "missing", "loc": ["body", m]}
                                                 for m in missing]}, status=422)
        if "prompt_wav" in form and not isinstance(form["prompt_wav"], bytes):
            return _bad("prompt_wav must be a file", 422)
        if "spk_id" in form and form["spk_id"] not in fake.server_voices:
            return _bad(f"unknown speaker {form['spk_id']}", 500)
        reference = form.get("prompt_wav") if isinstance(form.get("prompt_wav"), bytes) else None
        if reference is not None and _wav_rate(reference):
            fake.references.append(reference_facts(reference))
        if reference is not None and _wav_rate(reference) < COSYVOICE_PROMPT_RATE_HZ:
            # load_wav(prompt_wav.file, 16000)'s assert: an Internal Server Error
            return web.Response(status=500, text="Internal Server Error")
        audio = cloned_audio(str(form["tts_text"]), COSYVOICE_RATE_HZ, reference)
        return await stream_audio(request, fake, audio, COSYVOICE_RATE_HZ)

    app = web.Application()
    for route in COSYVOICE_ROUTES:
        app.router.add_route("GET", route, handle)
        app.router.add_route("POST", route, handle)
    return app


# --- GPT-SoVITS (api_v2.py) ------------------------------------------------------------------
GPT_SOVITS_RATE_HZ = 32000
GPT_SOVITS_LANGUAGES = ("auto", "zh", "en", "ja", "ko", "yue", "all_zh", "all_ja")


def gpt_sovits_app(fake: FakeVoice) -> web.Application:
    async def tts(request: web.Request) -> web.StreamResponse:
        try:
            req = await request.json()
        except ValueError:
            return web.json_response({"detail": "JSON decode error"}, status=422)
        fake.requests.append(dict(req))
        # api_v2.check_params, in its order
        ref = req.get("ref_audio_path")
        if ref in (None, ""):
            return _bad("ref_audio_path is required")
        if req.get("text") in (None, ""):
            return _bad("text is required")
        for key in ("text_lang", "prompt_lang"):
            if req.get(key) in (None, ""):
                return _bad(f"{key} is required")
            if str(req[key]).lower() not in GPT_SOVITS_LANGUAGES:
                return _bad(f"{key}: {req[key]} is not supported in version v2")
        if req.get("media_type", "wav") not in ("wav", "raw", "ogg", "aac"):
            return _bad(f"media_type: {req['media_type']} is not supported")
        if not isinstance(req.get("prompt_text", ""), str):
            return web.json_response({"detail": "prompt_text: str expected"}, status=422)
        if not isinstance(req.get("speed_factor", 1.0), (int, float)):
            return web.json_response({"detail": "speed_factor: float expected"}, status=422)
        try:  # the reference is a file on *this* machine
            with open(ref, "rb") as file:
                reference = file.read()
            fake.references.append(reference_facts(reference))
        except OSError as exc:
            if ref not in fake.server_voices:  # api_v2 quotes the exception, path and all
                return web.json_response({"message": "tts failed", "Exception": str(exc)},
                                         status=400)
            reference = None
        audio = cloned_audio(req["text"], GPT_SOVITS_RATE_HZ, reference)
        streaming = req.get("streaming_mode", False) not in (False, 0)
        if not streaming or req.get("media_type", "wav") != "wav":
            return _bad("this fake streams WAV only")
        return await stream_audio(request, fake, audio, GPT_SOVITS_RATE_HZ,
                                  header=_wav_header(GPT_SOVITS_RATE_HZ), content_type="audio/wav")

    app = web.Application()
    app.router.add_post("/tts", tts)
    return app


# --- Fish-Speech (tools/server/views.py, fish_speech/utils/schema.py) ---------------------------
FISH_RATE_HZ = 44100


def fish_app(fake: FakeVoice) -> web.Application:
    async def tts(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            if request.content_type == "application/msgpack":
                req = msgpack.unpackb(body, raw=False)
            elif request.content_type == "application/json":
                req = json.loads(body)
            else:
                return _bad(f"unsupported content type {request.content_type}", 415)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return _bad("body is not MessagePack/JSON")
        if not isinstance(req, dict) or not isinstance(req.get("text"), str):
            return web.json_response({"detail": "text: str required"}, status=422)
        references = req.get("references", [])
        if not isinstance(references, list):
            return web.json_response({"detail": "references: list expected"}, status=422)
        audios = []
        for ref in references:
            if not isinstance(ref, dict) or "audio" not in ref or not isinstance(ref.get("text"), str):
                return web.json_response({"detail": "references[]: audio and text required"},
                                         status=422)
            audio = ref["audio"]
            if isinstance(audio, str):  # JSON: base64 (the schema's validator)
                audio = base64.b64decode(audio)
            audios.append(audio)
            if _wav_rate(audio):
                fake.references.append(reference_facts(audio))
        fake.requests.append({**{k: v for k, v in req.items() if k != "references"},
                              "references": [{"text": r["text"], "audio_bytes": len(a),
                                              "rate_hz": _wav_rate(a)}
                                             for r, a in zip(references, audios)],
                              "content_type": request.content_type})
        fmt = req.get("format", "wav")
        if fmt not in ("wav", "pcm", "mp3", "opus"):
            return web.json_response({"detail": "format: wav|pcm|mp3|opus"}, status=422)
        if req.get("streaming") and fmt != "wav":
            return _bad("Streaming only supports WAV format")
        reference_id = req.get("reference_id")
        if reference_id is not None and reference_id not in fake.server_voices:
            return _bad(f"reference id {reference_id} not found", 404)
        audio = cloned_audio(req["text"], FISH_RATE_HZ, audios[0] if audios else None)
        return await stream_audio(request, fake, audio, FISH_RATE_HZ,
                                  header=_wav_header(FISH_RATE_HZ), content_type="audio/wav")

    app = web.Application()
    app.router.add_post("/v1/tts", tts)
    return app


# --- OpenAI /v1/audio/speech -------------------------------------------------------------------
OPENAI_RATE_HZ = 24000


def openai_app(fake: FakeVoice) -> web.Application:
    async def speech(request: web.Request) -> web.StreamResponse:
        try:
            req = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
        fake.requests.append({**req, "authorization": request.headers.get("Authorization", "")})
        for key in ("model", "input", "voice"):
            if not isinstance(req.get(key), str) or not req[key]:
                return web.json_response({"error": {"message": f"'{key}' is required",
                                                    "param": key}}, status=400)
        if req["voice"] not in fake.server_voices:
            return web.json_response({"error": {"message": f"voice {req['voice']} not found"}},
                                     status=400)
        speed = req.get("speed", 1.0)
        if not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
            return web.json_response({"error": {"message": "speed out of range"}}, status=400)
        fmt = req.get("response_format", "mp3")
        audio = cloned_audio(req["input"], OPENAI_RATE_HZ, None)
        if fmt == "pcm":
            return await stream_audio(request, fake, audio, OPENAI_RATE_HZ)
        if fmt == "wav":
            return await stream_audio(request, fake, audio, OPENAI_RATE_HZ,
                                      header=_wav_header(OPENAI_RATE_HZ), content_type="audio/wav")
        return web.json_response({"error": {"message": f"this fake has no {fmt}"}}, status=400)

    app = web.Application()
    app.router.add_post("/v1/audio/speech", speech)
    return app


# --- vLLM-Omni /v1/audio/speech (vllm_omni/entrypoints/openai/serving_speech.py) -------------
OMNI_TASK_TYPES = ("CustomVoice", "VoiceDesign", "Base")
OMNI_FORMATS = ("wav", "flac", "pcm", "mp3", "opus", "aac")


def _omni_error(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "BadRequestError",
                                        "param": None, "code": status}}, status=status)


def omni_app(fake: FakeVoice) -> web.Application:
    async def speech(request: web.Request) -> web.StreamResponse:
        try:
            req = await request.json()
        except ValueError:
            return _omni_error("invalid JSON")
        fake.requests.append({k: (v[:40] if k == "ref_audio" else v) for k, v in req.items()})
        if not isinstance(req.get("input"), str) or not req["input"].strip():
            return _omni_error("Input text cannot be empty")
        fmt = req.get("response_format", "wav")
        task = req.get("task_type", "CustomVoice")
        if fmt not in OMNI_FORMATS or task not in OMNI_TASK_TYPES:
            return web.json_response({"detail": [{"type": "literal_error"}]}, status=422)
        reference = None
        if task == "Base":
            ref = req.get("ref_audio")
            if not isinstance(ref, str) or not ref.startswith("data:audio/") or \
                    ";base64," not in ref:
                return _omni_error("Base task requires ref_audio (URL or base64 data URL)")
            reference = base64.b64decode(ref.split(";base64,", 1)[1])
            fake.references.append(reference_facts(reference))
        elif req.get("voice", "vivian") not in fake.server_voices:
            return _omni_error(f"Invalid speaker '{req.get('voice')}'")
        rate = fake.omni_rate_hz
        audio = cloned_audio(req["input"], rate, reference)
        if fmt == "pcm":
            return await stream_audio(request, fake, audio, rate)
        if fmt != "wav":
            return _omni_error(f"this fake has no {fmt}")
        # soundfile writes the whole file: a header with its real sizes, then the samples
        return await stream_audio(request, fake, audio, rate, content_type="audio/wav",
                                  header=wav_bytes(audio, rate)[:44])

    app = web.Application()
    app.router.add_post("/v1/audio/speech", speech)
    return app


# --- Coqui xtts-streaming-server (server/main.py) --------------------------------------------
XTTS_RATE_HZ = 24000
XTTS_LATENT_ROWS, XTTS_LATENT_WIDTH, XTTS_EMBEDDING_SIZE = 32, 1024, 512
XTTS_LANGUAGES = ("en", "de", "fr", "es", "it", "pl", "pt", "tr", "ru", "nl", "cs", "ar", "zh",
                  "ja", "hu", "ko")


def xtts_app(fake: FakeVoice) -> web.Application:
    clips: list[bytes] = []  # the speakers it cloned: speaker_embedding[0] is the index

    async def clone_speaker(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("wav_file")
        if not isinstance(upload, web.FileField):
            return web.json_response({"detail": [{"type": "missing",
                                                  "loc": ["body", "wav_file"]}]}, status=422)
        data = upload.file.read()
        fake.requests.append({"route": "/clone_speaker", "bytes": len(data)})
        fake.references.append(reference_facts(data))
        clips.append(data)
        embedding = [float(len(clips) - 1)] + [0.01] * (XTTS_EMBEDDING_SIZE - 1)
        latent = [[0.02] * XTTS_LATENT_WIDTH for _ in range(XTTS_LATENT_ROWS)]
        return web.json_response({"gpt_cond_latent": latent, "speaker_embedding": embedding})

    async def tts_stream(request: web.Request) -> web.StreamResponse:
        try:
            req = await request.json()
        except ValueError:
            return web.json_response({"detail": "JSON decode error"}, status=422)
        fake.requests.append({"route": "/tts_stream", **{k: v for k, v in req.items() if k not in
                                                         ("gpt_cond_latent", "speaker_embedding")}})
        embedding, latent = req.get("speaker_embedding"), req.get("gpt_cond_latent")
        if (not isinstance(embedding, list) or not embedding
                or not isinstance(latent, list) or not latent
                or any(not isinstance(row, list) or len(row) != XTTS_LATENT_WIDTH for row in latent)
                or not isinstance(req.get("text"), str)
                or req.get("language") not in XTTS_LANGUAGES
                or not isinstance(req.get("add_wav_header", True), bool)
                or not isinstance(req.get("stream_chunk_size", "20"), str)):
            return web.json_response({"detail": [{"type": "validation_error"}]}, status=422)
        index = int(embedding[0])
        reference = clips[index] if 0 <= index < len(clips) else None
        audio = cloned_audio(req["text"], XTTS_RATE_HZ, reference)
        header = _wav_header(XTTS_RATE_HZ) if req.get("add_wav_header", True) else b""
        return await stream_audio(request, fake, audio, XTTS_RATE_HZ, header=header,
                                  content_type="audio/wav")

    app = web.Application()
    app.router.add_post("/clone_speaker", clone_speaker)
    app.router.add_post("/tts_stream", tts_stream)
    return app


# --- Azure Speech REST (POST /cognitiveservices/v1) ----------------------------------------
AZURE_FORMATS = {"riff-24khz-16bit-mono-pcm": (24000, True), "riff-16khz-16bit-mono-pcm":
                 (16000, True), "raw-16khz-16bit-mono-pcm": (16000, False),
                 "raw-24khz-16bit-mono-pcm": (24000, False)}
AZURE_KEY = "azure-test-key"
SSML_NS = "{http://www.w3.org/2001/10/synthesis}"
MSTTS_NS = "{https://www.w3.org/2001/mstts}"


def azure_app(fake: FakeVoice) -> web.Application:
    async def synthesize(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Ocp-Apim-Subscription-Key") != AZURE_KEY:
            return web.Response(status=401)  # Azure: 401 with an empty body
        fmt = request.headers.get("X-Microsoft-OutputFormat", "")
        if request.content_type != "application/ssml+xml" or fmt not in AZURE_FORMATS:
            return web.Response(status=400, text="Unsupported output format or content type")
        body = (await request.read()).decode("utf-8", errors="replace")
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return web.Response(status=400, text="SSML is not well-formed")
        voice = root.find(f"{SSML_NS}voice")
        if root.tag != f"{SSML_NS}speak" or voice is None:
            return web.Response(status=400, text="SSML needs speak and voice")
        prosody = voice.find(f".//{SSML_NS}prosody")
        style = voice.find(f"{MSTTS_NS}express-as")
        seen = {"voice": voice.get("name"), "text": "".join(voice.itertext()), "format": fmt,
                "lang": root.get("{http://www.w3.org/XML/1998/namespace}lang"),
                "prosody": dict(prosody.attrib) if prosody is not None else {},
                "style": style.get("style") if style is not None else None}
        fake.requests.append(seen)
        if seen["voice"] not in fake.server_voices:
            return web.Response(status=400, text=f"voice {seen['voice']} not found")
        rate, riff = AZURE_FORMATS[fmt]
        audio = cloned_audio(seen["text"], rate, None)
        return await stream_audio(request, fake, audio, rate,
                                  header=_wav_header(rate) if riff else b"",
                                  content_type="audio/x-wav" if riff else "audio/basic")

    app = web.Application()
    app.router.add_post("/cognitiveservices/v1", synthesize)
    return app


# --- Tencent Cloud streaming TTS (POST /stream, Action TextToStreamAudio) -------------------
TENCENT_APP_ID = 1250000000
TENCENT_SECRET_ID = "AKIDtest"
TENCENT_SECRET_KEY = "tencent-test-key"
TENCENT_VOICES = (101001, 101002, 1001)
TENCENT_SIGNED_HOST, TENCENT_SIGNED_PATH = "tts.cloud.tencent.com", "/stream"


def _tencent_error(code: str, message: str) -> web.Response:
    """Its errors: HTTP 200 with a JSON body (LiveTalking reads the first chunk as JSON)."""
    return web.json_response({"Response": {"Error": {"Code": code, "Message": message},
                                           "RequestId": "fake"}})


def tencent_app(fake: FakeVoice) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        try:
            req = json.loads(await request.read())
        except ValueError:
            return _tencent_error("InvalidParameter", "body is not JSON")
        fake.requests.append({**req, "authorization": request.headers.get("Authorization", "")})
        signed = "&".join(f"{k}={req[k]}" for k in sorted(req))
        expected = base64.b64encode(hmac.new(
            TENCENT_SECRET_KEY.encode(), f"POST{TENCENT_SIGNED_HOST}{TENCENT_SIGNED_PATH}?{signed}"
            .encode(), hashlib.sha1).digest()).decode()
        now = time.time()
        if req.get("SecretId") != TENCENT_SECRET_ID or request.headers.get(
                "Authorization") != expected:
            return _tencent_error("AuthFailure.SignatureFailure", "The provided credentials "
                                  "could not be validated.")
        if not (isinstance(req.get("Timestamp"), int) and abs(req["Timestamp"] - now) < 300
                and isinstance(req.get("Expired"), int) and req["Expired"] > now):
            return _tencent_error("AuthFailure.SignatureExpire", "Signature expired.")
        if (req.get("Action") != "TextToStreamAudio" or req.get("AppId") != TENCENT_APP_ID
                or req.get("Codec") != "pcm" or req.get("SampleRate") not in (8000, 16000)
                or not isinstance(req.get("Text"), str) or not req.get("SessionId")):
            return _tencent_error("InvalidParameter", "bad parameters")
        if req.get("VoiceType") not in TENCENT_VOICES:
            return _tencent_error("InvalidParameterValue.VoiceType", "VoiceType not found")
        rate = req["SampleRate"]
        return await stream_audio(request, fake, cloned_audio(req["Text"], rate, None), rate)

    app = web.Application()
    app.router.add_post("/stream", stream)
    return app


APPS = {"cosyvoice": cosyvoice_app, "gpt-sovits": gpt_sovits_app, "fishtts": fish_app,
        "openai": openai_app, "omnitts": omni_app, "xtts": xtts_app, "azuretts": azure_app,
        "tencent": tencent_app}


@asynccontextmanager
async def run_fake_voice_server(engine: str, fake: FakeVoice, port: int = 0) -> AsyncIterator[str]:
    """The base URL of a fake `engine` server (an --tts name) on 127.0.0.1."""
    runner = web.AppRunner(APPS[engine](fake), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    await site.start()
    try:
        yield f"http://{HOST}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def tone_wav(seconds: float = 2.0, rate_hz: int = 16000, freq_hz: float = 330.0) -> bytes:
    """A WAV clip to register as a reference voice."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return wav_bytes(0.5 * np.sin(2 * np.pi * freq_hz * t), rate_hz)
