"""LiveTalking's admin, avatar-task and ASR routes, in its shapes, on our own services
(docs/MIGRATING.md lists every field and how it differs).

- `GET /api/admin/config`: the effective settings under `data.config`, LiveTalking's key names
  where one exists (`avatar_id`, `REF_FILE`, `max_session`, `listenport`…) and ours beside
  them; secrets (the access token, the LLM key, the TURN password, credentials in the LLM URL)
  are redacted, and no directory is named.
- `GET /api/admin/sessions`: the live sessions under `data.sessions`.
- The avatar-task API on our avatar builder (orchestrator/avatar/jobs.py): `POST
  /api/avatar/task` (multipart: `model`, `avatar_id`, `video_file`, optional `task_id`; the
  face-detection tuning fields are accepted and ignored: our builder tracks the face itself),
  `GET /api/avatar/task/{task_id}`, `GET /api/avatar/tasks`, `DELETE /api/avatar/task/{task_id}`.
- `/api/asr`: FunASR's WebSocket protocol on our ASR engine (orchestrator/livetalking/funasr_websocket.py); a
  plain request gets 400 JSON. With --no-voice-input a plain request gets 404 JSON (not a 5xx:
  nothing failed, the service is not there), a WebSocket gets one JSON message saying so and is
  closed.

All of these are control routes: they need the token when one is set.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from aiohttp import WSCloseCode, web

from ..avatar.jobs import AvatarJob, JobState
from ..errors import ApiError
from ..http.avatar_api import AVATAR_JOBS_KEY, MAX_FIELD_BYTES, save_limited
from ..http.request_context import ok, services_of
from ..http.validation import FormReader
from ..media.clock import VIDEO_FPS
from ..settings import Settings, redact_stream_key
from .funasr_websocket import serve_recognition

REDACTED = "***"
# Their avatar page sends 7 fields, their API documents 13.
MAX_AVATAR_TASK_FIELDS = 16
AVATAR_MODELS = ("wav2lip", "musetalk")  # what their API takes; both build our one format
# LiveTalking's task states for ours.
TASK_STATUS = {JobState.QUEUED: "pending", JobState.RUNNING: "running",
               JobState.DONE: "completed", JobState.FAILED: "failed"}
ASR_NOT_CONFIGURED = ("speech recognition (/api/asr) is not configured on this server (it runs "
                      "with --no-voice-input); send text to /human")
ASR_NEEDS_WEBSOCKET = ("/api/asr speaks FunASR's WebSocket protocol: open it as a WebSocket "
                       "(ws://.../api/asr)")

routes = web.RouteTableDef()


def _redacted_url(url: str | None) -> str | None:
    """A URL without the user:password it may carry."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=REDACTED + "@" + parts.netloc.rpartition("@")[2]))


def effective_config(settings: Settings) -> dict:
    """The settings a LiveTalking admin page shows, with ours beside them; no secret, no path."""
    return {
        # LiveTalking's names
        "fps": VIDEO_FPS,
        "model": settings.lipsync_model,
        "avatar_id": settings.avatar_id,
        "customvideo_config": settings.customvideo_config,
        "tts": settings.tts,
        "TTS_SERVER": _redacted_url(settings.tts_server),  # "": the engine's usual local port
        "REF_FILE": settings.ref_file,
        "REF_TEXT": settings.ref_text,
        "transport": ",".join(settings.transports),
        "push_url": ", ".join(redact_stream_key(url) for url in settings.push_urls),
        "push_token": REDACTED if settings.push_token else None,  # ours: the WHIP bearer token
        "max_session": settings.max_sessions,
        "listenport": settings.port,
        # ours
        "host": settings.host,
        "triton_url": settings.triton_url,
        "llmid": settings.llmid,
        "multiavatar_config": settings.multiavatar_config,
        "llm_base_url": _redacted_url(settings.llm_base_url),
        "llm_model": settings.llm_model,
        "llm_api_key": REDACTED if settings.llm_api_key else "",
        "tts_model": settings.tts_model,
        "piper_voice": settings.piper_voice,
        "tts_api_key": REDACTED if settings.tts_api_key else "",
        "api_token": REDACTED if settings.api_token else None,
        "cors_origins": list(settings.cors_origins),
        "protect_metrics": settings.protect_metrics,
        "stun": list(settings.stun),
        "turn": [_redacted_url(url) for url in settings.turn],
        "turn_username": settings.turn_username,
        "turn_password": REDACTED if settings.turn_password else None,
        "ice_hosts": list(settings.ice_hosts),
        "setup_timeout_s": settings.setup_timeout_s,
        "max_queued_utterances": settings.max_queued_utterances,
        "max_queued_speech_s": settings.max_queued_speech_s,
        "workers": settings.workers,  # max_session is per worker
        "web_dir": settings.web_dir is not None,
    }


@routes.get("/api/admin/config")
async def admin_config(request: web.Request) -> web.Response:
    return ok({"config": effective_config(services_of(request).settings)})


