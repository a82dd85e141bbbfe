"""HTTP API for reference voices (voice-cloning TTS): register a clip with its transcript, list.

POST /voices (multipart: `name`, `text`, `file`) decodes the clip (anything /humanaudio takes)
at its own rate (at most 48 kHz), checks its length and its level (a silent or near-silent clip,
or a stereo one whose channels cancel when mixed to mono, is a 400 naming the file) and stores
it in data/voices/ as NAME.wav with NAME.txt; `refaudio` or
`tts.ref_file` NAME then clones that voice with `--tts cosyvoice|gpt-sovits|fishtts|xtts|omnitts`
(each sent it at the rate its server reads: tts/reference_voices.py).
GET /voices lists them.
"""

from __future__ import annotations

import asyncio
import wave

from aiohttp import web

from ..errors import ApiError
from ..media.audio_decoding import MAX_UPLOAD_BYTES, decode_clip
from ..tts.reference_voices import (
    MAX_REFERENCE_RATE_HZ,
    MAX_REFERENCE_S,
    MAX_TRANSCRIPT_CHARS,
    MIN_REFERENCE_S,
    VOICE_NAME,
    level_problem,
    valid_name,
)
from .access import MULTIPART_CONTENT_TYPE, takes
from .request_context import ok, services_of
from .validation import FormReader

MAX_NAME_BYTES = 256
MAX_TEXT_BYTES = 4 * MAX_TRANSCRIPT_CHARS  # UTF-8: up to 4 bytes a character
MAX_SHOWN_FILENAME_CHARS = 80  # of the uploaded file's name, in an error

routes = web.RouteTableDef()


@routes.post("/voices")
@takes(MULTIPART_CONTENT_TYPE)
async def register_voice(request: web.Request) -> web.Response:
    services = services_of(request)
    if not request.content_type.startswith("multipart/"):
        raise ApiError.bad_request("POST /voices takes multipart/form-data with 'name', 'text' "
                                   "and 'file'")
    fields: dict[str, str] = {}
    data: bytes | None = None
    filename = ""
    reader = FormReader(request, MAX_UPLOAD_BYTES)
    async for part in reader.parts():
        if part.name == "file":
            if data is not None:
                raise ApiError.bad_request("field 'file' is given twice")
            data = await reader.read(part, MAX_UPLOAD_BYTES)
            filename = part.filename or ""
        elif part.name in ("name", "text"):
            limit = MAX_NAME_BYTES if part.name == "name" else MAX_TEXT_BYTES
            fields[part.name] = await reader.text(part, limit)
        else:
            await reader.skip(part)
    name = fields.get("name")
    if name is None:
        raise ApiError.bad_request("missing field 'name'")
    if not valid_name(name):
        raise ApiError.bad_request(f"field 'name' must match {VOICE_NAME.pattern} (letters, "
                                   f"digits, '_', '-', '.'), got {name[:80]!r}")
    text = fields.get("text", "").strip()
    if len(text) > MAX_TRANSCRIPT_CHARS:
        raise ApiError(413, f"field 'text' is longer than {MAX_TRANSCRIPT_CHARS} characters")
    if data is None:
        raise ApiError.bad_request("missing field 'file'")
    loop = asyncio.get_running_loop()
    clip = await loop.run_in_executor(None, decode_clip, data, "file", MAX_REFERENCE_RATE_HZ,
                                      MAX_REFERENCE_S)
    seconds = clip.duration_s
    if not MIN_REFERENCE_S <= seconds <= MAX_REFERENCE_S:
        raise ApiError.bad_request(f"field 'file' has {seconds:.1f} s of audio; a reference "
                                   f"voice has {MIN_REFERENCE_S:g} to {MAX_REFERENCE_S:g} s")
    problem = await loop.run_in_executor(None, level_problem, clip.audio, clip.rate_hz,
                                         clip.channel_rms)
    if problem:
        shown = filename[:MAX_SHOWN_FILENAME_CHARS]
        raise ApiError.bad_request(f"field 'file' ({shown!r}) {problem}" if shown else
                                   f"field 'file' {problem}")
    voice = await loop.run_in_executor(None, services.voices.add, name, clip.audio, text,
                                       clip.rate_hz)
    return ok({"name": voice.name, "text": voice.text, "seconds": round(seconds, 3)})


@routes.get("/voices")
async def list_voices(request: web.Request) -> web.Response:
    services = services_of(request)
    voices = await asyncio.get_running_loop().run_in_executor(None, _catalog, services.voices)
    return ok({"voices": voices, "engine": services.settings.tts})


def _catalog(store) -> list[dict]:
    out = []
    for name in store.names():
        voice = store.get(name)
        if voice is not None:
            try:
                seconds = round(voice.duration_s, 3)
            except (OSError, EOFError, wave.Error):  # a file replaced by hand, not WAV
                continue
            out.append({"name": name, "text": voice.text, "seconds": seconds})
    return out
