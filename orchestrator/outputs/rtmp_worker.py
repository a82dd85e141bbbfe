"""The RTMP push's worker process: one connection, from connect to its end.

Run by outputs/rtmp.py as `python -I rtmp_worker.py` (a script: it imports nothing of the
package, only PyAV and numpy). Why a process and not a thread: PyAV opens an output URL
(`avio_open`, FFmpeg's RTMP connect and handshake), writes its header and trailer while holding
the GIL, with no timeout; a server that accepts the connection and never answers would freeze
every thread of the server with it. Here it freezes only this process, which the push kills.

Protocol (stdin → stdout):
- stdin: one JSON line (`Config` fields), then one record per tick: the tick (int64 little
  endian), the RGB frame (height × width × 3 bytes) and the tick's audio (int16 mono at
  `audio_rate_hz`, `samples_per_tick` samples). EOF ends the stream cleanly (encoders flushed).
- stdout: JSON lines: `{"event": "up"}` once connected, `{"event": "sent", "ticks": N,
  "dropped": D}` every PROGRESS_TICKS ticks written (D: dropped so far), `{"event": "down", "error": "..."}` when the connection fails
  (the process then exits 1). Errors name the URL by its `label` (stream key hidden).

Ticks are read into a queue of `max_queued_ticks` by a thread of their own, so the parent's
writes never wait on the encoder; when the encoder or network falls behind the oldest ticks go,
and their timestamps leave a gap rather than shifting audio against video.

Timestamps are the session's media clock: tick − `origin_tick` (the first tick the push sent,
the same for every connection of one push), so a reconnect goes on where the clock is
(a gap for the outage) and a player that stayed connected to the RTMP server sees time only go
forward. Without an `origin_tick` the first tick this connection writes is 0.
"""

from __future__ import annotations

import collections
import json
import os
import struct
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

TICK_HEADER = struct.Struct("<q")
PROGRESS_TICKS = 25
VIDEO_CODEC = "libx264"
VIDEO_OPTIONS = {"preset": "ultrafast", "tune": "zerolatency"}
AUDIO_CODEC = "aac"
AUDIO_LAYOUT = "stereo"
FLV = "flv"


@dataclass(frozen=True)
class Config:
    url: str
    label: str  # the URL without its stream key, for messages
    width: int
    height: int
    fps: int
    audio_rate_hz: int  # of the ticks' audio (the session's 16 kHz)
    samples_per_tick: int
    video_bitrate: int  # bits/s
    keyframe_interval_ticks: int
    out_audio_rate_hz: int
    audio_bitrate: int  # bits/s
    max_queued_ticks: int
    origin_tick: int | None = None  # the tick stamped 0 (the push's first), same on reconnects


def say(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class TickReader:
    """Reads tick records from stdin on its own thread into a bounded deque."""

    def __init__(self, stream, config: Config) -> None:
        self.stream = stream
        self.image_bytes = config.width * config.height * 3
        self.pcm_bytes = config.samples_per_tick * 2
        self.shape = (config.height, config.width, 3)
        self.queue: collections.deque = collections.deque(maxlen=config.max_queued_ticks)
        self.ready = threading.Condition()
        self.ended = False
        self.dropped = 0  # ticks dropped because the connection fell behind
        threading.Thread(target=self._read, daemon=True, name="ticks").start()

    def _read(self) -> None:
        record = TICK_HEADER.size + self.image_bytes + self.pcm_bytes
        try:
            while len(data := self.stream.read(record)) == record:
                (tick,) = TICK_HEADER.unpack_from(data)
                image = np.frombuffer(data, np.uint8, self.image_bytes, TICK_HEADER.size)
                pcm = np.frombuffer(data, np.int16, offset=TICK_HEADER.size + self.image_bytes)
                with self.ready:
                    if len(self.queue) == self.queue.maxlen:
                        self.dropped += 1
                    self.queue.append((tick, image.reshape(self.shape), pcm))
                    self.ready.notify()
        finally:
            with self.ready:
                self.ended = True
                self.ready.notify()

    def next(self):
        """The oldest queued tick; None once stdin has ended and the queue is empty."""
        with self.ready:
            while not self.queue and not self.ended:
                self.ready.wait()
            return self.queue.popleft() if self.queue else None


class Connection:
    """An FLV muxer on the RTMP URL and its encoders (H.264, AAC)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.container = av.open(config.url, mode="w", format=FLV)
        video = self.container.add_stream(VIDEO_CODEC, rate=config.fps)
        video.width, video.height = config.width, config.height
        video.pix_fmt = "yuv420p"
        video.bit_rate = config.video_bitrate
        video.gop_size = config.keyframe_interval_ticks
        video.codec_context.time_base = Fraction(1, config.fps)
        video.options = dict(VIDEO_OPTIONS)
        audio = self.container.add_stream(AUDIO_CODEC, rate=config.out_audio_rate_hz)
        audio.layout = AUDIO_LAYOUT
        audio.bit_rate = config.audio_bitrate
        self.video, self.audio = video, audio
        self.resampler = av.AudioResampler(format="fltp", layout=AUDIO_LAYOUT,
                                           rate=config.out_audio_rate_hz)
        self.container.start_encoding()  # connects, and sends the FLV header
        self.origin_tick = config.origin_tick

    def write(self, tick: int, image: np.ndarray, pcm: np.ndarray) -> None:
        if self.origin_tick is None:
            self.origin_tick = tick
        index = tick - self.origin_tick
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        frame.time_base = Fraction(1, self.config.fps)
        self.container.mux(self.video.encode(frame))
        samples = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        samples.sample_rate = self.config.audio_rate_hz
        samples.pts = index * pcm.size
        samples.time_base = Fraction(1, self.config.audio_rate_hz)
        for resampled in self.resampler.resample(samples):
            self.container.mux(self.audio.encode(resampled))

    def finish(self) -> None:
        self.container.mux(self.video.encode(None))
        self.container.mux(self.audio.encode(None))
        self.container.close()


def run(config: Config, ticks: TickReader) -> int:
    try:
        connection = Connection(config)
        say("up")
        sent = 0
        while (item := ticks.next()) is not None:
            connection.write(*item)
            sent += 1
            if sent % PROGRESS_TICKS == 0:
                say("sent", ticks=sent, dropped=ticks.dropped)
        connection.finish()
        return 0
    except Exception as exc:  # the parent logs it (once per outage) and reconnects
        say("down", error=str(exc).replace(config.url, config.label)[:500])
        return 1


def main() -> int:
    stdin = sys.stdin.buffer
    config = Config(**json.loads(stdin.readline()))
    return run(config, TickReader(stdin, config))


if __name__ == "__main__":
    # os._exit: the reader thread may be blocked in a read of stdin, which a normal interpreter
    # shutdown would wait on (and abort at); everything worth keeping is flushed by now.
    status = main()
    sys.stdout.flush()
    os._exit(status)
