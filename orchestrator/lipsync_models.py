"""The lip-sync models an avatar can name, behind one interface: audio windows and face crops
in, lip-synced RGB crops out. Which family a Triton model belongs to is read from its metadata
(its inputs), so a new export needs no orchestrator setting:

- `mel`, `face` [B,3,S,S], `mouth` [B,4]: the project's default model (RGB in [0, 1]);
- `mel`, `face` [B,6,S,S]: Wav2Lip (BGR, lower half masked + reference; `wav2lip_inputs`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .triton_clients import LipSyncClient
from .wav2lip_inputs import prepare, to_rgb_crops


class LipSyncModel(Protocol):
    name: str
    crop_size: int | None  # None: any size (the avatar's own crop size)

    async def render(self, mel: np.ndarray, crops: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        """mel [B,1,80,16], crops uint8 [B,S,S,3] RGB, mouth [B,4] → uint8 [B,S,S,3] RGB."""
        ...


@dataclass
class DefaultLipSync:
    client: LipSyncClient
    name: str
    crop_size: int | None = None

    async def render(self, mel: np.ndarray, crops: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        face = crops.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        out = await self.client.infer(mel, face, mouth)
        return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


@dataclass
class Wav2LipSync:
    client: LipSyncClient
    name: str
    crop_size: int | None

    async def render(self, mel: np.ndarray, crops: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        # The unmasked crop is its own reference: an idle loop has no better pose for the frame.
        out = await self.client.infer_face(mel, prepare(crops, crops))
        return to_rgb_crops(out)


class LipSyncModels:
    """One client per model name on a Triton server, its family found once from the metadata."""

    def __init__(self, url: str, shared_memory: bool = False) -> None:
        self.url = url
        self.shared_memory = shared_memory
        self._models: dict[str, LipSyncModel] = {}
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> LipSyncModel:
        if name in self._models:  # every lip-sync chunk asks: no lock once known
            return self._models[name]
        async with self._lock:
            if name not in self._models:
                self._models[name] = await self._discover(name)
            return self._models[name]

    async def _discover(self, name: str) -> LipSyncModel:
        client = LipSyncClient(self.url, model=name, shared_memory=self.shared_memory)
        try:
            return _family(client, name, await client.input_shapes())
        except BaseException:
            await client.close()
            raise

    async def close(self) -> None:
        for model in self._models.values():
            await model.client.close()
        self._models.clear()


def _family(client: LipSyncClient, name: str, inputs: dict[str, list[int]]) -> LipSyncModel:
    face = inputs.get("face")
    if face is None or "mel" not in inputs:
        raise ValueError(f"lip-sync model {name!r} has no 'mel' and 'face' inputs: {inputs}")
    size = face[-1] if face[-1] > 0 else None
    if "mouth" in inputs and face[1] == 3:
        return DefaultLipSync(client, name, size)
    if face[1] == 6:
        return Wav2LipSync(client, name, size)
    raise ValueError(f"lip-sync model {name!r}: unknown input signature {inputs}")
