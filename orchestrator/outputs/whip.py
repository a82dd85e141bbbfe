"""WHIP push: a session's ticks as WebRTC (H.264 or VP8, and Opus) to a WHIP endpoint (RFC 9725:
SRS, mediamtx, Janus's WHIP server, a platform's WebRTC ingest), the way LiveTalking's
`--transport rtcpush` pushes to `--push_url`.

The protocol, as the client side of RFC 9725: our SDP offer (sendonly audio and video, every
ICE candidate in it: aiortc gathers before it offers, there is no trickle ICE) is POSTed to the
endpoint with `Content-Type: application/sdp` and `Authorization: Bearer <--push-token>`; the
endpoint answers `201 Created` with the SDP answer and the `Location` of the session's WHIP
resource (a 307/308 redirect on the way is followed, the token sent on); a DELETE of that
resource ends the session (at shutdown, and before each reconnect,
so that a media server still holding the old session frees the stream for the new one). The
offer lists H.264 before VP8 (what SRS and most ingests take; the endpoint picks), Opus for the
audio.

Media: like a WHEP viewer (outputs/whep.py) the push is a sink of the session: each tick is one
picture and two 20 ms pieces of sound for tracks of its own (media/video_track.py with its own
encoder, media/audio_track.py), stamped by the session's media clock, so the push carries the
same clock as the session's peer, the RTMP push and the recorder. A PLI/FIR or REMB from the
media server reaches the encoder (media/rtcp_feedback.py).

Outages: aiortc cannot restart ICE on a live connection (it has no `restartIce`), so a lost
connection is replaced by a new one: a new offer POSTed to the endpoint (RFC 9725 §4.3 allows
a client whose ICE restart is impossible to start a new session). A connection is lost when its
peer connection fails or closes (a media server that closes its session: at once; ICE consent
expiry: ~30 s), when the media server has sent no RTCP for MEDIA_SERVER_SILENCE_S while it
did before (a media server that died or lost its network: every receiver sends reports about
once a second) or none in the FIRST_RTCP_WITHIN_S after connecting (one that died first), or
when it does not connect within CONNECT_TIMEOUT_S of the POST. The next
attempt comes after RECONNECT_BACKOFF_S, doubling up to MAX_RECONNECT_BACKOFF_S, so media flows
again at most about MAX_RECONNECT_BACKOFF_S plus a connection's set-up after the media server is
back. Each outage is logged once (with its cause), and once more when the push is back;
`livehuman_output_outages` counts them, `livehuman_output_up` is 0 meanwhile. The URL's query and
last path part (a stream name or key) and the token never appear in logs, metrics or
/api/admin/sessions.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from urllib.parse import urljoin

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from ..media.audio_track import AudioTrack, Sound
from ..media.clock import AUDIO_PACKETS_PER_TICK, AUDIO_SAMPLES_PER_PACKET, MediaClock
from ..media.rtcp_feedback import route_feedback
from ..media.video_track import Picture, VideoTrack, sent_video_codec
from ..session.peer_watch import wait_peer_gone
from ..settings import redact_stream_key
from .base import MAX_RECONNECT_BACKOFF_S, RECONNECT_BACKOFF_S, OutputMetrics, PushLink

log = logging.getLogger(__name__)

SDP_CONTENT_TYPE = "application/sdp"
# The video codecs offered, in order of preference (the endpoint answers with the first it takes).
OFFERED_VIDEO_CODECS = ("video/H264", "video/VP8")
OFFERED_AUDIO_CODEC = "audio/opus"
REQUEST_TIMEOUT_S = 10.0  # a POST or DELETE to the endpoint
REDIRECT_STATUSES = (307, 308)  # the redirects that keep the method and body (RFC 9110)
MAX_REDIRECTS = 5
DELETE_TIMEOUT_S = 3.0  # the DELETE at shutdown or before a reconnect: never holds them long
CONNECT_TIMEOUT_S = 10.0  # from the answer to a connected peer
# No RTCP from the media server for this long (after it sent some) ends a connection.
MEDIA_SERVER_SILENCE_S = 5.0
# ... and none at all for this long after connecting: a WebRTC receiver sends its first report
# within about a second (RFC 3550 §6.2 halves the first interval; aiortc 0.5-1.5 s, browsers
# ~1 s), so a media server that died before it did is noticed here, not only when ICE consent
# expires (~30 s). One that never sends RTCP is outside WebRTC: it is reconnected this often,
# and the log says why.
FIRST_RTCP_WITHIN_S = 10.0
SILENCE_CHECK_INTERVAL_S = 0.5


class WhipError(Exception):
    """The endpoint refused the offer or answered outside the protocol; the message says how
    (its status and the start of its body), never the URL's secrets."""


