"""The aiohttp application: routes, JSON error answers, and the services' lifetime."""

from __future__ import annotations

import logging

from aiohttp import web

from .avatar.jobs import AvatarJobs
from .errors import ApiError
from .http import (
    access,
    api,
    audio_stream_api,
    avatar_api,
    host_view,
    instance_forward,
    pages,
    voice_api,
    whep_api,
)
from .http.validation import BODY_READ_TIMEOUT_KEY
from .livetalking import routes as livetalking_api
from .outputs.server_session import open_server_session
from .outputs.whep import WhepResources
from .rate_limited_log import RateLimitedLog
from .services import SERVICES_KEY, Services, start_services
from .settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20

# Rejected requests are the client's doing: one line each (no traceback), bounded per kind.
REJECTED_LOG = RateLimitedLog(log)


def _error(status: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": status, "msg": msg}, status=status, headers=headers)


def _rejected(request: web.Request, status: int, msg: str,
              headers: dict[str, str] | None = None) -> web.Response:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "(no route)"
    REJECTED_LOG.log(f"{status} {request.method} {route}", logging.INFO,
                     "rejected %s %r: %d %s", request.method, request.path[:200], status,
                     msg[:300])
    return _error(status, msg, headers)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every failure as `{"code", "msg"}`: 4xx for the client's faults (logged once, rate
    limited), 500 with a traceback in the log only for our own."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _rejected(request, exc.status, exc.msg, exc.headers)
    except web.HTTPRequestEntityTooLarge:
        return _rejected(request, 413, f"request body larger than {MAX_BODY_BYTES} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _rejected(request, exc.status, exc.reason)
        if "Allow" in exc.headers:  # a 405 names the methods the resource has (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("internal error on %s %r", request.method, request.path[:200])
        return _error(500, "internal error")


def create_app(settings: Settings, services: Services | None = None,
               worker_ports: tuple[int, ...] = ()) -> web.Application:
    """The app; with `services` given (tests), their lifetime is the caller's. Serve it with
    `http_server.AppRunner`, which answers malformed HTTP with JSON too. `worker_ports`: as one
    of several workers (workers.py), every worker's private port."""
    app = web.Application(middlewares=[json_errors, *access.middlewares(settings)],
                          client_max_size=MAX_BODY_BYTES)
    app[BODY_READ_TIMEOUT_KEY] = settings.body_read_timeout_s
    app.add_routes(api.routes)
    app.add_routes(avatar_api.routes)
    app.add_routes(voice_api.routes)
    app.add_routes(audio_stream_api.routes)
    app.add_routes(livetalking_api.routes)
    app.add_routes(whep_api.routes)
    several = bool(settings.peer_url) or settings.workers > 1
    app[whep_api.WHEP_RESOURCES_KEY] = WhepResources(
        settings.max_whep_viewers, settings.instance_id if several else None)
    page_routes = web.RouteTableDef()
    pages.client_routes(page_routes, settings.web_dir)
    app.add_routes(page_routes)
    if settings.web_dir is not None:
        pages.WebDir(settings.web_dir).add_routes(app)  # last: the API's paths win
    access.install(app, settings)  # after the last route: CORS covers every one
    # --peer-url, --workers: other instances' sessions sent on; the host's view answered.
    forwarder = instance_forward.install(app, settings, worker_ports)
    host_view.install(app, settings, worker_ports, forwarder)

    async def lifetime(app: web.Application):
        owned = services is None
        app[SERVICES_KEY] = services or await start_services(settings)
        # The session the RTMP push and WHEP viewers show; with --workers, worker 0's.
        if settings.server_session and server_session_here(settings):
            try:
                services_ = app[SERVICES_KEY]
                # An /offer with no optional field: the server's defaults, checked as a client's.
                await open_server_session(services_.session_factory, services_.registry,
                                          settings, services_.metrics.output,
                                          lambda: api.session_options({}, settings))
            except BaseException:
                if owned:
                    await app[SERVICES_KEY].close()
                raise
        # Its upload folder is emptied at start: one job registry per data directory.
        jobs = AvatarJobs(app[SERVICES_KEY].avatars, settings.data_dir / "avatar-uploads")
        app[avatar_api.AVATAR_JOBS_KEY] = jobs
        loop_probe = app[SERVICES_KEY].metrics.start_loop_probe()
        yield
        loop_probe.cancel()
        await jobs.close()
        if owned:
            await app[SERVICES_KEY].close()
        else:
            await _close_sessions(app[SERVICES_KEY])
        await app[whep_api.WHEP_RESOURCES_KEY].close()

    app.cleanup_ctx.append(lifetime)
    return app


def server_session_here(settings: Settings) -> bool:
    """Whether this process opens the server session: with --workers, worker 0 of its host
    (orchestrator/workers.py); the others send its requests there."""
    return settings.workers == 1 or (settings.instance_id or 0) % settings.workers == 0


async def _close_sessions(services: Services) -> None:
    for session in services.registry.all():
        await session.close()
        services.registry.release(session.sessionid)
