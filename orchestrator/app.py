"""The aiohttp application: routes, JSON error answers, and the services' lifetime."""

from __future__ import annotations

import logging

from aiohttp import web

from . import access, api, avatar_api
from .avatar_jobs import AvatarJobs
from .errors import ApiError
from .services import SERVICES_KEY, Services, start_services
from .settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


def _error(status: int, msg: str) -> web.Response:
    return web.json_response({"code": status, "msg": msg}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.msg)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(500, "internal error")


def create_app(settings: Settings, services: Services | None = None) -> web.Application:
    """The app; with `services` given (tests), their lifetime is the caller's."""
    app = web.Application(middlewares=[json_errors, *access.middlewares(settings)],
                          client_max_size=MAX_BODY_BYTES)
    app.add_routes(api.routes)
    app.add_routes(avatar_api.routes)
    access.install(app, settings)  # after the last route: CORS covers every one

    async def lifetime(app: web.Application):
        owned = services is None
        app[SERVICES_KEY] = services or await start_services(settings)
        # Its upload folder is emptied at start: one job registry per data directory.
        jobs = AvatarJobs(app[SERVICES_KEY].avatars, settings.data_dir / "avatar-uploads")
        app[avatar_api.AVATAR_JOBS_KEY] = jobs
        yield
        await jobs.close()
        if owned:
            await app[SERVICES_KEY].close()
        else:
            await _close_sessions(app[SERVICES_KEY])

    app.cleanup_ctx.append(lifetime)
    return app


async def _close_sessions(services: Services) -> None:
    for session in services.registry.all():
        await session.close()
        services.registry.release(session.sessionid)
