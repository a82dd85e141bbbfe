"""Video encoders behind one interface (base.py), one module per codec family."""

from __future__ import annotations

from .base import EncodedFrame, VideoEncoder
from .h264 import H264Encoder
from .vp8 import Vp8Encoder

ENCODERS: dict[str, type[VideoEncoder]] = {
    encoder.mime_type.lower(): encoder for encoder in (Vp8Encoder, H264Encoder)
}


def encoder_class(mime_type: str) -> type[VideoEncoder]:
    """The encoder for a negotiated codec ("video/VP8", "video/H264"; any case); ValueError for
    one we cannot send."""
    try:
        return ENCODERS[mime_type.lower()]
    except KeyError:
        raise ValueError(f"no video encoder for {mime_type!r}") from None


def open_encoder(mime_type: str, width: int, height: int,
                 bitrate_bps: int | None = None) -> VideoEncoder:
    return encoder_class(mime_type)(width, height, bitrate_bps)


__all__ = ["ENCODERS", "EncodedFrame", "VideoEncoder", "encoder_class", "open_encoder"]
