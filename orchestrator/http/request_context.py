"""What every handler reads from its request's app: the services, the Triton gate, the reply.

The contract's answers are `{"code": 0, "msg": "ok", "data": ...}` (../shared/spec/API.md);
errors are `ApiError`s, turned into `{"code", "msg"}` by the app's middleware.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import ApiError
from ..services import SERVICES_KEY, Services


def ok(data=None) -> web.Response:
    """The contract's success answer, `data` as JSON."""
    return web.json_response({"code": 0, "msg": "ok", "data": data})


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES_KEY]


def require_triton(services: Services) -> None:
    """The gate of what needs TTS and lip-sync (/offer, /human, /humanaudio, WHEP's own
    sessions): 503 while Triton is not ready, instead of accepting speech that could never be
    spoken."""
    if not services.triton.ready:
        raise ApiError(503, f"Triton is not ready ({services.triton.reason}): speech is "
                       "unavailable until it recovers (see /healthz)")
