"""WHEP resources: viewers of a session, and sessions WHEP clients open for themselves.

The protocol is WHEP (draft-ietf-wish-whep; the egress twin of WHIP, RFC 9725): the client POSTs
its SDP offer, gets `201 Created` with the answer and the `Location` of its resource, and
DELETEs that resource to leave (orchestrator/http/whep_api.py has the HTTP side).

A viewer (`POST /whep?sessionid=N`, for broadcast tools: OBS's WHEP source, GStreamer's
whepsrc/whepclientsrc) is a recvonly peer of a live session, typically the server session 0:
a sink of it (media/sinks.py) that turns each tick into one picture and two 20 ms pieces of
sound for tracks of its own (our encoders, one per viewer: video_track.py, audio_track.py), so
every viewer, the RTMP push and the recorder carry the same media clock. A viewer whose peer has not connected within the setup
timeout, or has failed or closed, is removed. A client's own session (`POST /whep`, as
LiveTalking's /whep) is an ordinary peer session (`SessionFactory.open_peer`); here it only gets a
resource id, so that DELETE closes it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from ..errors import ApiError
from ..media.audio_track import AudioTrack, Sound
from ..media.clock import AUDIO_PACKETS_PER_TICK, AUDIO_SAMPLES_PER_PACKET, MediaClock
from ..media.rtcp_feedback import route_feedback
from ..media.video_track import Picture, VideoTrack, sent_video_codec
from ..session.peer_watch import wait_peer_gone
from ..session.session import Session

log = logging.getLogger(__name__)

RESOURCE_ID_BYTES = 16  # a viewer resource's id is its capability: unguessable
INSTANCE_MARK = "."  # between a resource id's instance and its token (never in a token)
# At the viewer limit, a client is asked to try again after this long (the 503's Retry-After):
# a slot frees when a viewer leaves, or at the latest its setup timeout after a failed one.
VIEWER_LIMIT_RETRY_AFTER_S = 5


def _playing() -> None:
    """The session plays already: a viewer's first pull starts nothing."""


class WhepViewer:
    """One viewer: its peer connection and the two tracks the session's ticks feed."""

    def __init__(self, resource: str, session: Session, pc: RTCPeerConnection,
                 on_closed: Callable[[str], None]) -> None:
        self.resource = resource
        self.session = session
        self.pc = pc
        # Its own encoders (orchestrator/video_encoders): a sink sees pictures, not which
        # idle-loop frame they are, so it shares no idle stream.
        self.video = VideoTrack(_playing, session.avatar.width, session.avatar.height)
        self.audio = AudioTrack(_playing)
        self.ticks = 0
        self._on_closed: Callable[[str], None] | None = on_closed
        self._watch: asyncio.Task | None = None
        self._closed = False

    def add(self, tick: int, image: np.ndarray, pcm: np.ndarray) -> None:
        """The tick as the session's own tracks carry it: same timestamps, same packets."""
        self.video.push(Picture(image, MediaClock.video_pts(tick), None))
        for packet in range(AUDIO_PACKETS_PER_TICK):
            samples = pcm[packet * AUDIO_SAMPLES_PER_PACKET:(packet + 1) * AUDIO_SAMPLES_PER_PACKET]
            self.audio.push(Sound(samples, MediaClock.audio_pts(tick, packet)))
        self.ticks += 1

    async def answer(self, offer_sdp: str) -> str:
        """Negotiate the viewer's offer: the answer SDP, all candidates included (aiortc
        gathers before it answers; there is no trickle ICE)."""
        self.pc.addTrack(self.audio)
        route_feedback(self.pc.addTrack(self.video), self.video)  # PLI/FIR, REMB: our encoder
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except (ValueError, KeyError, AttributeError, IndexError) as exc:
            raise ApiError.bad_request(f"the SDP offer could not be negotiated: {exc}") from None
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        codec = sent_video_codec(self.pc.localDescription.sdp)
        if codec is not None:
            self.video.use_codec(codec)
        return self.pc.localDescription.sdp

    def watch(self, setup_timeout_s: float) -> None:
        """Remove the viewer when its peer is gone (or never connects)."""
        self._watch = asyncio.create_task(self._end_with_peer(setup_timeout_s),
                                          name=f"whep-{self.resource[:8]}")

    async def _end_with_peer(self, setup_timeout_s: float) -> None:
        reason = await wait_peer_gone(self.pc, setup_timeout_s)
        await self.close(reason)

    def describe(self) -> dict:
        return {"type": "whep", "state": self.pc.connectionState, "ticks": self.ticks}

    async def close(self, reason: str = "closed") -> None:
        if self._closed:
            return
        self._closed = True
        self.session.remove_sink(self)
        watch, self._watch = self._watch, None
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        self.video.stop()
        self.audio.stop()
        await self.pc.close()
        on_closed, self._on_closed = self._on_closed, None
        if on_closed is not None:
            on_closed(self.resource)
        log.info("whep viewer closed sessionid=%s viewer=%s reason=%s ticks=%s",
                 self.session.sessionid, self.resource[:8], reason, self.ticks)


