"""Server-side recording: the frames and audio a session streams, encoded to MP4 (H.264 + AAC).

Encoding runs on a dedicated thread fed by a queue, so a slow disk or encoder never stalls the
live stream; every frame is kept (recordings must be complete), the queue only grows meanwhile.
The file is written under a temporary name beside its own and renamed once finalised: its real
name only ever holds a whole MP4.

Ticks the player skipped (a busy machine: MediaClock jumps ahead rather than bursting) are filled
in the file: the last frame repeated, with silence. Audio and video then stay continuous and in
step when played back to back (AAC's encoder counts samples, not timestamps: a hole in the audio
would shift everything after it), and the recording lasts as long as the session did.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .clock import AUDIO_SAMPLE_RATE_HZ, VIDEO_FPS

log = logging.getLogger(__name__)

VIDEO_CODEC = "libx264"
AUDIO_CODEC = "aac"
AUDIO_OUT_RATE_HZ = 48000  # AAC's usual rate in MP4 players; the 16 kHz speech is resampled
VIDEO_BITRATE = 2_000_000


class EmptyRecording(RuntimeError):
    """`finish` came before the first frame: there is nothing to write (no file is left)."""


class Recorder:
    """Writes one MP4; `add` is called from the event loop once per tick, `finish` ends it."""

    def __init__(self, path: Path, width: int, height: int) -> None:
        self.path = path
        self._partial = path.with_name(f".{path.name}.part")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._width = width
        self._height = height
        self._first_tick: int | None = None
        self.ticks = 0
        self.filled_ticks = 0  # skipped by the player, filled in the file (the encoder's count)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._encode, name=f"recorder-{path.name}",
                                        daemon=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def add(self, tick: int, image: np.ndarray, pcm: np.ndarray) -> None:
        """One tick: an RGB frame and its int16 mono audio at 16 kHz."""
        if self._error is not None:
            return
        if self._first_tick is None:
            self._first_tick = tick
        self._queue.put((tick - self._first_tick, image, pcm))
        self.ticks += 1

    def finish(self) -> Path:
        """Flush and close the file (blocking: call it in an executor).

        Raises EmptyRecording when no frame was added (an MP4 needs one), RuntimeError when the
        file could not be written; in both cases no file is left behind."""
        self._queue.put(None)
        self._thread.join()
        if self._error is None and self.ticks == 0:
            self._partial.unlink(missing_ok=True)
            raise EmptyRecording("the recording ended before its first frame")
        if self._error is None:
            try:
                os.replace(self._partial, self.path)
            except OSError as exc:
                self._error = exc
        if self._error is not None:
            self._partial.unlink(missing_ok=True)
            raise RuntimeError(f"recording failed: {self._error}") from self._error
        return self.path

    def _encode(self) -> None:
        finished_reading = False
        try:
            with av.open(str(self._partial), mode="w", format="mp4") as container:
                video = container.add_stream(VIDEO_CODEC, rate=VIDEO_FPS)
                video.width, video.height = self._width, self._height
                video.pix_fmt = "yuv420p"
                video.bit_rate = VIDEO_BITRATE
                video.codec_context.time_base = Fraction(1, VIDEO_FPS)
                video.options = {"preset": "veryfast", "tune": "zerolatency"}
                audio = container.add_stream(AUDIO_CODEC, rate=AUDIO_OUT_RATE_HZ)
                audio.layout = "mono"
                resampler = av.AudioResampler(format="fltp", layout="mono", rate=AUDIO_OUT_RATE_HZ)
                last: tuple[int, np.ndarray, np.ndarray] | None = None
                while (item := self._queue.get()) is not None:
                    if last is not None and item[0] <= last[0]:
                        continue  # not after the last one: nothing to add
                    for index, image, pcm in self._filled(last, item):
                        self._write(container, video, audio, resampler, index, image, pcm)
                    last = item
                finished_reading = True
                for resampled in resampler.resample(None):
                    container.mux(audio.encode(resampled))
                container.mux(video.encode(None))
                container.mux(audio.encode(None))
        except BaseException as exc:  # reported by finish(); the live stream is unaffected
            log.exception("recorder failed path=%s", self.path)
            self._error = exc
            while not finished_reading and self._queue.get() is not None:
                pass  # drop what was queued before add() saw the error
        if self.filled_ticks:
            log.info("recording path=%s: %d ticks the player skipped filled (last frame, "
                     "silence)", self.path.name, self.filled_ticks)

    def _filled(self, last: tuple[int, np.ndarray, np.ndarray] | None,
                item: tuple[int, np.ndarray, np.ndarray],
                ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """What to write for `item` (index, image, pcm): for each tick skipped since `last`,
        `last`'s frame again with silence; then `item`."""
        if last is not None and item[0] > last[0] + 1:
            silence = np.zeros_like(last[2])
            for index in range(last[0] + 1, item[0]):
                self.filled_ticks += 1
                yield index, last[1], silence
        yield item

    @staticmethod
    def _write(container, video, audio, resampler, index: int, image: np.ndarray,
               pcm: np.ndarray) -> None:
        """One tick into the file: its frame at `index` (1/VIDEO_FPS), its audio after it."""
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        frame.time_base = Fraction(1, VIDEO_FPS)
        container.mux(video.encode(frame))
        samples = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        samples.sample_rate = AUDIO_SAMPLE_RATE_HZ
        samples.pts = index * pcm.size
        samples.time_base = Fraction(1, AUDIO_SAMPLE_RATE_HZ)
        for resampled in resampler.resample(samples):
            container.mux(audio.encode(resampled))
