"""Who may call the API: the access token, the CORS policy, cross-site request checks, and what
the server says about itself (docs/SECURITY.md is the page for operators).

- Token (`--api-token` / LIVEHUMAN_API_TOKEN): every route but the page, its static files and
  (unless `--protect-metrics`) /healthz and /metrics needs `Authorization: Bearer <token>` or a
  `token` query parameter (EventSource, downloads and `<video>` links cannot set headers).
- CORS (`--cors-origin`, aiohttp-cors): nothing is allowed cross-origin unless named; every
  route answers preflight `OPTIONS` (403 for an origin not named). An `OPTIONS` that is no
  preflight (no `Origin`: a WHEP client, curl) is answered `204` with `Allow`, the route's
  methods (RFC 9110 9.3.7), on every route alike.
- Cross-site requests: a JSON endpoint takes only `application/json` (a browser sends that
  cross-site only after a preflight the CORS policy decides) unless the request proves it comes
  from our own page (`Sec-Fetch-Site: same-origin`, or `Origin` naming this host); the WHEP
  routes take their SDP types instead (declared with `takes`); a multipart endpoint refuses a foreign
  `Origin` the CORS policy does not allow.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from urllib.parse import urlsplit

import aiohttp_cors
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..session.registry import current_client
from ..settings import Settings
from .pages import CLIENT_PATH, WEB_DIR_CANONICAL

log = logging.getLogger(__name__)

SERVER_HEADER = "livehuman"  # no framework or version: nothing to look up vulnerabilities by
TOKEN_QUERY = "token"
JSON_CONTENT_TYPE = "application/json"
# Of those, the one a browser sends cross-site without a preflight (the CORS "simple" method).
SIMPLE_UNSAFE_METHODS = frozenset({"POST"})
# Served without the token: the pages and their files (orchestrator/http/pages.py) must load to ask
# for it (or to call the API with it), and hold no secret.
PAGE_PATHS = frozenset({"/", "/static/{name}", CLIENT_PATH, CLIENT_PATH.rstrip("/"),
                        WEB_DIR_CANONICAL})
MONITORING_PATHS = frozenset({"/healthz", "/metrics"})
# Routes whose bodies are not JSON say which type they take with `@takes(type)` (WHEP's SDP,
# the uploads' multipart): none is a CORS "simple" type, so a browser sends them cross-site only
# after a preflight too, and a 415 names the type the route does take. `install` collects them
# per resource (path), so every method of that path expects the type.
MULTIPART_CONTENT_TYPE = "multipart/form-data"
BODY_TYPE_ATTRIBUTE = "livehuman_body_type"
BODY_TYPES_KEY = web.AppKey("body_types", dict)


def takes(content_type: str):
    """Decorator for a handler whose route's body is `content_type`, not JSON."""

    def mark(handler):
        setattr(handler, BODY_TYPE_ATTRIBUTE, content_type)
        return handler

    return mark


