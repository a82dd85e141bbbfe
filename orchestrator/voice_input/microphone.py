"""The user's microphone: a remote WebRTC audio track (48 kHz Opus, decoded by aiortc) as
the frames every VAD engine takes (vad/base.py: 16 kHz mono float32, VAD_FRAME_SAMPLES).

Reading the track is the only thing done here; it never touches the outgoing media clock (the
session's player), so a slow or silent uplink cannot stall the avatar's stream.

Missing audio is silence, by the wall clock: when the track's packets stop while its peer stays
connected (a muted tab that stops sending, a network stall), the time without audio is handed on
as silent frames after UPLINK_STALL_S, so an utterance under way ends by the end-of-turn
silence (`--vad-min-silence`) instead of whenever packets come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import av
import numpy as np
from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..vad.base import VAD_FRAME_S, VAD_FRAME_SAMPLES, VAD_SAMPLE_RATE_HZ

INT16_FULL_SCALE = 32768.0
# aiortc holds each received audio packet until 4 more have arrived (80 ms of 20 ms packets)
# before decoding it. For the listener that is 80 ms later on every speech start and end; one
# packet (20 ms) still puts packets that arrive out of order back in order.
UPLINK_PREFETCH_PACKETS = 1
UPLINK_JITTER_CAPACITY_PACKETS = 16  # aiortc's own audio capacity
# Packets come every 20 ms: none for this long is a stall, and from then on the time without
# audio (counted from the last frame received) is silence. Long enough that a late burst of a
# loaded sender or a jittery network (a few hundred ms) is not taken for the end of a turn:
# whatever is filled in is more than --vad-min-silence, so a stall ends the utterance.
UPLINK_STALL_S = 1.0
# Silence is filled in for at most this long per stall: more than any end-of-turn silence; a
# track that stays without audio longer costs no VAD work until it sends again.
UPLINK_SILENCE_FILL_S = 10.0


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

    def silence(self) -> np.ndarray:
        """A frame of silence for audio that did not come; the samples held back from the last
        received frame (less than a frame) begin it."""
        frame = np.zeros(self.frame_samples, np.float32)
        frame[:self._pending.size] = self._pending
        self._pending = np.zeros(0, np.float32)
        return frame


async def uplink_frames(track: MediaStreamTrack, stall_s: float = UPLINK_STALL_S,
                        fill_s: float = UPLINK_SILENCE_FILL_S) -> AsyncIterator[np.ndarray]:
    """Frames of the user's audio (float32 [VAD_FRAME_SAMPLES], 16 kHz) until the track ends.

    When no audio arrives for `stall_s` seconds after some did, silent frames stand for the time
    without it: as many as fit since the last received frame, then one every VAD_FRAME_S of
    wall-clock time, for at most `fill_s` seconds; audio arriving again goes on from there.
    """
    frames = UplinkFrames()
    loop = asyncio.get_running_loop()
    max_filled = round(fill_s / VAD_FRAME_S)
    last_audio: float | None = None  # loop time the last frame was received
    filled = 0  # silent frames given since then
    receiving = asyncio.ensure_future(track.recv())
    try:
        while True:
            timeout = None  # before the first audio, or after a whole fill: wait for audio
            if last_audio is not None and filled < max_filled:
                due = last_audio + max(stall_s, (filled + 1) * VAD_FRAME_S)
                timeout = max(due - loop.time(), 0.0)
            done, _ = await asyncio.wait({receiving}, timeout=timeout)
            if receiving in done:
                try:
                    received = receiving.result()
                except MediaStreamError:
                    return
                receiving = asyncio.ensure_future(track.recv())
                last_audio, filled = loop.time(), 0
                for frame in frames.push(received):
                    yield frame
                continue
            assert last_audio is not None
            owed = min(int((loop.time() - last_audio) / VAD_FRAME_S), max_filled)
            while filled < owed:
                filled += 1
                yield frames.silence()
    finally:
        receiving.cancel()
        if receiving.done() and not receiving.cancelled():
            receiving.exception()  # a track that ended meanwhile: nothing to report
