"""The video encoder interface: one RGB picture in, one compressed frame out, real-time settings.

aiortc encodes every frame a track hands it with its own encoders (VP8 at its default speed,
H.264 at x264's default preset: 3.6-6 and 8-10 ms per 512x512 frame here); a track may hand it
pre-encoded `av.Packet`s instead, which it only packetizes (aiortc 1.16 `RTCRtpSender`,
`Encoder.pack`). Our tracks do that with these encoders: one per session, and one per shared idle
loop (orchestrator/media/idle_stream.py), all behind this interface, one module per codec family.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import av
import cv2
import numpy as np

from ..clock import VIDEO_FPS

ENCODER_TIME_BASE = Fraction(1, VIDEO_FPS)  # encoders count frames; RTP time comes from the track
# Following the receiver's estimate (REMB). FFmpeg's libx264 wrapper applies a new `bit_rate` to
# the running encoder (x264_encoder_reconfig before the next frame), up to the VBV ceiling the
# encoder was opened with (a higher rate is capped there); its libvpx wrapper never reconfigures
# libvpx after opening (vpx_codec_enc_config_set is not called; measured with PyAV 18, FFmpeg 8:
# the output stays at the old rate), so VP8 needs a new encoder. A new encoder starts with a
# keyframe and then ramps its quality up over about a second (VP8 from 500 to 440 kbps on the
# default avatar: 31-33 dB for twenty frames, against 35 dB running on; H.264 1 M to 500 k in
# place: no dip at all), which mid-speech is a visibly blocky burst. So:
# - a change within BITRATE_CHANGE_FRACTION of the running rate is ignored (as in aiortc);
# - where the codec can, the running encoder takes the new rate at once, falls and rises alike;
# - otherwise a rise must last BITRATE_RAISE_HOLD_FRAMES first (estimates ramp up by a few
#   percent a second at the start of a call), and then a new encoder opens only at a keyframe
#   the stream needs anyway (a picture loss, the switch from a shared idle stream to speech), or
#   once the change has waited REOPEN_MAX_WAIT_FRAMES for one (longer than most answers: with
#   the shared idle stream, every utterance starts with one). A fall waits the same way: a
#   browser's first estimate is often a little under our start (~440 k against 500 k, about a
#   second into the call), and on a link that really is congested packets are lost, and the
#   receiver's picture loss reports bring the keyframe at once.
BITRATE_CHANGE_FRACTION = 0.1
BITRATE_RAISE_HOLD_FRAMES = 250  # 10 s at 25 fps
REOPEN_MAX_WAIT_FRAMES = 750  # 30 s at 25 fps
# On-demand keyframes (a new viewer, a PLI/FIR) rather than periodic ones, as WebRTC senders do;
# this is only the longest run without one (2 min at 25 fps).
MAX_KEYFRAME_INTERVAL_FRAMES = 3000
# One thread per encoder: sessions already encode in parallel on the executor's threads.
ENCODER_THREADS = 1


@dataclass(frozen=True)
class EncodedFrame:
    data: bytes  # one compressed picture (H.264: Annex B NAL units; VP8: one frame)
    keyframe: bool  # decodable without any earlier frame


def yuv_frame(image: np.ndarray) -> av.VideoFrame:
    """uint8 [H, W, 3] RGB → a yuv420p frame (BT.601, limited range, as swscale converts), by
    OpenCV: a tenth of the time of `VideoFrame.from_ndarray(rgb24).reformat()` at 512x512."""
    height, width = image.shape[:2]
    if height % 2 or width % 2:  # I420 needs even sizes; swscale copes with odd ones
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(
            format="yuv420p")
    planes = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2YUV_I420)
    return av.VideoFrame.from_ndarray(planes, format="yuv420p")


class VideoEncoder(ABC):
    """Encodes one stream of pictures of one size (blocking calls: run them in an executor,
    never two at once on one encoder).

    `target_bitrate_bps` may be set at any time from any thread (the receiver's estimate); it is
    clamped to the codec's range and followed as the constants above say: in the running encoder
    where the codec allows it (`reconfigures_rate`), else by a new encoder at a keyframe.
    Requested keyframes are forced in the running encoder. `opened` counts the codec contexts
    opened (1 + the rate changes that took a new encoder), `rate_changes_in_place` the others.
    """

    mime_type: ClassVar[str]  # as aiortc names the negotiated codec ("video/VP8")
    default_bitrate_bps: ClassVar[int]
    min_bitrate_bps: ClassVar[int]
    max_bitrate_bps: ClassVar[int]
    # Whether FFmpeg's wrapper applies a new `bit_rate` to the running encoder, up to the rate
    # it was opened with (its rate-control ceiling).
    reconfigures_rate: ClassVar[bool] = False

    def __init__(self, width: int, height: int, bitrate_bps: int | None = None) -> None:
        self.width, self.height = width, height
        self._target_bps = self._clamped(bitrate_bps or self.default_bitrate_bps)
        self._context: av.VideoCodecContext | None = None
        self._ceiling_bps = 0  # the rate the running context was opened with
        self._frames = 0
        self._raised_for = 0  # frames the target has stayed above the running rate
        self._waited_for = 0  # frames a due new encoder has waited for a keyframe
        self._busy = threading.Lock()  # encode and close from different threads never overlap
        self.opened = 0
        self.rate_changes_in_place = 0

    @classmethod
    def _clamped(cls, bitrate_bps: int) -> int:
        return max(cls.min_bitrate_bps, min(int(bitrate_bps), cls.max_bitrate_bps))

    @property
    def target_bitrate_bps(self) -> int:
        return self._target_bps

    @target_bitrate_bps.setter
    def target_bitrate_bps(self, bitrate_bps: int) -> None:
        self._target_bps = self._clamped(bitrate_bps)

    @property
    def bitrate_bps(self) -> int | None:
        """The running encoder's bit rate (None before the first frame)."""
        return self._context.bit_rate if self._context is not None else None

    def encode(self, image: np.ndarray, keyframe: bool = False) -> EncodedFrame | None:
        """uint8 [height, width, 3] RGB → one frame, a keyframe when asked (and always the
        first); None when the encoder produced nothing for it (it dropped the frame)."""
        with self._busy:
            if self._context is None or self._new_encoder_due(keyframe):
                self._context = self._open(self._target_bps)  # starts with a keyframe
                self._ceiling_bps = self._target_bps
                self._raised_for = self._waited_for = 0
                self.opened += 1
            frame = yuv_frame(image)
            frame.pts = self._frames
            frame.time_base = ENCODER_TIME_BASE
            frame.pict_type = (av.video.frame.PictureType.I if keyframe
                               else av.video.frame.PictureType.NONE)
            packets = self._context.encode(frame)
            self._frames += 1
        if not packets:
            return None
        return EncodedFrame(b"".join(bytes(p) for p in packets), any(p.is_keyframe for p in packets))

    def _new_encoder_due(self, keyframe: bool) -> bool:
        """Follow the target before this frame: in the running encoder when it can (False), or
        True when a new encoder is due now (`keyframe`: this frame is to be one anyway)."""
        running, target = self._context.bit_rate, self._target_bps
        if abs(target - running) <= running * BITRATE_CHANGE_FRACTION:
            self._raised_for = self._waited_for = 0
            return False
        if self.reconfigures_rate and target <= self._ceiling_bps:
            self._context.bit_rate = target  # the wrapper reconfigures before the next frame
            self._raised_for = self._waited_for = 0
            self.rate_changes_in_place += 1
            return False
        if target > running:
            self._raised_for += 1
            if self._raised_for <= BITRATE_RAISE_HOLD_FRAMES:
                return False
        self._waited_for += 1
        return keyframe or self._waited_for > REOPEN_MAX_WAIT_FRAMES

    def close(self) -> None:
        """Free the codec (the next encode would open a new one, starting with a keyframe)."""
        with self._busy:
            self._context = None

    def _context_for(self, codec: str, bitrate_bps: int) -> av.VideoCodecContext:
        context = av.CodecContext.create(codec, "w")
        context.width, context.height = self.width, self.height
        context.pix_fmt = "yuv420p"
        context.time_base = ENCODER_TIME_BASE
        context.framerate = VIDEO_FPS
        context.bit_rate = bitrate_bps
        context.gop_size = MAX_KEYFRAME_INTERVAL_FRAMES
        context.thread_count = ENCODER_THREADS
        return context

    @abstractmethod
    def _open(self, bitrate_bps: int) -> av.VideoCodecContext:
        """A new codec context at this bit rate (its first frame is a keyframe)."""
