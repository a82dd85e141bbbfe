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

Several workers on one host (`--workers N`, orchestrator/workers.py) are instances too: worker j
of host instance h (`--instance-id`, 0 without one) issues ids of instance h * N + j, and each
worker also listens on a private loopback port. A request for another worker's session is sent
to that worker's port; one for another host's goes to `--peer-url` with {instance} = h, where
any of its workers takes it and, if it is not the owner, sends it on once more within the host
(LOCAL_HOP_HEADER): two hops at most, never a loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from ..errors import ApiError
from ..services import SERVICES_KEY
from ..session.registry import ElsewhereSession, UnknownSession, current_client
from ..settings import Settings

log = logging.getLogger(__name__)

FORWARDED_BY_HEADER = "X-Livehuman-Forwarded-By"
LOCAL_HOP_HEADER = "X-Livehuman-Worker-Hop"  # a forward from one worker to another of its host
WORKER_HOST = "127.0.0.1"  # where the workers' private ports listen
CONNECT_TIMEOUT_S = 5.0
# Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones the client library sets itself.
_NOT_FORWARDED = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                            "transfer-encoding", "upgrade", "proxy-authorization",
                            "proxy-authenticate", "content-length"})
_NOT_RETURNED = _NOT_FORWARDED | {"content-encoding", "server", "date"}


class InstanceRoutes:
    """Where each instance's sessions are: another worker of this host (its private port), or
    another host (`peer_url` with {instance} = the host's instance id)."""

    def __init__(self, peer_url: str, instance_id: int | None, workers: int = 1,
                 worker_ports: Sequence[int] = ()) -> None:
        self.peer_url = peer_url
        self.workers = workers
        self.worker_ports = tuple(worker_ports)
        # This host's instance id (the worker's id without its worker number).
        self.host = (instance_id or 0) // workers

    def is_local(self, instance: int) -> bool:
        """Whether `instance` is a worker of this host."""
        return self.workers > 1 and instance // self.workers == self.host

    def url_of(self, instance: int) -> str | None:
        """The base URL that serves `instance`'s sessions; None where none is known (another
        host without --peer-url, or a worker number this host does not have)."""
        if self.is_local(instance):
            worker = instance % self.workers
            if worker >= len(self.worker_ports):
                return None
            return f"http://{WORKER_HOST}:{self.worker_ports[worker]}"
        if not self.peer_url:
            return None
        return self.peer_url.format(instance=instance // self.workers).rstrip("/")


class PeerForwarder:
    """Sends requests on to the instance that owns their session and streams the answers back."""

    def __init__(self, routes: InstanceRoutes, instance_id: int | None) -> None:
        self.routes = routes
        self.instance_id = instance_id
        self._http: aiohttp.ClientSession | None = None

    async def forward(self, request: web.Request, instance: int,
                      base_url: str) -> web.StreamResponse:
        if request.content_type.startswith("multipart/"):
            raise ApiError(421, f"this upload is for a session of orchestrator instance "
                           f"{instance}, and uploads are not forwarded: send it to that "
                           "orchestrator")
        # What the handler read (aiohttp keeps it), or what it left unread; GET: nothing.
        body = await request.read() or None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        headers[FORWARDED_BY_HEADER] = str(self.instance_id)
        if self.routes.is_local(instance):
            headers[LOCAL_HOP_HEADER] = str(self.instance_id)
        headers["X-Forwarded-For"] = ", ".join(
            h for h in (request.headers.get("X-Forwarded-For"), request.remote) if h)
        url = base_url + request.rel_url.path_qs
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
                auto_decompress=False)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._relay_websocket(request, instance, url, headers)
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

    async def _relay_websocket(self, request: web.Request, instance: int, url: str,
                               headers: dict[str, str]) -> web.WebSocketResponse:
        """A WebSocket (/audio_stream) for another instance's session: a socket to the owner,
        and every message relayed both ways until either side closes. The WebSocket's own
        handshake headers are the client library's to make."""
        headers = {k: v for k, v in headers.items() if not k.lower().startswith("sec-websocket")}
        try:
            upstream = await self._http.ws_connect(url, headers=headers, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            raise ApiError(exc.status if 400 <= exc.status < 600 else 502,
                           f"the orchestrator of this session (instance {instance}) refused "
                           f"the WebSocket: {exc.status}") from None
        except (aiohttp.ClientConnectionError, TimeoutError):
            raise ApiError(502, f"the orchestrator of this session (instance {instance}) "
                           "does not answer") from None
        client = web.WebSocketResponse(max_msg_size=0)
        await client.prepare(request)

        async def pipe(source, sink) -> None:
            async for message in source:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await sink.send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await sink.send_bytes(message.data)
            await sink.close()

        async with upstream:
            directions = [asyncio.create_task(pipe(client, upstream)),
                          asyncio.create_task(pipe(upstream, client))]
            try:
                await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in directions:
                    task.cancel()
                await asyncio.gather(*directions, return_exceptions=True)
        await client.close()
        return client

    async def close(self, app: web.Application | None = None) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def install(app: web.Application, settings: Settings,
            worker_ports: Sequence[int] = ()) -> PeerForwarder | None:
    """With --peer-url or --workers > 1: the forwarding middleware (innermost so far) and its
    client's cleanup; the forwarder (None without either). `worker_ports`: each worker's
    private port on WORKER_HOST (workers.py)."""
    if not settings.peer_url and settings.workers == 1:
        return None
    routes = InstanceRoutes(settings.peer_url, settings.instance_id, settings.workers,
                            worker_ports)
    forwarder = PeerForwarder(routes, settings.instance_id)

    @web.middleware
    async def forward_elsewhere(request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ElsewhereSession as exc:
            base_url = routes.url_of(exc.instance)
            if base_url is None:  # no server is known for it: an unknown id, as without routes
                request.app[SERVICES_KEY].registry.misses.miss(current_client.get())
                raise UnknownSession(exc.sessionid) from None
            if FORWARDED_BY_HEADER in request.headers and (
                    not routes.is_local(exc.instance) or LOCAL_HOP_HEADER in request.headers):
                raise  # misdirected twice: never a loop
            return await forwarder.forward(request, exc.instance, base_url)

    app.middlewares.append(forward_elsewhere)
    app.on_cleanup.append(forwarder.close)
    return forwarder