def _refuse(status: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": status, "msg": msg}, status=status, headers=headers)


def origin_allowed(origins: tuple[str, ...], origin: str) -> bool:
    """True when the CORS policy names `origin` (or allows any with '*')."""
    return "*" in origins or origin.rstrip("/") in origins


def same_origin(request: web.Request) -> bool:
    """The request comes from a page this server served (as far as a browser tells)."""
    if request.headers.get("Sec-Fetch-Site") == "same-origin":
        return True
    origin = request.headers.get("Origin")
    if not origin:
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # e.g. 'http://[': whatever sent it, it is not our page
        return False
    # The host only: behind a TLS proxy the page is https while we see http.
    return netloc.lower() == (request.host or "").lower()


def is_open_route(request: web.Request, protect_metrics: bool) -> bool:
    """Routes served without the token: the page, static files, and health/metrics unless
    protected. Everything else, unknown paths included, needs it."""
    resource = request.match_info.route.resource
    if resource is None:
        return False
    path = resource.canonical
    return path in PAGE_PATHS or (path in MONITORING_PATHS and not protect_metrics)


def presented_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get(TOKEN_QUERY)


def middlewares(settings: Settings) -> list:
    """The access middlewares, outermost first; they run inside the JSON error middleware."""

    @web.middleware
    async def client_address(request: web.Request, handler) -> web.StreamResponse:
        # Failed session lookups are counted per address (session_registry.MissLimiter).
        reset = current_client.set(request.remote or "")
        try:
            return await handler(request)
        finally:
            current_client.reset(reset)

    @web.middleware
    async def plain_options(request: web.Request, handler) -> web.StreamResponse:
        # A CORS preflight carries an Origin (aiohttp-cors decides it); any other OPTIONS asks
        # what the URL takes, the same answer for a collection and its resources.
        resource = request.match_info.route.resource
        if request.method != "OPTIONS" or "Origin" in request.headers or resource is None:
            return await handler(request)
        methods = {route.method for route in resource} | {"OPTIONS"}
        return web.Response(status=204, headers={"Allow": ", ".join(sorted(methods))})

    expected = settings.api_token.encode() if settings.api_token else None

    @web.middleware
    async def require_token(request: web.Request, handler) -> web.StreamResponse:
        # Preflights carry no credentials by design (and execute nothing).
        if expected is None or request.method == "OPTIONS" or is_open_route(
                request, settings.protect_metrics):
            return await handler(request)
        given = presented_token(request)
        # surrogatepass: header bytes that are not UTF-8 reach us as lone surrogates; they are
        # a wrong token (401), not an encoding error (500).
        if given is None or not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                    expected):
            return _refuse(401, "this server needs its access token: send "
                           "'Authorization: Bearer <token>' (or ?token=<token> on SSE and "
                           "download links)" if given is None else "wrong access token",
                           {"WWW-Authenticate": 'Bearer realm="livehuman"'})
        return await handler(request)

    @web.middleware
    async def cross_site_guard(request: web.Request, handler) -> web.StreamResponse:
        # DELETE, PUT and PATCH are never "simple" requests: a browser sends them cross-site
        # only after a preflight the CORS policy decides, whatever their body (and a PATCH the
        # route does not take gets its 405, not a 415 about its body).
        if request.method not in SIMPLE_UNSAFE_METHODS:
            return await handler(request)
        if request.content_type.startswith("multipart/"):
            origin = request.headers.get("Origin")
            if origin is not None and not same_origin(request) and not origin_allowed(
                    settings.cors_origins, origin):
                return _refuse(403, f"origin {origin[:100]!r} may not post forms here "
                               "(--cors-origin)")
        elif request.content_type != (expected := _body_type(request)) and not same_origin(
                request):
            return _refuse(415, f"Content-Type must be {expected}, "
                           f"got {request.content_type[:100]!r}")
        return await handler(request)

    return [client_address, plain_options, require_token, cross_site_guard]


def _body_type(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return request.app[BODY_TYPES_KEY].get(resource.canonical if resource is not None else "",
                                           JSON_CONTENT_TYPE)


def _declared_body_types(app: web.Application) -> dict[str, str]:
    """The body type each resource's routes declared with `takes` (by canonical path)."""
    types = {}
    for route in app.router.routes():
        content_type = getattr(route.handler, BODY_TYPE_ATTRIBUTE, None)
        if content_type is not None and route.resource is not None:
            types[route.resource.canonical] = content_type
    return types


def install(app: web.Application, settings: Settings) -> None:
    """After the routes are added: the CORS policy on every route, our own Server header, and
    a warning when the API is reachable from the network without a token."""
    app[BODY_TYPES_KEY] = _declared_body_types(app)
    options = aiohttp_cors.ResourceOptions(allow_headers="*", expose_headers="*")
    cors = aiohttp_cors.setup(app, defaults={o.rstrip("/"): options for o in settings.cors_origins})
    for route in list(app.router.routes()):
        if route.method != "OPTIONS":
            cors.add(route)
    app.on_response_prepare.append(_server_header)
    if settings.api_token is None and not _is_loopback(settings.host):
        log.warning("listening on %s without an access token: anyone who reaches the port "
                    "controls every session (set LIVEHUMAN_API_TOKEN; docs/SECURITY.md)",
                    settings.host)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or '' / 0.0.0.0 style: treat as reachable


class AccessLog(AbstractAccessLogger):
    """One line per request without the query string: it may hold the token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %s %s %.3fs', request.remote, request.method, request.path,
                         response.status, response.body_length, time)
