"""The server's own session (sessionid 0), opened at start when an output needs one.

LiveTalking's push transports (`--transport rtmp`, `rtcpush`, `virtualcam`) build session "0" at
start and render it for ever; its pages then drive it with `/human {"sessionid": 0, ...}`. So
does this: with `--transport rtmp`, `whip` (LiveTalking's `rtcpush`) and/or `whep`, the session
opens once the services are up, with the server's defaults (--avatar-id, --ref-file, --llmid,
--customvideo-config, ...). It has no WebRTC peer: its player starts at once and it never times
out for the want of one. Every push URL is one sink of it (an rtmp:// URL: outputs/rtmp.py; an
http(s):// WHIP endpoint: outputs/whip.py), each WHEP viewer another (outputs/whep.py); it
shows in /api/admin/sessions and takes a slot of --max-session; it ends when the server stops
(each push ends with it: the WHIP resource is DELETEd).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from ..errors import ApiError
from ..session.factory import SessionFactory
from ..session.registry import SERVER_SESSIONID, SessionRegistry
from ..session.session import Session, SessionOptions
from ..settings import Settings, push_transport, redact_stream_key
from ..voice_input.turn_taking import VoiceOptions
from .base import OutputMetrics
from .rtmp import RtmpPush
from .whip import WhipPush

log = logging.getLogger(__name__)


async def open_server_session(factory: SessionFactory, registry: SessionRegistry,
                              settings: Settings,
                              output_metrics: Callable[[str], OutputMetrics],
                              options: Callable[[], SessionOptions]) -> Session:
    """Open session 0 with `options()` (what an /offer with no optional field would get; its
    microphone is off: there is no peer), add its RTMP and WHIP pushes (each counted by
    `output_metrics(name)`) and start playing. RuntimeError
    naming the setting when the defaults cannot make a session (malformed JSON in a setting,
    unknown avatar, voice, knowledge base...)."""
    try:
        # no peer, no microphone
        defaults = replace(options(), voice=VoiceOptions(mode="off"))
        session = await factory.open(SERVER_SESSIONID, defaults, with_peer=False)
    except ApiError as exc:
        raise RuntimeError(f"the server session (--transport {','.join(settings.transports)}) "
                           f"cannot open with the server's defaults: {exc.msg}") from None
    session.transport = ",".join(t for t in settings.transports if t != "webrtc")
    width, height = session.avatar.width, session.avatar.height
    for url in settings.push_urls:
        metrics = output_metrics(redact_stream_key(url))
        if push_transport(url) == "rtmp" and "rtmp" in settings.transports:
            session.add_sink(RtmpPush(url, width, height, metrics))
        elif push_transport(url) == "whip" and "whip" in settings.transports:
            session.add_sink(WhipPush(url, settings.push_token, width, height,
                                      factory.rtc_configuration, metrics))
    registry.add_server_session(session)
    session.start()
    log.info("server session opened sessionid=%s transport=%s push=%s", SERVER_SESSIONID,
             session.transport, [redact_stream_key(url) for url in settings.push_urls])
    return session
