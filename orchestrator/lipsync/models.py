"""The lip-sync models avatars name: one model per Triton model name, its family asked once from
the model's metadata (each family says whether an input signature is its own), so a new export
needs no orchestrator setting. The families (lipsync/base.py):

- `default.DefaultLipSync`: `mel`, `face` [B,3,S,S], `mouth` [B,4] (the project's default model);
- `wav2lip.Wav2LipSync`: `mel`, `face` [B,6,S,S] (Wav2Lip);
- `musetalk.MuseTalkSync`: `latents` [B,8,32,32], `whisper` [B,10L,384] (MuseTalk 1.5).
- `ultralight.UltralightSync`: `audio` [B,10320], `face` [B,6,160,160] (Ultralight).

Silent frames (the features' `silent`) skip the model when the model says, in its Triton
config, that its output for them is its input crop (base.SILENCE_RETURNS_FACE = "true"):
they get the avatar's own crop, which is what the model would have returned. The default model
declares it; Wav2Lip does not, nor does any model that does not say so: their silent frames go to
Triton like the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from ..triton.client import TritonModelClient
from .base import LipSyncModel
from .default import DefaultLipSync
from .musetalk import MuseTalkSync
from .ultralight import UltralightSync
from .wav2lip import Wav2LipSync

# Asked in order; the first whose `accepts` takes a model's inputs is its family.
FAMILIES: tuple[type[LipSyncModel], ...] = (DefaultLipSync, Wav2LipSync, MuseTalkSync,
                                            UltralightSync)
# `LipSyncModels(on_frames=...)` is told how many frames took each path.
FRAMES_TO_MODEL = "model"
FRAMES_SKIPPED_SILENT = "silence"


class LipSyncModels:
    """One model per name on a Triton server, its family found once from the metadata.

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
        """The model `name`. Raises ValueError when no family takes its inputs, and what Triton
        raises when it does not serve it."""
        if name in self._models:  # every lip-sync chunk asks: no lock once known
            return self._models[name]
        async with self._lock:
            if name not in self._models:
                self._models[name] = await self._discover(name)
            return self._models[name]

    async def render(self, model: LipSyncModel, windows: np.ndarray, silent: np.ndarray,
                     crops: np.ndarray, mouth: np.ndarray,
                     avatar_inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """`model.render`, sending only what it needs to see: windows float32
        [B, *model.features.window_shape], silent bool [B] (model.features.silent), crops uint8
        [B,S,S,3] RGB, mouth [B,4], avatar_inputs: the frames' arrays the model's family reads
        (its `avatar_inputs`, [B, ...] each) -> uint8 [B,S,S,3].

        Where the model returns its input for silence, silent frames are their own crop and
        are not sent (no Triton call at all when every frame is silent).
        """
        skip = (np.asarray(silent, bool) if model.silence_returns_face
                else np.zeros(len(windows), bool))
        if skip.shape != (len(windows),):
            raise ValueError(f"silent must be [{len(windows)}], got {list(skip.shape)}")
        sent = ~skip
        extra = avatar_inputs or {}
        if not skip.any():
            out = await model.render(windows, crops, mouth, **extra)
        else:
            out = crops.copy()
            if sent.any():
                out[sent] = await model.render(windows[sent], crops[sent], mouth[sent],
                                               **{k: v[sent] for k, v in extra.items()})
        if self._on_frames is not None:
            self._on_frames(FRAMES_TO_MODEL, int(sent.sum()))
            self._on_frames(FRAMES_SKIPPED_SILENT, int(skip.sum()))
        return out

    async def _discover(self, name: str) -> LipSyncModel:
        metadata = TritonModelClient(self.url, name)
        try:
            inputs, config = await metadata.input_shapes(), await metadata.config()
            return family_of(name, inputs).open(self.url, name, inputs, config,
                                                self.shared_memory)
        finally:  # the model's own client holds the channel from here
            await metadata.close()

    async def close(self) -> None:
        for model in self._models.values():
            await model.client.close()
        self._models.clear()


def family_of(name: str, inputs: dict[str, list[int]]) -> type[LipSyncModel]:
    """The family of model `name` whose inputs are `inputs`; ValueError when none takes them."""
    for family in FAMILIES:
        if family.accepts(inputs):
            return family
    if ("face" not in inputs or "mel" not in inputs) and "whisper" not in inputs:
        raise ValueError(f"lip-sync model {name!r} has no 'mel' and 'face' inputs "
                         f"(nor MuseTalk's 'whisper' and 'latents'): {inputs}")
    raise ValueError(f"lip-sync model {name!r}: unknown input signature {inputs}")
