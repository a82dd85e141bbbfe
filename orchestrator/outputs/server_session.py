"""The server's own session (sessionid 0), opened at start when an output needs one.

LiveTalking's push transports (`--transport rtmp`, `virtualcam`) build session "0" at start and
render it for ever; its pages then drive it with `/human {"sessionid": 0, ...}`. So does this:
with `--transport rtmp` and/or `whep`, the session opens once the services are up, with the
server's defaults (--avatar-id, --ref-file, --llmid, --customvideo-config, ...). It has no
WebRTC peer: its player starts at once and it never times out for the want of one. Every RTMP
push URL is one sink of it (outputs/rtmp.py), each WHEP viewer another (outputs/whep.py); it
shows in /api/admin/sessions and takes a slot of --max-session; it ends when the server stops.
"""

from __future__ import annotations

import logging

from ..errors import ApiError
from ..http.api import open_session
from ..http.validation import json_config
from ..services import Services
from ..session.registry import SERVER_SESSIONID
from ..session.session import Session, SessionOptions
from ..settings import redact_stream_key
from ..voice_input.turn_taking import VoiceOptions
from .rtmp import RtmpPush

log = logging.getLogger(__name__)


def server_session_options(services: Services) -> SessionOptions:
    """What an /offer with no optional field would get."""
    settings = services.settings
    return SessionOptions(
        avatar=settings.avatar_id,
        refaudio=settings.ref_file,
        reftext=settings.ref_text,
        llmid=settings.llmid,
        custom_config=json_config({}, "custom_config", settings.customvideo_config, list),
        multiavatar_config=json_config({}, "multiavatar_config", settings.multiavatar_config,
                                       dict),
        voice=VoiceOptions(mode="off"),  # no peer, no microphone
    )


async def open_server_session(services: Services) -> Session:
    """Open session 0 with its RTMP pushes and start playing; RuntimeError naming the setting
    when the defaults cannot make a session (unknown avatar, voice, knowledge base...)."""
    settings = services.settings
    try:
        session = await open_session(services, SERVER_SESSIONID,
                                     server_session_options(services), with_peer=False)
    except ApiError as exc:
        raise RuntimeError(f"the server session (--transport {','.join(settings.transports)}) "
                           f"cannot open with the server's defaults: {exc.msg}") from None
    session.transport = ",".join(t for t in settings.transports if t != "webrtc")
    if "rtmp" in settings.transports:
        for url in settings.push_urls:
            session.add_sink(RtmpPush(url, session.avatar.width, session.avatar.height,
                                      services.metrics.output(redact_stream_key(url))))
    services.registry.add_server_session(session)
    session.start()
    log.info("server session opened sessionid=%s transport=%s push=%s", SERVER_SESSIONID,
             session.transport, [redact_stream_key(url) for url in settings.push_urls])
    return session
