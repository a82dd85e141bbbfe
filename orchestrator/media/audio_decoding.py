"""Uploaded audio (/humanaudio) and clip sound: decode anything PyAV reads into the pipeline's
16 kHz mono float.

Channels are averaged (FFmpeg's own downmix adds +3 dB: identical stereo channels at 0.95 came
out at 1.34), and audio whose peak is above full scale (float WAV can carry it) is scaled down as
a whole, never hard-clipped.
"""

from __future__ import annotations

import io
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
    return _decode(io.BytesIO(data), field_name)


def decode_audio_file(path: Path, field_name: str) -> np.ndarray:
    """decode_audio for a file on disk (a clip's video or sound), read as it is decoded."""
    return _decode(str(path), field_name)


def _decode(source: io.BytesIO | str, field_name: str) -> np.ndarray:
    try:
        with av.open(source, mode="r", options={"protocol_whitelist": "file"}) as container:
            if not container.streams.audio:
                raise ApiError.bad_request(f"field '{field_name}' has no audio stream")
            # Planar float at 16 kHz in the source's own layout: rows are channels, averaged
            # below (resampling is linear, so averaging after it is the same as before it).
            resampler = av.AudioResampler(format="fltp", layout=None, rate=AUDIO_SAMPLE_RATE_HZ)
            pieces: list[np.ndarray] = []
            samples = 0
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    pieces.append(_average_channels(out))
                    samples += pieces[-1].size
                if samples > MAX_DURATION_S * AUDIO_SAMPLE_RATE_HZ:
                    raise ApiError.bad_request(
                        f"field '{field_name}' is longer than {MAX_DURATION_S:.0f} s"
                    )
            for out in resampler.resample(None):
                pieces.append(_average_channels(out))
    except (av.error.FFmpegError, ValueError, EOFError) as exc:
        # FFmpeg's own words only ("Invalid data found when processing input"), not its errno
        # and the '<none>' file name PyAV adds for an in-memory file.
        why = getattr(exc, "strerror", None) or str(exc)
        raise ApiError.bad_request(f"field '{field_name}' is not decodable audio: {why}") from None
    if not pieces:
        raise ApiError.bad_request(f"field '{field_name}' contains no audio samples")
    return normalised(np.concatenate(pieces).astype(np.float32))


def _average_channels(frame: av.AudioFrame) -> np.ndarray:
    planes = frame.to_ndarray()  # float32 [channels, samples]
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
