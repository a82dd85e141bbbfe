"""Uploaded audio (/humanaudio) and clip sound: decode anything PyAV reads into the pipeline's
16 kHz mono float; reference voices at their own rate (`decode_clip`).

Channels are averaged (FFmpeg's own downmix adds +3 dB: identical stereo channels at 0.95 came
out at 1.34), and audio whose peak is above full scale (float WAV can carry it) is scaled down as
a whole, never hard-clipped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from ..errors import ApiError
from .clock import AUDIO_SAMPLE_RATE_HZ

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_DURATION_S = 300.0
FULL_SCALE = 1.0  # float PCM peak the player turns into int16 without clipping


def decode_audio(data: bytes, field_name: str = "file") -> np.ndarray:
    """float32 [N] mono at 16 kHz, peak <= FULL_SCALE; 400 naming the field when it is not
    audio or too long."""
    return _decode(io.BytesIO(data), field_name, AUDIO_SAMPLE_RATE_HZ).audio


def decode_audio_file(path: Path, field_name: str) -> np.ndarray:
    """decode_audio for a file on disk (a clip's video or sound), read as it is decoded."""
    return _decode(str(path), field_name, AUDIO_SAMPLE_RATE_HZ).audio


@dataclass(frozen=True)
class DecodedClip:
    """A clip at its own rate: what a reference voice keeps (tts/reference_voices.py)."""

    audio: np.ndarray  # float32 [N] mono (channels averaged), peak <= FULL_SCALE
    rate_hz: int  # the source's rate, at most the `max_rate_hz` asked for
    channel_rms: tuple[float, ...]  # each source channel's RMS before the downmix

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.rate_hz


def decode_clip(data: bytes, field_name: str, max_rate_hz: int,
                max_duration_s: float = MAX_DURATION_S) -> DecodedClip:
    """Any audio PyAV reads, mono at its own rate (resampled only when above `max_rate_hz`),
    with its channels' levels before the downmix; 400 naming the field when it is not audio or
    longer than `max_duration_s`."""
    return _decode(io.BytesIO(data), field_name, None, max_rate_hz, max_duration_s)


def _decode(source: io.BytesIO | str, field_name: str, rate_hz: int | None,
            max_rate_hz: int = AUDIO_SAMPLE_RATE_HZ,
            max_duration_s: float = MAX_DURATION_S) -> DecodedClip:
    """Decode at `rate_hz`, or (None) at the source's rate capped at `max_rate_hz`."""
    try:
        with av.open(source, mode="r", options={"protocol_whitelist": "file"}) as container:
            if not container.streams.audio:
                raise ApiError.bad_request(f"field '{field_name}' has no audio stream")
            # Planar float in the source's own layout: rows are channels, averaged below
            # (resampling is linear, so averaging after it is the same as before it).
            resampler: av.AudioResampler | None = None
            pieces: list[np.ndarray] = []
            squares: list[np.ndarray] = []  # per channel, summed over each piece

            def take(planes: np.ndarray) -> None:
                squares.append(np.square(planes, dtype=np.float64).sum(axis=1))
                pieces.append(_average_channels(planes))

            samples = 0
            out_rate = rate_hz or 0
            for frame in container.decode(container.streams.audio[0]):
                if resampler is None:
                    out_rate = rate_hz or min(frame.sample_rate, max_rate_hz)
                    resampler = av.AudioResampler(format="fltp", layout=None, rate=out_rate)
                for out in resampler.resample(frame):
                    take(out.to_ndarray())
                    samples += pieces[-1].size
                if samples > max_duration_s * out_rate:
                    raise ApiError.bad_request(
                        f"field '{field_name}' is longer than {max_duration_s:.0f} s"
                    )
            for out in resampler.resample(None) if resampler is not None else ():
                take(out.to_ndarray())
    except (av.error.FFmpegError, ValueError, EOFError) as exc:
        # FFmpeg's own words only ("Invalid data found when processing input"), not its errno
        # and the '<none>' file name PyAV adds for an in-memory file.
        why = getattr(exc, "strerror", None) or str(exc)
        raise ApiError.bad_request(f"field '{field_name}' is not decodable audio: {why}") from None
    audio = np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)
    if not audio.size:
        raise ApiError.bad_request(f"field '{field_name}' contains no audio samples")
    channels = max(len(s) for s in squares)  # a stream whose layout changed: the widest
    total = sum(s for s in squares if len(s) == channels)
    rms = tuple(float(np.sqrt(t / audio.size)) for t in total)
    return DecodedClip(normalised(audio), out_rate, rms)


def _average_channels(planes: np.ndarray) -> np.ndarray:
    """float32 [channels, samples] -> [samples]."""
    return planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0]


def normalised(audio: np.ndarray) -> np.ndarray:
    """`audio` scaled down as a whole when its peak is above FULL_SCALE (else unchanged); NaN and
    infinities (a broken float file) become silence first."""
    if not np.isfinite(audio).all():
        audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > FULL_SCALE:
        audio = (audio * (FULL_SCALE / peak)).astype(np.float32)
    return audio