def _playing() -> None:
    """The session plays already: the push's first pull starts nothing."""


class _Connection:
    """One WHIP session: its peer connection, the tracks the ticks feed, its resource URL."""

    def __init__(self, pc: RTCPeerConnection, video: VideoTrack, audio: AudioTrack) -> None:
        self.pc = pc
        self.video = video
        self.audio = audio
        self.resource: str | None = None  # the WHIP resource's absolute URL, once answered
        self.rtcp_at: float | None = None  # monotonic time of the media server's last RTCP

    def heard(self) -> None:
        self.rtcp_at = time.monotonic()


def _watch_rtcp(sender: RTCRtpSender, connection: _Connection) -> None:
    """Note every RTCP packet the media server sends `sender` (its receiver reports, REMB,
    PLI), then let the sender handle it as before (media/rtcp_feedback.py's routing included)."""
    handle = sender._handle_rtcp_packet  # bound: the class's, or route_feedback's wrapper
    heard = weakref.WeakMethod(connection.heard)

    async def handle_rtcp(packet) -> None:
        note = heard()
        if note is not None:
            note()
        await handle(packet)

    sender._handle_rtcp_packet = handle_rtcp


class WhipPush(PushLink):
    """A sink (media/sinks.py) pushing a session to one WHIP endpoint, reconnecting for ever.

    `url`: the endpoint (http:// or https://); `token`: its bearer token (None: no
    Authorization header); `width`, `height`: the session's frame size (pixels);
    `rtc_configuration`: the server's ICE servers (--stun, --turn). Construct it on the event
    loop: it starts connecting at once. `close()` ends it (DELETE of the resource).
    """

    def __init__(self, url: str, token: str | None, width: int, height: int,
                 rtc_configuration: RTCConfiguration, metrics: OutputMetrics | None = None,
                 silence_s: float = MEDIA_SERVER_SILENCE_S,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 first_rtcp_s: float = FIRST_RTCP_WITHIN_S) -> None:
        self.url = url
        self.label = redact_stream_key(url)
        self._token = token
        self.width, self.height = width, height
        self._rtc_configuration = rtc_configuration
        self._init_link(metrics)
        self.silence_s = silence_s
        self.first_rtcp_s = first_rtcp_s
        self.connect_timeout_s = connect_timeout_s
        self.dropped_ticks = 0
        self.ticks = 0  # ticks handed to a connected push
        self.video_codec: str | None = None  # what the endpoint chose, e.g. "video/H264"
        self._connection: _Connection | None = None
        self._closed = False
        self._http: aiohttp.ClientSession | None = None
        self._task = asyncio.create_task(self._run(), name=f"whip-push {self.label}")

    # --- the session's side ------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self.state == "up"

    def describe(self) -> dict:
        """For /api/admin/sessions: the URL without its secrets, and how the push goes."""
        return {"type": "whip", "url": self.label, "state": self.state,
                "connections": self.connections, "outages": self.outages,
                "video_codec": self.video_codec, "dropped_ticks": self.dropped_ticks}

    def add(self, tick: int, image: np.ndarray, pcm: np.ndarray) -> None:
        """The tick as the session's own tracks carry it: same timestamps. Dropped while not
        connected (a new connection starts with the live picture)."""
        connection = self._connection
        if connection is None or self.state != "up":
            return
        dropped = connection.video.dropped
        connection.video.push(Picture(image, MediaClock.video_pts(tick), None))
        for packet in range(AUDIO_PACKETS_PER_TICK):
            samples = pcm[packet * AUDIO_SAMPLES_PER_PACKET:(packet + 1) * AUDIO_SAMPLES_PER_PACKET]
            connection.audio.push(Sound(samples, MediaClock.audio_pts(tick, packet)))
        self.ticks += 1
        if connection.video.dropped > dropped:  # the encoder or the network fell behind
            self.dropped_ticks += 1
            if self._metrics is not None:
                self._metrics.dropped_ticks.inc()

    async def close(self) -> None:
        """Stop pushing: the connection's resource is DELETEd (waited for at most
        DELETE_TIMEOUT_S: a gone media server cannot hold the shutdown) and its peer closed.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._end(connection)
        if self._http is not None:
            await self._http.close()
        self.state = "down"
        if self._metrics is not None:
            self._metrics.up.set(0)
        log.info("whip push closed url=%s connections=%s outages=%s", self.label,
                 self.connections, self.outages)

    # --- connections, one after the other ----------------------------------------------------
    async def _run(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        while True:
            connection = self._new_connection()
            self._connection = connection
            try:  # cancelled by close(), which ends the current connection
                why = await self._push(connection)
            except WhipError as exc:
                why = str(exc)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                why = _cause(exc)
            await self._end(connection)  # again by close() if cancelled meanwhile: idempotent
            self._connection = None
            self._lost(why)
            await asyncio.sleep(self._next_backoff_s())

    def _new_connection(self) -> _Connection:
        pc = RTCPeerConnection(self._rtc_configuration)
        connection = _Connection(pc, VideoTrack(_playing, self.width, self.height),
                                 AudioTrack(_playing))
        video = pc.addTransceiver(connection.video, direction="sendonly")
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        video.setCodecPreferences([c for mime in OFFERED_VIDEO_CODECS for c in capabilities
                                   if c.mimeType.lower() == mime.lower()])
        audio = pc.addTransceiver(connection.audio, direction="sendonly")
        # Opus only: the track hands the sender Opus packets, which it only packetizes.
        audio.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("audio").codecs
                                   if c.mimeType.lower() == OFFERED_AUDIO_CODEC])
        route_feedback(video.sender, connection.video)  # PLI/FIR, REMB: our encoder
        _watch_rtcp(video.sender, connection)
        _watch_rtcp(audio.sender, connection)
        return connection

    async def _push(self, connection: _Connection) -> str:
        """Offer, connect and push until the connection is lost; why it was."""
        pc = connection.pc
        await pc.setLocalDescription(await pc.createOffer())
        answer = await self._post_offer(connection, pc.localDescription.sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except (ValueError, KeyError, AttributeError, IndexError) as exc:
            raise WhipError(f"the endpoint's SDP answer could not be used: {exc}") from None
        codec = sent_video_codec(answer)
        if codec is not None:
            connection.video.use_codec(codec)
        self.video_codec = codec
        gone = asyncio.create_task(wait_peer_gone(pc, self.connect_timeout_s))
        try:
            if not await _connected(pc, gone):
                return f"not connected: {gone.result() if gone.done() else 'closed'}"
            self._connected()
            silent = asyncio.create_task(self._media_server_silent(connection))
            try:
                await asyncio.wait((gone, silent), return_when=asyncio.FIRST_COMPLETED)
            finally:
                silent.cancel()
                await asyncio.gather(silent, return_exceptions=True)
            if silent.done() and not silent.cancelled() and silent.result() is not None:
                return silent.result()
            return f"the peer connection {gone.result()}"
        finally:
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)

    async def _post_offer(self, connection: _Connection, offer: str) -> str:
        """POST the offer; the answer SDP, the resource noted on `connection`. WhipError for
        anything but 201 Created with a Location and an SDP body."""
        headers = {"Content-Type": SDP_CONTENT_TYPE, "Accept": SDP_CONTENT_TYPE}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        url = self.url
        # Redirects (RFC 9725 §4.5: a load balancer's 307 to the media server that takes the
        # session) are followed here, not by aiohttp, which drops the Authorization header on
        # a redirect to another host: the endpoint's own redirect gets the token too.
        for _ in range(MAX_REDIRECTS + 1):
            async with self._http.post(url, data=offer.encode(), headers=headers,
                                       allow_redirects=False) as resp:
                body = await resp.text(errors="replace")
                location = resp.headers.get("Location")
                if resp.status in REDIRECT_STATUSES and location:
                    url = urljoin(url, location)
                    continue
                if resp.status != 201:
                    raise WhipError(f"the endpoint answered {resp.status} {resp.reason}: "
                                    f"{' '.join(body.split())[:200]!r}")
                if not location:
                    raise WhipError("the endpoint's 201 has no Location (RFC 9725 §4.2)")
                # Relative to the URL that answered (after any redirect).
                connection.resource = urljoin(url, location)
                break
        else:
            raise WhipError(f"the endpoint redirected more than {MAX_REDIRECTS} times")
        if "m=" not in body:
            raise WhipError(f"the endpoint's 201 holds no SDP answer: {body[:100]!r}")
        return body

    async def _media_server_silent(self, connection: _Connection) -> str | None:
        """Call once connected. Returns once the media server, having sent RTCP, has sent none
        for silence_s, or has sent none in the first_rtcp_s since."""
        connected_at = time.monotonic()
        while True:
            await asyncio.sleep(SILENCE_CHECK_INTERVAL_S)
            heard, now = connection.rtcp_at, time.monotonic()
            if heard is None and now - connected_at > self.first_rtcp_s:
                return (f"no RTCP from the media server in the {self.first_rtcp_s:g} s since "
                        "it connected")
            if heard is not None and now - heard > self.silence_s:
                return f"no RTCP from the media server for {self.silence_s:g} s"

    async def _end(self, connection: _Connection) -> None:
        """DELETE the connection's resource (best effort) and close its peer."""
        connection.video.stop()
        connection.audio.stop()
        resource, connection.resource = connection.resource, None
        if resource is not None and self._http is not None:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            try:
                async with asyncio.timeout(DELETE_TIMEOUT_S):
                    async with self._http.delete(resource, headers=headers) as resp:
                        if resp.status >= 300 and resp.status != 404:
                            log.info("whip push url=%s: DELETE of its resource answered %s",
                                     self.label, resp.status)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.debug("whip push url=%s: DELETE of its resource failed: %s", self.label,
                          _cause(exc))
        await connection.pc.close()

    def _connected(self) -> None:
        down_s = self._link_up()
        if down_s is not None:
            log.info("whip push back url=%s after %.1f s (video %s)", self.label, down_s,
                     self.video_codec)
        else:
            log.info("whip push connected url=%s (video %s)", self.label, self.video_codec)

    def _lost(self, why: str) -> None:
        """The connection (or the attempt) ended: log and count once per outage."""
        why = why.replace(self.url, self.label)
        if self._token:
            why = why.replace(self._token, "***")
        if not self._link_down():
            log.debug("whip push url=%s still down: %s", self.label, why[:300])
            return
        log.warning("whip push url=%s lost: %s; reconnecting (backoff %g-%g s)", self.label,
                    why[:300], RECONNECT_BACKOFF_S, MAX_RECONNECT_BACKOFF_S)


async def _connected(pc: RTCPeerConnection, gone: asyncio.Task) -> bool:
    """Wait until `pc` is connected (True) or `gone` (which watches it) ends first (False)."""
    reached = asyncio.Event()

    def check() -> None:
        if pc.connectionState == "connected":
            reached.set()

    pc.on("connectionstatechange", check)
    try:
        check()
        waiting = asyncio.ensure_future(reached.wait())
        try:
            await asyncio.wait((waiting, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        return reached.is_set()
    finally:
        pc.remove_listener("connectionstatechange", check)


def _cause(exc: BaseException) -> str:
    """One line naming an external failure (no traceback)."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if str(exc) else text