@routes.get("/api/admin/sessions")
async def admin_sessions(request: web.Request) -> web.Response:
    services = services_of(request)
    sessions = []
    for session in services.registry.all():
        options = session.options
        sessions.append({
            "sessionid": session.sessionid,
            "avatar_id": options.avatar,
            "avatar": options.avatar,
            "state": _state(session),
            "speaking": session.speaking,
            "recording": session.recording,
            "since": round(session.created, 3),
            "model": session.avatar.lipsync_model or services.settings.lipsync_model,
            "REF_FILE": options.refaudio,
            "llmid": options.llmid,
            "transport": session.transport,
            "customopt": options.custom_config or [],
            "outputs": [sink.describe() for sink in session.sinks if hasattr(sink, "describe")],
        })
    return ok({"sessions": sessions})


def _state(session) -> str:
    """The peer connection's state; a server session (no peer) is "playing" while open."""
    if session.closed:
        return "closed"
    return session.pc.connectionState if session.pc is not None else "playing"


def describe_task(job: AvatarJob) -> dict:
    """A job in LiveTalking's task shape (progress 0-100)."""
    ended = job.ended
    return {"task_id": job.id, "model_type": job.model, "avatar_id": job.avatar_id,
            "status": TASK_STATUS[job.state], "progress": int(round(job.progress * 100)),
            "error_msg": job.error or "", "notify_url": None,
            "start_time": round(job.created, 3), "end_time": ended and round(ended, 3),
            "duration": round((ended or time.time()) - job.created, 3)}


@routes.post("/api/avatar/task")
async def create_avatar_task(request: web.Request) -> web.Response:
    jobs = request.app[AVATAR_JOBS_KEY]
    if not request.content_type.startswith("multipart/"):
        raise ApiError.bad_request("POST /api/avatar/task takes multipart/form-data with "
                                   "'model', 'avatar_id' and 'video_file' (a server-side "
                                   "'video_path' is not supported)")
    fields: dict[str, str] = {}
    upload: Path | None = None
    filename = ""
    try:
        reader = FormReader(request, jobs.max_upload_bytes, MAX_AVATAR_TASK_FIELDS)
        async for part in reader.parts():
            if part.name == "video_file":
                if upload is not None:
                    raise ApiError.bad_request("field 'video_file' is given twice")
                filename = "".join(c for c in (part.filename or "")[:200] if c.isprintable())
                upload = jobs.new_upload()
                await save_limited(reader, part, upload, jobs.max_upload_bytes)
            elif part.name:
                fields[part.name] = await reader.text(part, MAX_FIELD_BYTES)
                if part.name == "avatar_id":
                    jobs.admit(fields["avatar_id"], "avatar_id")  # before a large file
            else:
                await reader.skip(part)
        model = fields.get("model", "")
        if model not in AVATAR_MODELS:
            raise ApiError.bad_request(f"field 'model' must be one of {', '.join(AVATAR_MODELS)}; "
                                       f"got {model[:40]!r}")
        if "avatar_id" not in fields:
            raise ApiError.bad_request("missing field 'avatar_id'")
        if upload is None:
            raise ApiError.bad_request("missing field 'video_file' (a server-side 'video_path' "
                                       "is not supported)")
        task_id = fields.get("task_id") or None
        if task_id is not None:
            jobs.check_job_id(task_id)
        try:
            kind = await asyncio.get_running_loop().run_in_executor(None, jobs.source_kind, upload)
        except ValueError as exc:
            raise ApiError.bad_request(f"field 'video_file' is {exc}") from None
        job = jobs.submit(fields["avatar_id"], upload, kind, f"upload: {filename[:200]}",
                          job_id=task_id, model=model)
        upload = None  # the job owns it now
    finally:
        if upload is not None:
            upload.unlink(missing_ok=True)
    return ok({"task_id": job.id})


# GET and DELETE of one path stay adjacent: aiohttp then keeps them on one resource, which
# the CORS preflight needs.
@routes.get("/api/avatar/task/{task_id}")
async def avatar_task(request: web.Request) -> web.Response:
    return ok(describe_task(request.app[AVATAR_JOBS_KEY].get(request.match_info["task_id"])))


@routes.delete("/api/avatar/task/{task_id}")
async def delete_avatar_task(request: web.Request) -> web.Response:
    request.app[AVATAR_JOBS_KEY].cancel(request.match_info["task_id"])
    return ok({"msg": "Task deleted"})


@routes.get("/api/avatar/tasks")
async def avatar_tasks(request: web.Request) -> web.Response:
    jobs = request.app[AVATAR_JOBS_KEY].all()
    return ok({"tasks": [describe_task(job) for job in reversed(jobs)]})  # newest first


@routes.get("/api/asr")
async def asr(request: web.Request) -> web.StreamResponse:
    voice = services_of(request).voice_input
    ws = web.WebSocketResponse()
    if not ws.can_prepare(request).ok:
        if voice is None:
            raise ApiError.not_found(ASR_NOT_CONFIGURED)
        raise ApiError.bad_request(ASR_NEEDS_WEBSOCKET)
    if voice is not None:
        return await serve_recognition(request, voice.asr)
    await ws.prepare(request)
    # Shaped like an ASR result too, so a FunASR-style page shows an empty, final text.
    await ws.send_json({"code": 404, "msg": ASR_NOT_CONFIGURED, "text": "", "is_final": True,
                        "mode": "not-configured", "timestamp": None})
    await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"asr not configured")
    return ws
