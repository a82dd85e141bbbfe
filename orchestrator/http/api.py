"""HTTP handlers of the contract (../shared/spec/API.md): parse, validate, hand to the session."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from aiortc.sdp import SessionDescription

from ..avatar.multiavatar import MAIN
from ..errors import ApiError
from ..media.audio_decoding import MAX_UPLOAD_BYTES, decode_audio
from ..media.clock import AUDIO_SAMPLE_RATE_HZ
from ..media.recorder import EmptyRecording
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..session.session import SessionOptions
from ..settings import Settings
from ..speech.items import MAX_TEXT_CHARS, has_speakable
from ..voice_input.turn_taking import VOICE_MODES, VoiceOptions
from .access import MULTIPART_CONTENT_TYPE, takes
from .request_context import ok, require_triton, services_of
from .session_lookup import find_session, json_session, parse_sessionid, query_session
from .validation import FormReader, choice, field, json_config, read_json_object

log = logging.getLogger(__name__)

SSE_KEEPALIVE_S = 15.0

routes = web.RouteTableDef()


@routes.post("/offer")
async def offer(request: web.Request) -> web.Response:
    offered_at = asyncio.get_running_loop().time()
    services = services_of(request)
    if "webrtc" not in services.settings.transports:
        raise ApiError.not_found("WebRTC sessions are off on this server (--transport "
                                 f"{','.join(services.settings.transports)}): watch the server "
                                 "session (sessionid 0) instead, docs/OUTPUTS.md")
    require_triton(services)
    body = await read_json_object(request)
    choice(body, "type", ("offer",))
    sdp = offer_sdp(body)
    options = session_options(body, services.settings)
    check_offer_sdp(sdp)
    session, answer_sdp = await services.session_factory.open_peer(options, sdp, offered_at)
    return web.json_response(
        {"type": "answer", "sdp": answer_sdp, "sessionid": session.sessionid}
    )


def session_options(fields: dict, settings: Settings) -> SessionOptions:
    """/offer's optional fields (a JSON body, or WHEP's query string), the settings' defaults
    for those not given; 400 naming a field of the wrong type or value."""
    return SessionOptions(
        avatar=field(fields, "avatar", str, settings.avatar_id),
        refaudio=field(fields, "refaudio", str, settings.ref_file),
        reftext=field(fields, "reftext", str, settings.ref_text),
        llmid=field(fields, "llmid", str, settings.llmid),
        custom_config=json_config(fields, "custom_config", settings.customvideo_config, list),
        multiavatar_config=json_config(fields, "multiavatar_config", settings.multiavatar_config,
                                       dict),
        voice=VoiceOptions(mode=choice(fields, "voice_mode", VOICE_MODES, settings.voice_mode),
                           barge_in=field(fields, "barge_in", bool, settings.barge_in)),
    )


def offer_sdp(body: dict) -> str:
    """The `sdp` field, checked for a media section (parsed in full by `check_offer_sdp` once
    the other fields of the body have been checked)."""
    sdp = field(body, "sdp", str)
    if "m=" not in sdp:
        raise ApiError.bad_request("field 'sdp' is not an SDP offer (no media section)")
    return sdp


def check_offer_sdp(sdp: str, where: str = "field 'sdp'") -> SessionDescription:
    """What aiortc's setRemoteDescription would refuse, refused before a session slot is taken:
    a text its parser cannot read (it asserts, raises StopIteration, IndexError...), no audio or
    video section, or a section without ICE credentials, a DTLS fingerprint or RTCP mux. So a
    malformed offer is a 400 even when the server is full, and never holds a slot. `where`
    names the offer in messages."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:
        raise ApiError.bad_request(f"{where} is not a valid SDP offer ({type(exc).__name__})") from None
    media = [m for m in description.media if m.kind in ("audio", "video")]
    if not media:
        raise ApiError.bad_request(f"{where} offers no audio or video section")
    for m in media:
        if not (m.ice.usernameFragment and m.ice.password):
            raise ApiError.bad_request(f"{where}: {m.kind} section without ICE credentials")
        if not (m.dtls and m.dtls.fingerprints):
            raise ApiError.bad_request(f"{where}: {m.kind} section without a DTLS fingerprint")
        if not m.rtcp_mux:
            raise ApiError.bad_request(f"{where}: {m.kind} section without rtcp-mux")
    return description


