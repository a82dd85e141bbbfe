"""The session's video track: pictures in, encoded frames out, from a shared idle stream when it
can and from the session's own encoder otherwise.

The player pushes one `Picture` per tick (the stage's image, its RTP pts, and which idle-loop
frame it is, if it is one). aiortc's sender pulls them (`recv`) and gets `av.Packet`s, which it
only packetizes (aiortc 1.16 RTCRtpSender: a packet goes to its encoder's `pack`, a frame to
`encode`): so the encoding is ours, with our real-time settings (orchestrator/video_encoders).

Switching, per tick:
- an idle-loop picture while the track follows the shared stream (`_joined`): the shared frame,
  if it directly follows the last one this track sent; a gap leaves the shared stream;
- an idle-loop picture otherwise: the shared frame if it is a keyframe (the track joins), else a
  keyframe is asked of the shared stream and the picture goes through the own encoder;
- any other picture (speech, a clip, a cross-fade): the own encoder; its first frame after the
  shared stream is a keyframe, since the receiver's reference pictures are the shared ones.
RTP time is always the picture's pts from the session's clock, so the receiver sees one
continuous stream whichever encoder made a frame.

A picture loss report (PLI/FIR, routed here by orchestrator/media/rtcp_feedback.py) makes the next own
frame a keyframe, and leaves the shared stream until its next keyframe. The receiver's bit rate
estimate (REMB) sets the own encoder's target and bounds the shared stream's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
from aiortc.sdp import SessionDescription

from . import stage_timing
from .clock import VIDEO_TIME_BASE
from .idle_stream import IdleFrame, IdleStream, IdleStreams, SharedFrame
from .tracks import MAX_QUEUED_FRAMES, PlayerTrack
from .video_encoders import EncodedFrame, VideoEncoder, encoder_class, open_encoder

log = logging.getLogger(__name__)

DEFAULT_MIME_TYPE = "video/VP8"  # what aiortc would send were the answer never read


@dataclass(frozen=True)
class Picture:
    image: np.ndarray  # uint8 [H, W, 3] RGB at the session's frame size
    pts: int  # RTP time, in VIDEO_TIME_BASE (90 kHz) units
    idle: IdleFrame | None  # the idle-loop frame `image` is exactly, if it is one


def sent_video_codec(answer_sdp: str) -> str | None:
    """The codec our answer sends video with ("video/H264"), None without a video section:
    the first one the answer lists, as aiortc's sender uses the first of the same list
    (aiortc 1.16 RTCPeerConnection: both come from the transceiver's negotiated codecs)."""
    for media in SessionDescription.parse(answer_sdp).media:
        if media.kind == "video" and media.rtp.codecs:
            return media.rtp.codecs[0].mimeType
    return None


class VideoTrack(PlayerTrack):
    def __init__(self, on_first_recv: Callable[[], None], width: int, height: int,
                 idle_streams: IdleStreams | None = None) -> None:
        super().__init__("video", on_first_recv, MAX_QUEUED_FRAMES)
        self.width, self.height = width, height
        self._idle_streams = idle_streams  # None: every frame from the own encoder
        self.mime_type = DEFAULT_MIME_TYPE
        self._target_bps = encoder_class(self.mime_type).default_bitrate_bps
        self._own: VideoEncoder | None = None
        self._own_keyframe = True  # the next own frame must be a keyframe
        self._stream: IdleStream | None = None
        self._joined = False  # the receiver decodes the shared stream's frames
        self._last_shared: int | None = None  # tick of the last shared frame sent
        # What was sent, for metrics and tests.
        self.frames_shared = 0
        self.frames_own = 0
        self.keyframes_own = 0
        self.frames_skipped = 0  # ticks the shared stream passed over, sent as nothing
        self.switches = 0  # between the shared stream and the own encoder, either way
        self.keyframe_requests = 0  # PLI/FIR from the receiver

    # --- set up by the session's negotiation and RTCP ---------------------------------------
    def use_codec(self, mime_type: str) -> None:
        """The codec the peer negotiated ("video/H264", "video/VP8"); before the first frame."""
        encoder_class(mime_type)  # ValueError for one we cannot encode
        self.mime_type = mime_type
        self.target_bitrate_bps = encoder_class(mime_type).default_bitrate_bps

    @property
    def target_bitrate_bps(self) -> int:
        return self._target_bps

    @target_bitrate_bps.setter
    def target_bitrate_bps(self, bitrate_bps: int) -> None:
        cls = encoder_class(self.mime_type)
        self._target_bps = max(cls.min_bitrate_bps, min(int(bitrate_bps), cls.max_bitrate_bps))
        if self._own is not None:
            self._own.target_bitrate_bps = self._target_bps

    @property
    def encoder_bitrate_bps(self) -> int | None:
        """The own encoder's running bit rate (None before its first frame)."""
        return self._own.bitrate_bps if self._own is not None else None

    def request_keyframe(self) -> None:
        """The receiver lost a picture (PLI) or asks for a full one (FIR)."""
        self.keyframe_requests += 1
        self._own_keyframe = True
        if self._joined:
            self._joined = False  # its decoder lost the shared stream: rejoin at a keyframe
            self.switches += 1

    # --- aiortc's sender pulls ------------------------------------------------------------
    async def recv(self) -> av.Packet:
        while True:
            picture: Picture = await super().recv()
            encoded = await self._encoded(picture)
            if encoded is not None:
                packet = av.Packet(encoded.data)
                packet.pts = picture.pts
                packet.time_base = VIDEO_TIME_BASE
                return packet

    async def _encoded(self, picture: Picture) -> EncodedFrame | None:
        stream = self._follow(picture.idle)
        if stream is not None:
            shared = await stream.frame(picture.idle)
            if self._joined:
                if shared is None and stream.kept(picture.idle.tick):
                    # A tick the stream passed over (another viewer asked for the next one
                    # first): sending nothing keeps the receiver in step with the shared frames,
                    # it shows the last one 40 ms longer.
                    self.frames_skipped += 1
                    return None
                if shared is not None and (shared.frame.keyframe
                                           or shared.previous == self._last_shared):
                    return self._sent_shared(shared)
                # This track missed a shared frame, or lags behind the stream: the next ones
                # would not decode.
                self._leave()
            if shared is not None and shared.frame.keyframe:
                self._joined = True
                self.switches += 1
                return self._sent_shared(shared)
            stream.request_keyframe()
        elif self._joined:
            self._leave()
        return await self._encode_own(picture)

    def _follow(self, idle: IdleFrame | None) -> IdleStream | None:
        """The shared stream showing `idle` (joining it as a viewer), or None for a picture of
        our own; a different stream, or none, means leaving the current one."""
        stream = self._stream
        if stream is not None and (idle is None or stream.key.avatar is not idle.avatar):
            self._unfollow()
            stream = None
        if stream is None and idle is not None and self._idle_streams is not None:
            stream = self._stream = self._idle_streams.join(
                self, idle, self.width, self.height, self.mime_type)
        return stream

    def _unfollow(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.remove(self)
        if self._joined:
            self._leave()

    def _leave(self) -> None:
        self._joined = False
        self._own_keyframe = True
        self.switches += 1

    def _sent_shared(self, shared: SharedFrame) -> EncodedFrame:
        self._last_shared = shared.tick
        self._own_keyframe = True  # the own encoder's references are stale now
        self.frames_shared += 1
        return shared.frame

    async def _encode_own(self, picture: Picture) -> EncodedFrame | None:
        if self.readyState != "live":
            return None  # stopped while waiting for a shared frame
        if self._own is None:
            self._own = open_encoder(self.mime_type, self.width, self.height, self._target_bps)
        keyframe, self._own_keyframe = self._own_keyframe, False
        loop = asyncio.get_running_loop()
        encoded = await loop.run_in_executor(None, _timed_encode, self._own, picture.image,
                                             keyframe)
        if encoded is None:
            self._own_keyframe = self._own_keyframe or keyframe  # still owed
            return None
        self.frames_own += 1
        self.keyframes_own += encoded.keyframe
        return encoded

    def stop(self) -> None:
        super().stop()
        self._unfollow()
        own, self._own = self._own, None
        if own is not None:
            own.close()


def _timed_encode(encoder: VideoEncoder, image: np.ndarray, keyframe: bool) -> EncodedFrame | None:
    """`encoder.encode`, its time recorded as VIDEO_ENCODE (in the executor's thread)."""
    with stage_timing.timed(stage_timing.VIDEO_ENCODE):
        return encoder.encode(image, keyframe)
