"""The project's default lip-sync model (`lipsync_default`, built by `python -m export
default-lipsync`; docs/INTERFACES.md): its Triton tensors and what it reads.

    in  mel    FP32 [B, 1, 80, 16]   the Wav2Lip mel window of each frame (lipsync/mel.py)
    in  face   FP32 [B, 3, S, S]     the avatar's crop, RGB in [0, 1]
    in  mouth  FP32 [B, 4]           the crop's mouth geometry
    out face_out FP32 [B, 3, S, S]   the lip-synced crop, RGB in [0, 1]

Its configs declare `silence_returns_face`: its mouth stays shut below a loudness it provably
never reaches on silence, so silent frames need not be sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..settings import DEFAULT_LIPSYNC_MODEL  # named once, in settings (--lipsync-model)
from ..triton.client import DEFAULT_TIMEOUT_S, TensorModelClient
from ..triton.exports import ModelExport
from .base import LipSyncModel
from .mel import WAV2LIP_MEL

DEFAULT_LIPSYNC_EXPORT = ModelExport(DEFAULT_LIPSYNC_MODEL, "export", ("default-lipsync",))
FACE_CHANNELS = 3  # RGB
MOUTH_VALUES = 4


class DefaultLipSyncClient(TensorModelClient):
    """The default model's tensors: `mel`, `face`, `mouth` -> `face_out`."""

    def __init__(self, url: str, model: str = DEFAULT_LIPSYNC_MODEL,
                 timeout_s: float = DEFAULT_TIMEOUT_S, shared_memory: bool = False) -> None:
        super().__init__(url, model, timeout_s, shared_memory)

    async def infer(self, mel: np.ndarray, face: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        """mel [B,1,80,16], face [B,3,S,S] RGB in [0,1], mouth [B,4] -> face_out float32
        [B,3,S,S]. Raises ValueError for other shapes or differing batch sizes."""
        _check_batch(mel, face, mouth)
        size = face.shape[-1]
        return await self.infer_tensors({"mel": mel, "face": face, "mouth": mouth}, "face_out",
                                        (len(mel), FACE_CHANNELS, size, size))


@dataclass
class DefaultLipSync(LipSyncModel):
    client: DefaultLipSyncClient

    features: ClassVar = WAV2LIP_MEL
    client_type: ClassVar = DefaultLipSyncClient

    @staticmethod
    def accepts(inputs: dict[str, list[int]]) -> bool:
        face = inputs.get("face")
        return ("mel" in inputs and "mouth" in inputs and face is not None
                and face[1] == FACE_CHANNELS)

    async def render(self, mel: np.ndarray, crops: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        face = crops.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        out = await self.client.infer(mel, face, mouth)
        return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _check_batch(mel: np.ndarray, face: np.ndarray, mouth: np.ndarray) -> None:
    window = WAV2LIP_MEL.window_shape
    if mel.ndim != 4 or mel.shape[1:] != window:
        raise ValueError(f"mel must be [B,{','.join(map(str, window))}], got {list(mel.shape)}")
    if face.ndim != 4 or face.shape[1] != FACE_CHANNELS or face.shape[2] != face.shape[3]:
        raise ValueError(f"face must be [B,3,S,S], got {list(face.shape)}")
    if mouth.ndim != 2 or mouth.shape[1] != MOUTH_VALUES:
        raise ValueError(f"mouth must be [B,4], got {list(mouth.shape)}")
    if not mel.shape[0] == face.shape[0] == mouth.shape[0]:
        raise ValueError(f"batch sizes differ: mel {mel.shape[0]}, face {face.shape[0]}, "
                         f"mouth {mouth.shape[0]}")