@routes.post("/human")
async def human(request: web.Request) -> web.Response:
    services = services_of(request)
    require_triton(services)
    body, session = await json_session(request)
    kind = choice(body, "type", ("echo", "chat"))
    text = field(body, "text", str)
    if not text.strip():
        raise ApiError.bad_request("field 'text' is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise ApiError(413, f"field 'text' is longer than {MAX_TEXT_CHARS} characters")
    if kind == "echo" and not has_speakable(text):  # a question of emoji may still get an answer
        raise ApiError.bad_request(f"nothing speakable in 'text': {text[:40]!r} has no letters "
                                   "or digits")
    interrupt = field(body, "interrupt", bool, False)
    avatarid = field(body, "avatarid", str, MAIN)
    session.member(avatarid)  # an unknown avatarid is the first thing to say
    tts = field(body, "tts", dict, {})
    voice = session.voice_for(avatarid, field(tts, "ref_file", str, ""),
                              field(tts, "ref_text", str, ""), tts_options(tts))
    await services.session_factory.check_voice(voice, "tts.ref_file")
    if interrupt:
        await session.interrupt()
    speak = session.ask if kind == "chat" else session.say
    utterance = speak(text, voice, avatarid=avatarid)
    return ok({"utterance_id": utterance.id})


def tts_options(tts: dict) -> dict[str, object]:
    """`/human`'s `tts` object besides `ref_file` (the voice) and `ref_text` (its transcript):
    every other key (`voice`, `emotion`, `speed`…, LiveTalking's pass-through) becomes
    `Voice.options`; an engine takes the keys it understands and the rest are ignored (logged
    once per engine and key). Values are JSON scalars."""
    options = {}
    for key, value in tts.items():
        if key in ("ref_file", "ref_text"):
            continue
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ApiError.bad_request(f"field 'tts.{key[:40]}' must be a string, number or "
                                       "boolean")
        options[key] = value
    return options


@routes.post("/set_audiotype")
async def set_audiotype(request: web.Request) -> web.Response:
    body, session = await json_session(request)
    audiotype = field(body, "audiotype", int)
    reinit = field(body, "reinit", bool, True)  # LiveTalking's pages omit it
    session.set_audiotype(audiotype, reinit)
    return ok()


@routes.post("/interrupt_talk")
async def interrupt_talk(request: web.Request) -> web.Response:
    _, session = await json_session(request)
    await session.interrupt()
    return ok()


@routes.post("/end_turn")
async def end_turn(request: web.Request) -> web.Response:
    """Push-to-talk released: the user's utterance becomes a turn at once. `data`: whether an
    utterance was under way."""
    _, session = await json_session(request)
    return ok(await session.end_user_turn())


@routes.post("/is_speaking")
async def is_speaking(request: web.Request) -> web.Response:
    _, session = await json_session(request)
    return ok(session.speaking)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    services = services_of(request)
    registry = services.registry
    triton = await services.triton_status()
    # Readiness: a draining server (orchestrator/drain.py) must leave its Service's endpoints.
    healthy = bool(triton.get("ready")) and not registry.draining
    msg = "draining" if registry.draining else "ok" if healthy else "triton not ready"
    data = {"triton": triton, "sessions": len(registry), "max_sessions": registry.max_sessions,
            "draining": registry.draining, "instance": registry.instance_id,
            # What works badly without making the server unready (a TTS server unreachable).
            "warnings": services.tts.warnings()}
    return web.json_response({"code": 0 if healthy else 503, "msg": msg, "data": data},
                             status=200 if healthy else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    services = services_of(request)
    ready = bool((await services.triton_status()).get("ready"))
    return web.Response(body=services.metrics.render(ready),
                        headers={"Content-Type": METRICS_CONTENT_TYPE})


@routes.post("/record")
async def record(request: web.Request) -> web.Response:
    services = services_of(request)
    body, session = await json_session(request)
    action = choice(body, "type", ("start_record", "end_record"))
    if action == "start_record":
        if session.recording:
            raise ApiError(409, f"session {session.sessionid} is already recording")
        session.start_recording(services.recordings)
        return ok()
    if not session.recording:
        raise ApiError(409, f"session {session.sessionid} is not recording (type 'end_record')")
    try:
        file = await session.stop_recording()  # record.mp4 is updated by then
    except EmptyRecording:
        raise ApiError(409, f"session {session.sessionid} recorded no frame yet (type "
                       "'end_record' came right after 'start_record'); nothing was saved") from None
    return ok({"path": file.relative, "url": f"/record/{session.sessionid}"})


@routes.get("/record/{sessionid}")
async def download_record(request: web.Request) -> web.StreamResponse:
    services = services_of(request)
    sessionid = parse_sessionid(request.match_info["sessionid"], "sessionid in the path")
    if not isinstance(sessionid, int):  # a recording may outlive its session: no live lookup
        raise ApiError.not_found(f"no recording for sessionid {sessionid[:40]!r}")
    services.registry.check_here(sessionid)  # another worker's (or instance's): sent there
    path = services.recordings.file_for(sessionid)
    return web.FileResponse(path, headers={"Content-Type": "video/mp4"})


@routes.get("/sse")
async def sse(request: web.Request) -> web.StreamResponse:
    session = query_session(request)
    events = session.events.subscribe()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        await response.write(b": connected\n\n")
        while True:
            try:
                async with asyncio.timeout(SSE_KEEPALIVE_S):
                    item = await events.get()
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if item is None:
                break
            await response.write(sse_event(item))
    except ConnectionResetError:
        pass  # the reader went away
    finally:
        session.events.unsubscribe(events)
    return response


def sse_event(item: dict) -> bytes:
    """One `data:` line. Never raises: one event that cannot be written as UTF-8 JSON (a lone
    surrogate in a text) must not end every stream of the session, so it falls back to ASCII
    escapes, and to a note of what was dropped when it is not JSON at all."""
    try:
        text = json.dumps(item, ensure_ascii=False, default=str)
        try:
            data = text.encode()
        except UnicodeEncodeError:
            data = json.dumps(item, ensure_ascii=True, default=str).encode()
    except (TypeError, ValueError) as exc:  # e.g. a reference cycle
        log.warning("sse: event %r not serialisable: %s", item.get("event"), exc)
        data = json.dumps({"event": "dropped", "reason": "not serialisable"}).encode()
    return b"data: " + data + b"\n\n"


@routes.post("/humanaudio")
@takes(MULTIPART_CONTENT_TYPE)
async def humanaudio(request: web.Request) -> web.Response:
    """multipart: sessionid, file, optional interrupt; the audio is spoken lip-synced."""
    services = services_of(request)
    require_triton(services)
    if not request.content_type.startswith("multipart/"):
        raise ApiError.bad_request("/humanaudio takes multipart/form-data with 'sessionid' and 'file'")
    form: dict[str, str] = {}
    data: bytes | None = None
    reader = FormReader(request, MAX_UPLOAD_BYTES)
    async for part in reader.parts():
        if part.name == "file":
            data = await reader.read(part, MAX_UPLOAD_BYTES)
        elif part.name:
            form[part.name] = await reader.text(part, 1024)
        else:
            await reader.skip(part)
    session = find_session(services, form.get("sessionid", "").strip() if "sessionid" in form
                           else None)
    if data is None:
        raise ApiError.bad_request("missing field 'file'")
    interrupt = form.get("interrupt", "false").strip().lower()
    if interrupt not in ("true", "false", "1", "0", ""):
        raise ApiError.bad_request("field 'interrupt' must be true or false")
    if interrupt not in ("true", "1"):
        session.admit(0.0)  # a full queue refuses before the upload is decoded
    audio = await asyncio.get_running_loop().run_in_executor(None, decode_audio, data)
    if interrupt in ("true", "1"):
        await session.interrupt()
    utterance = session.say("(uploaded audio)", audio=audio)
    return ok({"utterance_id": utterance.id, "seconds": round(audio.size / AUDIO_SAMPLE_RATE_HZ, 3)})

