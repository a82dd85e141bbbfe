"""Requests for another orchestrator's session, forwarded to it (docs/DEPLOY.md, "Session
affinity").

Behind one address (a Kubernetes Service, a load balancer) any orchestrator may receive any
request, but a session lives in one process. LiveTalking's clients name the session in JSON
bodies (`sessionid` of /human, /interrupt_talk ...), in query strings (/sse) and in paths
(/record/<id>), so neither cookies nor client addresses route them reliably. With
`--instance-id` each orchestrator's session ids carry its instance id (session_ids.py); with
`--peer-url` (a URL template such as `http://livehuman-orchestrator-{instance}.livehuman-peers:8010`,
the StatefulSet pods' stable names) an orchestrator that gets a request for a session of
another instance sends it on to that instance, once, and streams the answer back (SSE too).

The session lookup is where a foreign id is recognised (`SessionRegistry.get` raises
`ElsewhereSession`), so every route that looks a session up is covered without naming routes.
A body is replayed from what the handler read (JSON; aiohttp keeps it); a multipart upload
(/humanaudio), read part by part, cannot be replayed: 421 naming the owner. A forwarded
request is marked (FORWARDED_BY_HEADER) and never forwarded again: 421 if it is misdirected
twice. Misses (unknown ids) are counted per client address here as in the owner, where the
forwarder's address is the client, as behind any proxy.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from ..errors import ApiError
from ..services import SERVICES_KEY
from ..session.registry import ElsewhereSession, current_client
from ..settings import Settings

log = logging.getLogger(__name__)

FORWARDED_BY_HEADER = "X-Livehuman-Forwarded-By"
CONNECT_TIMEOUT_S = 5.0
# Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones the client library sets itself.
_NOT_FORWARDED = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                            "transfer-encoding", "upgrade", "proxy-authorization",
                            "proxy-authenticate", "content-length"})
_NOT_RETURNED = _NOT_FORWARDED | {"content-encoding", "server", "date"}


class PeerForwarder:
    """Sends requests on to `peer_url.format(instance=N)` and streams the answers back."""

    def __init__(self, peer_url: str, instance_id: int | None) -> None:
        self.peer_url = peer_url
        self.instance_id = instance_id
        self._http: aiohttp.ClientSession | None = None

    def url_of(self, instance: int) -> str:
        return self.peer_url.format(instance=instance).rstrip("/")

    async def forward(self, request: web.Request, instance: int) -> web.StreamResponse:
        if request.content_type.startswith("multipart/"):
            raise ApiError(421, f"this upload is for a session of orchestrator instance "
                           f"{instance}, and uploads are not forwarded: send it to that "
                           "orchestrator")
        # What the handler read (aiohttp keeps it), or what it left unread; GET: nothing.
        body = await request.read() or None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        headers[FORWARDED_BY_HEADER] = str(self.instance_id)
        headers["X-Forwarded-For"] = ", ".join(
            h for h in (request.headers.get("X-Forwarded-For"), request.remote) if h)
        url = self.url_of(instance) + request.rel_url.path_qs
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
                auto_decompress=False)
        response: web.StreamResponse | None = None
        try:
            async with self._http.request(request.method, url, data=body, headers=headers,
                                          allow_redirects=False) as upstream:
                if upstream.status == 404:  # an unknown id: the client's miss, here too
                    request.app[SERVICES_KEY].registry.misses.miss(current_client.get())
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in _NOT_RETURNED:
                        response.headers.add(name, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():  # SSE: as each event comes
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            if request.transport is None or request.transport.is_closing():
                raise  # our own client went away: nothing to answer
            if response is not None and response.prepared:
                log.info("forwarded %s %s: instance %d closed the stream: %s", request.method,
                         request.path[:200], instance, exc)
                return response  # the answer had begun (an SSE stream): it just ends
            log.warning("forwarding %s %s to instance %d failed: %s", request.method,
                        request.path[:200], instance, exc)
            raise ApiError(502, f"the orchestrator of this session (instance {instance}) "
                           "does not answer") from None

    async def close(self, app: web.Application | None = None) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def install(app: web.Application, settings: Settings) -> None:
    """With --peer-url: the forwarding middleware (innermost) and its client's cleanup."""
    if not settings.peer_url:
        return
    forwarder = PeerForwarder(settings.peer_url, settings.instance_id)

    @web.middleware
    async def forward_elsewhere(request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ElsewhereSession as exc:
            if FORWARDED_BY_HEADER in request.headers:
                raise  # misdirected twice: never a loop
            return await forwarder.forward(request, exc.instance)

    app.middlewares.append(forward_elsewhere)
    app.on_cleanup.append(forwarder.close)
