"""Uploaded audio (/humanaudio): decode anything PyAV reads into the pipeline's 16 kHz mono float."""

from __future__ import annotations

import io

import av
import numpy as np

from .errors import ApiError
from .media_clock import AUDIO_SAMPLE_RATE_HZ

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_DURATION_S = 300.0


def decode_audio(data: bytes, field_name: str = "file") -> np.ndarray:
    """float32 mono at 16 kHz; 400 naming the field when it is not audio or too long."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise ApiError.bad_request(f"field '{field_name}' has no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE_HZ)
            pieces: list[np.ndarray] = []
            samples = 0
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    samples += pieces[-1].size
                if samples > MAX_DURATION_S * AUDIO_SAMPLE_RATE_HZ:
                    raise ApiError.bad_request(
                        f"field '{field_name}' is longer than {MAX_DURATION_S:.0f} s"
                    )
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
    except (av.error.FFmpegError, ValueError, EOFError) as exc:
        raise ApiError.bad_request(f"field '{field_name}' is not decodable audio: {exc}") from None
    if not pieces:
        raise ApiError.bad_request(f"field '{field_name}' contains no audio samples")
    return np.concatenate(pieces).astype(np.float32)