class WhepResources:
    """This server's WHEP resources by id: viewers of a session (at most `max_viewers`, opening
    ones included) and sessions a WHEP client opened for itself (the session limit counts
    those). A resource id is the capability to DELETE it: unguessable."""

    def __init__(self, max_viewers: int, instance_id: int | None = None) -> None:
        self.max_viewers = max_viewers
        # Several orchestrators (--workers, --peer-url): ids start with "<instance>." so that
        # a DELETE reaching another one is sent here (http/whep_api.py).
        self.instance_id = instance_id
        self._viewers: dict[str, WhepViewer] = {}
        self._sessions: dict[str, Session] = {}
        self._watches: set[asyncio.Task] = set()

    def _new_id(self) -> str:
        token = secrets.token_urlsafe(RESOURCE_ID_BYTES)
        return token if self.instance_id is None else f"{self.instance_id}{INSTANCE_MARK}{token}"

    @staticmethod
    def instance_of(resource: str) -> int | None:
        """The instance a resource id names ("<instance>.<token>"); None for ids without one
        (a token has no '.')."""
        head, mark, _ = resource.partition(INSTANCE_MARK)
        return int(head) if mark and head.isdigit() and len(head) <= 4 else None

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    async def view(self, session: Session, offer_sdp: str, rtc_configuration: RTCConfiguration,
                   setup_timeout_s: float) -> tuple[str, str]:
        """A new viewer of `session`: its resource id and answer SDP; 503 with Retry-After
        at the viewer limit."""
        if len(self._viewers) >= self.max_viewers:
            raise ApiError(503, f"viewer limit reached: {self.max_viewers} WHEP viewers "
                           f"(--max-whep-viewers); retry in {VIEWER_LIMIT_RETRY_AFTER_S} s",
                           headers={"Retry-After": str(VIEWER_LIMIT_RETRY_AFTER_S)})
        resource = self._new_id()
        viewer = WhepViewer(resource, session, RTCPeerConnection(rtc_configuration),
                            self._viewers.pop)
        self._viewers[resource] = viewer  # counted from here: the limit holds while negotiating
        try:
            answer = await viewer.answer(offer_sdp)
        except BaseException:
            await viewer.close("negotiation failed")
            raise
        if session.closed:  # it ended while we negotiated
            await viewer.close("session closed")
            raise ApiError.not_found(f"session {session.sessionid} has ended")
        session.add_sink(viewer)
        viewer.watch(setup_timeout_s)
        log.info("whep viewer opened sessionid=%s viewer=%s viewers=%s", session.sessionid,
                 resource[:8], len(self._viewers))
        return resource, answer

    def own(self, session: Session) -> str:
        """A session opened by a WHEP client: its resource id, forgotten when it closes."""
        resource = self._new_id()
        self._sessions[resource] = session
        watch = asyncio.create_task(self._forget_when_closed(resource, session),
                                    name=f"whep-session-{session.sessionid}")
        self._watches.add(watch)
        watch.add_done_callback(self._watches.discard)
        return resource

    async def _forget_when_closed(self, resource: str, session: Session) -> None:
        await session.wait_closed()
        self._sessions.pop(resource, None)

    def check(self, resource: str) -> None:
        """404 naming the resource unless it is live."""
        if resource not in self._viewers and resource not in self._sessions:
            raise ApiError.not_found(f"unknown WHEP resource {resource[:40]!r} (it was "
                                     "deleted, its peer went away, or the server restarted)")

    async def delete(self, resource: str) -> None:
        """End the resource: a viewer leaves; a WHEP client's own session closes."""
        self.check(resource)
        viewer = self._viewers.get(resource)
        if viewer is not None:
            await viewer.close("deleted by the viewer")
            return
        await self._sessions.pop(resource).close("deleted by the WHEP client")

    async def close(self) -> None:
        for watch in list(self._watches):
            watch.cancel()
        await asyncio.gather(*self._watches, *(viewer.close("server stopping")
                             for viewer in list(self._viewers.values())),
                             return_exceptions=True)
