"""The user's microphone: a remote WebRTC audio track (48 kHz Opus, decoded by aiortc) as
the frames every VAD engine takes (vad/base.py: 16 kHz mono float32, VAD_FRAME_SAMPLES).

Reading the track is the only thing done here; it never touches the outgoing media clock (the
session's player), so a slow or silent uplink cannot stall the avatar's stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import av
import numpy as np
from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..vad.base import VAD_FRAME_SAMPLES, VAD_SAMPLE_RATE_HZ

INT16_FULL_SCALE = 32768.0
# aiortc holds each received audio packet until 4 more have arrived (80 ms of 20 ms packets)
# before decoding it. For the listener that is 80 ms later on every speech start and end; one
# packet (20 ms) still puts packets that arrive out of order back in order.
UPLINK_PREFETCH_PACKETS = 1
UPLINK_JITTER_CAPACITY_PACKETS = 16  # aiortc's own audio capacity


def shorten_jitter_buffer(receiver: RTCRtpReceiver) -> None:
    """Call before media flows (the peer connection's "track" event). aiortc has no option
    for it: the receiver's buffer is replaced; an aiortc without that attribute is left as is."""
    name = "_RTCRtpReceiver__jitter_buffer"
    if isinstance(getattr(receiver, name, None), JitterBuffer):
        setattr(receiver, name, JitterBuffer(capacity=UPLINK_JITTER_CAPACITY_PACKETS,
                                             prefetch=UPLINK_PREFETCH_PACKETS))


class UplinkFrames:
    """Resamples every received frame once (PyAV, to 16 kHz mono) and cuts fixed frames."""

    def __init__(self, frame_samples: int = VAD_FRAME_SAMPLES,
                 rate_hz: int = VAD_SAMPLE_RATE_HZ) -> None:
        self.frame_samples = frame_samples
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_hz)
        self._pending = np.zeros(0, np.float32)

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        """The whole frames now available after `frame`."""
        pieces = [self._pending]
        for out in self._resampler.resample(frame):
            pieces.append(out.to_ndarray().ravel().astype(np.float32) / INT16_FULL_SCALE)
        pending = np.concatenate(pieces)
        n = pending.size // self.frame_samples
        frames = [pending[k * self.frame_samples:(k + 1) * self.frame_samples]
                  for k in range(n)]
        self._pending = pending[n * self.frame_samples:]
        return frames


async def uplink_frames(track: MediaStreamTrack) -> AsyncIterator[np.ndarray]:
    """Frames of the user's audio until the track ends."""
    frames = UplinkFrames()
    while True:
        try:
            received = await track.recv()
        except MediaStreamError:
            return
        for frame in frames.push(received):
            yield frame
