"""The WHEP endpoint and its resources (draft-ietf-wish-whep, shaped like WHIP, RFC 9725).

- `POST /whep` (`Content-Type: application/sdp`, the client's offer, its ICE candidates in
  it) → `201 Created`, `Content-Type: application/sdp` (the answer, every candidate in it),
  `Location: /whep/<resource>`, `X-Session-ID: <sessionid>` (LiveTalking's header):
  - without `sessionid` in the query: a session of the client's own, as `/offer` opens one and
    as LiveTalking's `/whep` does; `/offer`'s optional fields (`avatar`, `refaudio`,
    `reftext`, `llmid`, `custom_config`, `multiavatar_config`, `voice_mode`) may be given in
    the query string. Drive it with `/human` and the `X-Session-ID`.
  - with `?sessionid=N`: a viewer (recvonly) of the live session N, typically the server
    session (`?sessionid=0`): what `/human` says there every viewer sees and hears, in step with
    the RTMP push. For OBS and GStreamer, whose WHEP clients take only a URL and a token.
- `DELETE /whep/<resource>` → 200: the viewer leaves, or the client's own session closes.
- `PATCH /whep/<resource>` → 405 (`Allow: DELETE, OPTIONS`): neither trickle ICE nor ICE
  restarts are supported.
- Other methods on either URL → 405 with `Allow`; `OPTIONS` is the CORS preflight
  (orchestrator/http/access.py) like on every route, and without an `Origin` (a WHEP client's
  own) 204 with `Allow`, on the endpoint and on a resource alike. The access token (`--api-token`) is the
  `Authorization: Bearer` WHEP clients send.

Errors are the API's JSON `{"code", "msg"}` naming the problem: 415 for another content type,
400 for a body that is not an SDP offer (empty, not UTF-8, an answer, a sendonly section,
malformed) or a bad query field, 404 for an unknown session or resource (or with `--transport`
not naming whep), 503 at the viewer or session limit (with Retry-After at the viewer limit).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..errors import ApiError
from ..outputs.whep import WhepResources
from ..session.registry import ElsewhereSession
from .access import takes
from .api import check_offer_sdp, session_options
from .request_context import ok, require_triton, services_of
from .session_lookup import SESSIONID, find_session
from .validation import reject_bad_strings, within_read_timeout

WHEP_PATH = "/whep"
WHEP_RESOURCE_PATH = "/whep/{resource}"
SDP_CONTENT_TYPE = "application/sdp"
TRICKLE_ICE_CONTENT_TYPE = "application/trickle-ice-sdpfrag"
WHEP_RESOURCES_KEY = web.AppKey("whep_resources", WhepResources)
SESSION_ID_HEADER = "X-Session-ID"  # LiveTalking's /whep answers with it
# /offer's optional fields a WHEP client may give in the query string (strings all).
SESSION_QUERY_FIELDS = ("avatar", "refaudio", "reftext", "llmid", "custom_config",
                        "multiavatar_config", "voice_mode")
OFFER = "the SDP offer"
RECEIVING = ("recvonly", "sendrecv")

routes = web.RouteTableDef()


def _require_whep(request: web.Request) -> None:
    settings = services_of(request).settings
    if "whep" not in settings.transports:
        raise ApiError.not_found("WHEP is off on this server: start it with --transport whep "
                                 "(e.g. --transport webrtc,whep), docs/OUTPUTS.md")


async def read_offer(request: web.Request) -> str:
    """The offer SDP of the body, checked as /offer checks its `sdp` field, and that it is an
    offer (DTLS role actpass, RFC 8842) that receives (a sendonly section is refused)."""
    if request.content_type != SDP_CONTENT_TYPE:
        raise ApiError(415, f"Content-Type must be {SDP_CONTENT_TYPE} (the SDP offer as the "
                       f"body), got {request.content_type[:100]!r}")
    raw = await within_read_timeout(request, request.read(), OFFER)
    if not raw.strip():
        raise ApiError.bad_request(f"empty body: POST {OFFER} as {SDP_CONTENT_TYPE}")
    try:
        sdp = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError.bad_request(f"{OFFER} is not UTF-8 text") from None
    if "\0" in sdp:
        raise ApiError.bad_request(f"{OFFER} contains a NUL character")
    if "m=" not in sdp:
        raise ApiError.bad_request(f"{OFFER} is not an SDP offer (no media section)")
    description = check_offer_sdp(sdp, OFFER)
    media = [m for m in description.media if m.kind in ("audio", "video")]
    for m in media:
        if m.dtls.role != "auto":
            raise ApiError.bad_request(f"{OFFER} is an answer, not an offer ({m.kind} section "
                                       "has a=setup:active or passive; an offer has actpass)")
        if m.direction == "sendonly":
            raise ApiError.bad_request(f"{OFFER}: {m.kind} section is sendonly; a WHEP viewer "
                                       "receives (recvonly)")
    if not any((m.direction or "sendrecv") in RECEIVING for m in media):
        raise ApiError.bad_request(f"{OFFER} receives nothing: offer recvonly audio and/or "
                                   "video")
    return sdp


@routes.post(WHEP_PATH)
@takes(SDP_CONTENT_TYPE)
async def whep_offer(request: web.Request) -> web.StreamResponse:
    offered_at = asyncio.get_running_loop().time()
    _require_whep(request)
    services = services_of(request)
    resources = request.app[WHEP_RESOURCES_KEY]
    watched = request.query.get(SESSIONID)
    if watched is None:  # a session of its own: Triton must be there, as for /offer
        require_triton(services)
        fields = {k: v for k, v in request.query.items() if k in SESSION_QUERY_FIELDS}
        reject_bad_strings(fields, "")
        options = session_options(fields, services.settings)
    sdp = await read_offer(request)
    if watched is None:
        session, answer = await services.session_factory.open_peer(options, sdp, offered_at)
        session.transport = "whep"
        resource = resources.own(session)
    else:
        session = find_session(services, watched, f"query parameter '{SESSIONID}'")
        resource, answer = await resources.view(session, sdp, services.rtc_configuration,
                                                services.settings.setup_timeout_s)
    return web.Response(status=201, text=answer, content_type=SDP_CONTENT_TYPE,
                        headers={"Location": f"{WHEP_PATH}/{resource}",
                                 SESSION_ID_HEADER: str(session.sessionid)})


# DELETE and PATCH of one path stay adjacent: aiohttp then keeps them on one resource, which
# the CORS preflight needs.
@routes.delete(WHEP_RESOURCE_PATH)
async def whep_delete(request: web.Request) -> web.Response:
    _check_here(request, request.match_info["resource"])
    await request.app[WHEP_RESOURCES_KEY].delete(request.match_info["resource"])
    return ok()


@routes.patch(WHEP_RESOURCE_PATH)
@takes(TRICKLE_ICE_CONTENT_TYPE)
async def whep_patch(request: web.Request) -> web.Response:
    _check_here(request, request.match_info["resource"])
    request.app[WHEP_RESOURCES_KEY].check(request.match_info["resource"])
    return web.json_response(
        {"code": 405, "msg": "trickle ICE and ICE restarts are not supported: POST a new offer "
         "with all its candidates (and DELETE this resource)"},
        status=405, headers={"Allow": "DELETE, OPTIONS"})


def _check_here(request: web.Request, resource: str) -> None:
    """ElsewhereSession (forwarded: http/instance_forward.py) for a resource of another
    orchestrator instance or worker, which its id names (outputs/whep.py)."""
    instance = WhepResources.instance_of(resource)
    registry = services_of(request).registry
    if instance is not None and registry.forward_elsewhere and instance != registry.instance_id:
        raise ElsewhereSession(resource, instance)
