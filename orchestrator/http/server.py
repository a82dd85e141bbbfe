"""The HTTP server around the app: requests too malformed to reach it (a bad request line or
header, which aiohttp's protocol answers itself) get the contract's JSON error too, echo none of
the raw bytes, and cost one rate-limited log line instead of a traceback each.

aiohttp has no public hook for this (aio-libs/aiohttp#3287): the protocol class is chosen by
`web.Server.__call__`, so the runner hands out a `Server` subclass that builds ours.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..rate_limited_log import RateLimitedLog
from .access import SERVER_HEADER

log = logging.getLogger(__name__)

# One per process: how much a flood of garbage may write to the log is a process matter.
MALFORMED_HTTP_LOG = RateLimitedLog(log)


class JsonErrorProtocol(RequestHandler):
    __slots__ = ()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The answer when parsing failed (4xx) or the app raised past its middleware (5xx):
        `{"code", "msg"}` naming only the kind of fault, never the request's bytes."""
        name = type(exc).__name__ if exc is not None else HTTPStatus(status).phrase
        if status >= 500:
            self.log_exception("error handling request from %s", request.remote, exc_info=exc)
            msg = "handler timed out" if status == 504 else "internal error"
        else:
            MALFORMED_HTTP_LOG.log(f"malformed HTTP ({name})", logging.INFO,
                                   "malformed HTTP request from %s: %d %s", request.remote,
                                   status, name)
            msg = f"malformed HTTP request ({name})"
        if request.writer.output_size > 0:  # an answer was begun: the connection is lost anyway
            raise ConnectionError("response already started, cannot send the error")
        # Never through the app (its on_response_prepare names the server): named here too.
        response = web.json_response({"code": status, "msg": msg}, status=status,
                                     headers={"Server": SERVER_HEADER})
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorProtocol(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer malformed HTTP with JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer  # same state, our protocol factory
        return server
