"""The session's audio track: 20 ms pieces of 16 kHz sound in, Opus packets out.

aiortc's sender would resample every 20 ms frame to 48 kHz stereo and Opus-encode it on the
default executor (aiortc 1.16 OpusEncoder): for an idle session, digital silence, 50 executor
round trips a second; with video shared (orchestrator/media/idle_stream.py) that was the largest part
of what an idle session still cost. Like the video track, this one hands the sender encoded
`av.Packet`s, which it only packetizes (`OpusEncoder.pack`: the packet's pts, converted to the
48 kHz RTP clock, is the RTP timestamp):
- silence (a piece of zeros) is one constant packet, encoded once for the whole server;
- sound goes through the track's own Opus encoder at 16 kHz mono, inline: 0.1-0.2 ms, less than
  an executor round trip. The encoder starts afresh after silence, as the receiver's decoder has
  just decoded silence too, so their states agree.
Opus packets say their own mode and channel count; a browser's (or aiortc's) decoder, set up
for the negotiated opus/48000/2, decodes these to 48 kHz stereo.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np

from . import stage_timing
from .clock import AUDIO_SAMPLE_RATE_HZ, AUDIO_SAMPLES_PER_PACKET, AUDIO_TIME_BASE
from .tracks import MAX_QUEUED_FRAMES, PlayerTrack

OPUS_BITRATE_BPS = 48_000  # wideband speech, mono
OPUS_APPLICATION = "voip"  # aiortc's choice: speech intelligibility first
# libopus's complexity (0-10, FFmpeg's `compression_level`; its default 10): 5 is what libwebrtc
# uses on mobile CPUs. Measured per 20 ms packet of speech at 16 kHz: 0.39 ms at 10, 0.17 at 0;
# two packets per video frame of every talking session. (Digital silence is one packet encoded
# once, at libopus's default: at 5 its silence alternates between two packets.)
OPUS_COMPLEXITY = 5
OPUS_DEFAULT_COMPLEXITY = 10


@dataclass(frozen=True)
class Sound:
    pcm: np.ndarray  # int16 [AUDIO_SAMPLES_PER_PACKET], 16 kHz mono
    pts: int  # in AUDIO_TIME_BASE (16 kHz) units, from the session's clock


def opus_encoder(complexity: int = OPUS_COMPLEXITY) -> av.AudioCodecContext:
    """A libopus encoder for 20 ms pieces of 16 kHz mono s16 (`complexity`: libopus's 0-10)."""
    context = av.CodecContext.create("libopus", "w")
    context.bit_rate = OPUS_BITRATE_BPS
    context.format = "s16"
    context.layout = "mono"
    context.sample_rate = AUDIO_SAMPLE_RATE_HZ
    context.time_base = AUDIO_TIME_BASE
    context.options = {"application": OPUS_APPLICATION,
                       "compression_level": str(complexity)}
    return context


def encode_piece(encoder: av.AudioCodecContext, pcm: np.ndarray, pts: int) -> bytes:
    """One 20 ms piece → its Opus packet (libopus answers each 20 ms frame with one packet)."""
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = AUDIO_SAMPLE_RATE_HZ
    frame.pts = pts
    frame.time_base = AUDIO_TIME_BASE
    return b"".join(bytes(packet) for packet in encoder.encode(frame))


@functools.cache
def silence_packet() -> bytes:
    """Opus of 20 ms of digital silence, as a running encoder sends it (from its second packet
    on, libopus repeats the same bytes)."""
    encoder = opus_encoder(OPUS_DEFAULT_COMPLEXITY)
    zeros = np.zeros(AUDIO_SAMPLES_PER_PACKET, np.int16)
    packets = [encode_piece(encoder, zeros, k * AUDIO_SAMPLES_PER_PACKET) for k in range(4)]
    assert packets[-1] == packets[-2], "libopus silence is not one steady packet"
    return packets[-1]


class AudioTrack(PlayerTrack):
    def __init__(self, on_first_recv: Callable[[], None]) -> None:
        # Two 20 ms packets per video frame.
        super().__init__("audio", on_first_recv, 2 * MAX_QUEUED_FRAMES)
        self._encoder: av.AudioCodecContext | None = None
        self.packets_silent = 0
        self.packets_encoded = 0

    async def recv(self) -> av.Packet:
        while True:
            sound: Sound = await super().recv()
            if not sound.pcm.any():
                self._encoder = None  # the receiver decodes silence: start afresh after it
                self.packets_silent += 1
                data = silence_packet()
            else:
                if self._encoder is None:
                    self._encoder = opus_encoder()
                with stage_timing.timed(stage_timing.AUDIO_ENCODE):
                    data = encode_piece(self._encoder, sound.pcm, sound.pts)
                self.packets_encoded += 1
            if data:
                packet = av.Packet(data)
                packet.pts = sound.pts
                packet.time_base = AUDIO_TIME_BASE
                return packet
