"""The lip-sync models an avatar can name, behind one interface: audio windows and face crops
in, lip-synced RGB crops out. Which family a Triton model belongs to is read from its metadata
(its inputs), so a new export needs no orchestrator setting:

- `mel`, `face` [B,3,S,S], `mouth` [B,4]: the project's default model (RGB in [0, 1]);
- `mel`, `face` [B,6,S,S]: Wav2Lip (BGR, lower half masked + reference; `wav2lip_inputs`).

Silent frames (`features.silent_frames`) skip the model when the model says, in its Triton
config, that its output for them is its input crop (parameter SILENCE_RETURNS_FACE = "true"):
they get the avatar's own crop, which is what the model would have returned. The default model
declares it (its mouth stays shut below a loudness it provably never reaches on silence);
Wav2Lip does not (it redraws the lower face, closed mouth or not), nor does any model that does
not say so: their silent frames go to Triton like the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..triton.client import LipSyncClient
from .wav2lip import prepare, to_rgb_crops

# The model config parameter (string "true") by which a model says that its output for a silent
# frame is the crop it was given.
SILENCE_RETURNS_FACE = "silence_returns_face"
# `LipSyncModels(on_frames=...)` is told how many frames took each path.
FRAMES_TO_MODEL = "model"
FRAMES_SKIPPED_SILENT = "silence"


class LipSyncModel(Protocol):
    name: str
    crop_size: int | None  # None: any size (the avatar's own crop size)
    silence_returns_face: bool  # output == input crop for silent frames (the model's config)

    async def render(self, mel: np.ndarray, crops: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        """mel [B,1,80,16], crops uint8 [B,S,S,3] RGB, mouth [B,4] → uint8 [B,S,S,3] RGB."""
        ...


@dataclass
class DefaultLipSync:
    client: LipSyncClient
    name: str
    crop_size: int | None = None
    silence_returns_face: bool = False

    async def render(self, mel: np.ndarray, crops: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        face = crops.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        out = await self.client.infer(mel, face, mouth)
        return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


@dataclass
class Wav2LipSync:
    client: LipSyncClient
    name: str
    crop_size: int | None
    silence_returns_face: bool = False

    async def render(self, mel: np.ndarray, crops: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        # The unmasked crop is its own reference: an idle loop has no better pose for the frame.
        out = await self.client.infer_face(mel, prepare(crops, crops))
        return to_rgb_crops(out)


class LipSyncModels:
    """One client per model name on a Triton server, its family found once from the metadata.

    `on_frames(path, count)`: told how many speech frames went to a model (FRAMES_TO_MODEL) or
    were silent and skipped it (FRAMES_SKIPPED_SILENT), on every `render` (metrics).
    """

    def __init__(self, url: str, shared_memory: bool = False,
                 on_frames: Callable[[str, int], None] | None = None) -> None:
        self.url = url
        self.shared_memory = shared_memory
        self._on_frames = on_frames
        self._models: dict[str, LipSyncModel] = {}
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> LipSyncModel:
        if name in self._models:  # every lip-sync chunk asks: no lock once known
            return self._models[name]
        async with self._lock:
            if name not in self._models:
                self._models[name] = await self._discover(name)
            return self._models[name]

    async def render(self, model: LipSyncModel, mel: np.ndarray, silent: np.ndarray,
                     crops: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        """`model.render`, sending only what it needs to see: mel [B,1,80,16], silent bool [B]
        (features.silent_frames), crops uint8 [B,S,S,3] RGB, mouth [B,4] -> uint8 [B,S,S,3].

        Where the model returns its input for silence, silent frames are their own crop and
        are not sent (no Triton call at all when every frame is silent).
        """
        skip = np.asarray(silent, bool) if model.silence_returns_face else np.zeros(len(mel), bool)
        if skip.shape != (len(mel),):
            raise ValueError(f"silent must be [{len(mel)}], got {list(skip.shape)}")
        sent = ~skip
        if not skip.any():
            out = await model.render(mel, crops, mouth)
        else:
            out = crops.copy()
            if sent.any():
                out[sent] = await model.render(mel[sent], crops[sent], mouth[sent])
        if self._on_frames is not None:
            self._on_frames(FRAMES_TO_MODEL, int(sent.sum()))
            self._on_frames(FRAMES_SKIPPED_SILENT, int(skip.sum()))
        return out

    async def _discover(self, name: str) -> LipSyncModel:
        client = LipSyncClient(self.url, model=name, shared_memory=self.shared_memory)
        try:
            return _family(client, name, await client.input_shapes(), await client.config())
        except BaseException:
            await client.close()
            raise

    async def close(self) -> None:
        for model in self._models.values():
            await model.client.close()
        self._models.clear()


def silence_returns_face(config: dict) -> bool:
    """Whether a model's config (Triton's JSON form) declares SILENCE_RETURNS_FACE "true"."""
    value = config.get("parameters", {}).get(SILENCE_RETURNS_FACE, {}).get("string_value", "")
    return value.strip().lower() == "true"


def _family(client: LipSyncClient, name: str, inputs: dict[str, list[int]],
            config: dict) -> LipSyncModel:
    face = inputs.get("face")
    if face is None or "mel" not in inputs:
        raise ValueError(f"lip-sync model {name!r} has no 'mel' and 'face' inputs: {inputs}")
    size = face[-1] if face[-1] > 0 else None
    if "mouth" in inputs and face[1] == 3:
        return DefaultLipSync(client, name, size, silence_returns_face(config))
    if face[1] == 6:
        return Wav2LipSync(client, name, size, silence_returns_face(config))
    raise ValueError(f"lip-sync model {name!r}: unknown input signature {inputs}")
