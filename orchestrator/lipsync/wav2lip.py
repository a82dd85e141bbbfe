"""The Wav2Lip family (`wav2lip*` Triton models, exported by `python -m export wav2lip`): its
tensors, and its input and output conventions in numpy.

    in  mel    FP32 [B, 1, 80, 16]   the Wav2Lip mel window of each frame (lipsync/mel.py)
    in  face   FP32 [B, 6, S, S]     target (lower half masked) + reference, BGR in [0, 1]
    out face_out FP32 [B, 3, S, S]   the whole crop, BGR in [0, 1]

Wav2Lip was trained on OpenCV frames, so its images are BGR in [0, 1], channels first. Its
`face` input has 6 channels: the target crop with its lower half zeroed (the model must draw the
mouth there from the audio) followed by an unmasked reference crop of the same face (pose and
identity). Its output is the whole crop, BGR; only the lower face should be pasted back, with a
feathered mask, because the upper half is a (slightly blurred) copy of the input.
Wav2Lip does not declare `silence_returns_face` (it redraws the lower face, closed mouth or not).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np

from ..triton.client import TensorModelClient
from .base import LipSyncModel
from .mel import WAV2LIP_MEL

FACE_CHANNELS = 6  # target (masked) + reference, 3 each
OUTPUT_CHANNELS = 3

# soft_mask: fractions of the crop size. Full weight from just below the masked-half line (the
# model's drawn region) to near the chin; zero on the crop's border, so the paste has no seam.
MASK_RISE_START = 0.40  # the upper half is given to the model: fade in around its lower edge
MASK_RISE_END = 0.55
MASK_SIDE_RAMP = 0.12  # from 0 on the left/right edges to 1 this far in
MASK_BOTTOM_RAMP = 0.08


def _check_crops(name: str, crops: np.ndarray) -> None:
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[3] != 3 \
            or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"{name} must be uint8 [B,S,S,3] RGB, got {crops.dtype} "
                         f"{list(crops.shape)}")


def prepare(crops_rgb: np.ndarray, reference_rgb: np.ndarray) -> np.ndarray:
    """uint8 [B,S,S,3] RGB target crops and references -> float32 [B,6,S,S] for `face`.

    Channels 0-2: the target, BGR / 255, rows S//2.. set to 0; channels 3-5: the reference, BGR.
    """
    _check_crops("crops_rgb", crops_rgb)
    _check_crops("reference_rgb", reference_rgb)
    if crops_rgb.shape != reference_rgb.shape:
        raise ValueError(f"crops_rgb {list(crops_rgb.shape)} and reference_rgb "
                         f"{list(reference_rgb.shape)} differ")
    batch, size = crops_rgb.shape[:2]
    out = np.empty((batch, FACE_CHANNELS, size, size), np.float32)
    out[:, 0:3] = crops_rgb[..., ::-1].transpose(0, 3, 1, 2)  # RGB -> BGR, channels first
    out[:, 0:3, size // 2:] = 0.0
    out[:, 3:6] = reference_rgb[..., ::-1].transpose(0, 3, 1, 2)
    out *= np.float32(1.0 / 255.0)
    return out


def to_rgb_crops(out: np.ndarray) -> np.ndarray:
    """float32 [B,3,S,S] BGR in [0, 1] (`face_out`) -> uint8 [B,S,S,3] RGB, rounded."""
    if out.ndim != 4 or out.shape[1] != 3:
        raise ValueError(f"face_out must be [B,3,S,S], got {list(out.shape)}")
    rgb = out[:, ::-1].transpose(0, 2, 3, 1)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@lru_cache(maxsize=8)
def soft_mask(size: int) -> np.ndarray:
    """float32 [S,S] in [0, 1]: 1 over mouth, jaw and chin, feathered to exactly 0 at the border.

    Read-only (cached per size). Pixel centres are sampled, so the outermost pixels are 0.
    """
    if size < 8:
        raise ValueError(f"mask size must be >= 8, got {size}")
    index = np.arange(size, dtype=np.float64)
    pos = (index + 0.5) / size  # pixel centres in (0, 1)
    from_bottom = (size - 1 - index) / size  # exactly 0 at the last row (integer arithmetic)
    from_side = np.minimum(index, size - 1 - index) / size
    rows = _smoothstep((pos - MASK_RISE_START) / (MASK_RISE_END - MASK_RISE_START))
    rows *= _smoothstep(from_bottom / MASK_BOTTOM_RAMP)
    cols = _smoothstep(from_side / MASK_SIDE_RAMP)
    mask = (rows[:, None] * cols[None, :]).astype(np.float32)
    mask.setflags(write=False)
    return mask


def blend(original_rgb: np.ndarray, generated_rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., S,S,3]: `generated` over `original` through soft_mask (no seam at the edges)."""
    if original_rgb.shape != generated_rgb.shape:
        raise ValueError(f"shapes differ: {list(original_rgb.shape)} vs "
                         f"{list(generated_rgb.shape)}")
    mask = soft_mask(original_rgb.shape[-2])[..., None]
    base = original_rgb.astype(np.float32)
    mixed = base + mask * (generated_rgb.astype(np.float32) - base)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


class Wav2LipClient(TensorModelClient):
    """Wav2Lip's tensors: `mel`, `face` -> `face_out` (no mouth geometry)."""

    async def infer_face(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        """mel [B,1,80,16], face [B,C,S,S] (`prepare`) -> face_out float32 [B,3,S,S] BGR.
        Raises ValueError when the batch sizes differ."""
        if mel.shape[0] != face.shape[0]:
            raise ValueError(f"batch sizes differ: mel {mel.shape[0]}, face {face.shape[0]}")
        size = face.shape[-1]
        return await self.infer_tensors({"mel": mel, "face": face}, "face_out",
                                        (len(mel), OUTPUT_CHANNELS, size, size))


@dataclass
class Wav2LipSync(LipSyncModel):
    client: Wav2LipClient

    features: ClassVar = WAV2LIP_MEL
    client_type: ClassVar = Wav2LipClient

    @staticmethod
    def accepts(inputs: dict[str, list[int]]) -> bool:
        face = inputs.get("face")
        return "mel" in inputs and face is not None and face[1] == FACE_CHANNELS

    async def render(self, mel: np.ndarray, crops: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        # The unmasked crop is its own reference: an idle loop has no better pose for the frame.
        out = await self.client.infer_face(mel, prepare(crops, crops))
        return to_rgb_crops(out)
