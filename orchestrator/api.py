"""HTTP handlers of the contract (../shared/spec/API.md): parse, validate, hand to the session."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from .audio_input import MAX_UPLOAD_BYTES, decode_audio
from .errors import ApiError
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .roster import MAIN
from .services import SERVICES_KEY, Services
from .session import Session, SessionOptions
from .speech import MAX_TEXT_CHARS
from .validation import choice, field, form_parts, json_config, read_json_object, read_limited

log = logging.getLogger(__name__)

SSE_KEEPALIVE_S = 15.0

routes = web.RouteTableDef()


def ok(data=None) -> web.Response:
    return web.json_response({"code": 0, "msg": "ok", "data": data})


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES_KEY]


STATIC_DIR = Path(__file__).parent / "static"


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


routes.static("/static", STATIC_DIR)


@routes.post("/offer")
async def offer(request: web.Request) -> web.Response:
    services = services_of(request)
    settings = services.settings
    body = await read_json_object(request)
    choice(body, "type", ("offer",))
    sdp = field(body, "sdp", str)
    if "m=" not in sdp:
        raise ApiError.bad_request("field 'sdp' is not an SDP offer (no media section)")
    options = SessionOptions(
        avatar=field(body, "avatar", str, settings.avatar_id),
        refaudio=field(body, "refaudio", str, settings.ref_file),
        reftext=field(body, "reftext", str, settings.ref_text),
        llmid=field(body, "llmid", str, settings.llmid),
        custom_config=json_config(body, "custom_config", settings.customvideo_config, list),
        multiavatar_config=json_config(body, "multiavatar_config", settings.multiavatar_config, dict),
    )
    await services.check_voice(options.refaudio, "refaudio")
    members = await services.members(options.avatar, options.multiavatar_config)
    main = members[MAIN].avatar
    clips = await services.clips(options.custom_config, main.width, main.height)
    chat = await services.chat_agent(options.llmid, "llmid")

    sessionid = services.registry.reserve()
    pc = RTCPeerConnection(services.rtc_configuration)
    session = Session(sessionid, pc, members, options, services.tts, services.lipsync_models, chat, clips,
                      services.metrics.observe)
    try:
        answer_sdp = await _negotiate(session, sdp)
    except BaseException:
        services.registry.release(sessionid)
        await session.close()
        raise
    services.registry.add(session)
    _end_with_peer(services, session)
    log.info("session opened sessionid=%s avatar=%s", sessionid, options.avatar)
    return web.json_response(
        {"type": "answer", "sdp": answer_sdp, "sessionid": sessionid}
    )


async def _negotiate(session: Session, sdp: str) -> str:
    pc = session.pc
    pc.addTrack(session.audio)
    pc.addTrack(session.video)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except (ValueError, KeyError, AttributeError, IndexError) as exc:
        raise ApiError.bad_request(f"field 'sdp' could not be negotiated: {exc}") from None
    await pc.setLocalDescription(await pc.createAnswer())
    return pc.localDescription.sdp


def _end_with_peer(services: Services, session: Session) -> None:
    @session.pc.on("connectionstatechange")
    async def on_state() -> None:
        if session.pc.connectionState in ("failed", "closed"):
            await session.close()
            services.registry.release(session.sessionid)


@routes.post("/human")
async def human(request: web.Request) -> web.Response:
    services = services_of(request)
    body = await read_json_object(request)
    session = services.registry.get(field(body, "sessionid", int))
    kind = choice(body, "type", ("echo", "chat"))
    text = field(body, "text", str)
    if not text.strip():
        raise ApiError.bad_request("field 'text' is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise ApiError(413, f"field 'text' is longer than {MAX_TEXT_CHARS} characters")
    interrupt = field(body, "interrupt", bool, False)
    avatarid = field(body, "avatarid", str, MAIN)
    session.member(avatarid)  # an unknown avatarid is the first thing to say
    tts = field(body, "tts", dict, {})
    voice = session.voice_for(avatarid, field(tts, "ref_file", str, ""))
    field(tts, "ref_text", str, "")
    await services.check_voice(voice, "tts.ref_file")
    if interrupt:
        await session.interrupt()
    speak = session.ask if kind == "chat" else session.say
    utterance = speak(text, voice, avatarid=avatarid)
    return ok({"utterance_id": utterance.id})


@routes.post("/set_audiotype")
async def set_audiotype(request: web.Request) -> web.Response:
    services = services_of(request)
    body = await read_json_object(request)
    session = services.registry.get(field(body, "sessionid", int))
    audiotype = field(body, "audiotype", int)
    reinit = field(body, "reinit", bool)
    session.set_audiotype(audiotype, reinit)
    return ok()


@routes.post("/interrupt_talk")
async def interrupt_talk(request: web.Request) -> web.Response:
    services = services_of(request)
    body = await read_json_object(request)
    session = services.registry.get(field(body, "sessionid", int))
    await session.interrupt()
    return ok()


@routes.post("/is_speaking")
async def is_speaking(request: web.Request) -> web.Response:
    services = services_of(request)
    body = await read_json_object(request)
    session = services.registry.get(field(body, "sessionid", int))
    return ok(session.speaking)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    services = services_of(request)
    triton = await services.triton_status()
    healthy = bool(triton.get("ready"))
    data = {"triton": triton, "sessions": len(services.registry),
            "max_sessions": services.registry.max_sessions}
    return web.json_response(
        {"code": 0 if healthy else 503, "msg": "ok" if healthy else "triton not ready", "data": data},
        status=200 if healthy else 503,
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    services = services_of(request)
    ready = bool((await services.triton_status()).get("ready"))
    return web.Response(body=services.metrics.render(ready),
                        headers={"Content-Type": METRICS_CONTENT_TYPE})


@routes.post("/record")
async def record(request: web.Request) -> web.Response:
    services = services_of(request)
    body = await read_json_object(request)
    session = services.registry.get(field(body, "sessionid", int))
    action = choice(body, "type", ("start_record", "end_record"))
    record_dir = services.settings.data_dir / "record"
    if action == "start_record":
        if session.recording:
            raise ApiError(409, f"session {session.sessionid} is already recording")
        session.start_recording(record_dir / f"{session.sessionid}.mp4")
        return ok()
    if not session.recording:
        raise ApiError(409, f"session {session.sessionid} is not recording (type 'end_record')")
    path = await session.stop_recording()
    # The original contract's single path points at the latest recording.
    latest = services.settings.data_dir / "record.mp4"
    await asyncio.get_running_loop().run_in_executor(None, shutil.copyfile, path, latest)
    # Relative to the data directory: responses never show the server's directories.
    return ok({"path": str(path.relative_to(services.settings.data_dir)),
               "url": f"/record/{session.sessionid}"})


@routes.get("/record/{sessionid}")
async def download_record(request: web.Request) -> web.StreamResponse:
    services = services_of(request)
    raw = request.match_info["sessionid"]
    if not raw.isdigit():
        raise ApiError.bad_request("sessionid in the path must be an integer")
    path = services.settings.data_dir / "record" / f"{int(raw)}.mp4"
    if not path.is_file():
        raise ApiError.not_found(f"no recording for sessionid {raw}")
    return web.FileResponse(path, headers={"Content-Type": "video/mp4"})


@routes.get("/sse")
async def sse(request: web.Request) -> web.StreamResponse:
    services = services_of(request)
    raw = request.query.get("sessionid", "")
    if not raw.lstrip("-").isdigit():
        raise ApiError.bad_request("query parameter 'sessionid' must be an integer")
    session = services.registry.get(int(raw))
    events = session.events.subscribe()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        await response.write(b": connected\n\n")
        while True:
            try:
                item = await asyncio.wait_for(events.get(), SSE_KEEPALIVE_S)
            except asyncio.TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if item is None:
                break
            await response.write(f"data: {json.dumps(item, ensure_ascii=False)}\n\n".encode())
    except ConnectionResetError:
        pass  # the reader went away
    finally:
        session.events.unsubscribe(events)
    return response


@routes.post("/humanaudio")
async def humanaudio(request: web.Request) -> web.Response:
    """multipart: sessionid, file, optional interrupt; the audio is spoken lip-synced."""
    services = services_of(request)
    if not request.content_type.startswith("multipart/"):
        raise ApiError.bad_request("/humanaudio takes multipart/form-data with 'sessionid' and 'file'")
    form: dict[str, str] = {}
    data: bytes | None = None
    async for part in form_parts(request, MAX_UPLOAD_BYTES):
        if part.name == "file":
            data = await read_limited(part, MAX_UPLOAD_BYTES)
        elif part.name:
            form[part.name] = (await read_limited(part, 1024)).decode(errors="replace")
    raw_id = form.get("sessionid", "")
    if not raw_id.strip().lstrip("-").isdigit():
        raise ApiError.bad_request("field 'sessionid' must be an integer")
    session = services.registry.get(int(raw_id))
    if data is None:
        raise ApiError.bad_request("missing field 'file'")
    interrupt = form.get("interrupt", "false").strip().lower()
    if interrupt not in ("true", "false", "1", "0", ""):
        raise ApiError.bad_request("field 'interrupt' must be true or false")
    audio = await asyncio.get_running_loop().run_in_executor(None, decode_audio, data)
    if interrupt in ("true", "1"):
        await session.interrupt()
    utterance = session.say("(uploaded audio)", audio=audio)
    return ok({"utterance_id": utterance.id, "seconds": round(audio.size / 16000, 3)})

