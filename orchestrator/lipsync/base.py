"""What a lip-sync model is to the rest of the server: the audio features it reads per video frame,
face crops in, lip-synced RGB crops out.

A model family (one module of `lipsync/`) owns everything about its models end to end: which
Triton input signature is theirs (`accepts`), their tensors and input conventions (its
`TensorModelClient` subclass), and the audio features they declare (`features`), which the
speech pipeline computes for them. Adding a family: its module, and its line in
`lipsync/models.FAMILIES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from ..triton.client import TensorModelClient

# The model config parameter (string "true") by which a model says that its output for a silent
# frame is the crop it was given.
SILENCE_RETURNS_FACE = "silence_returns_face"


class AudioFeatures(Protocol):
    """How speech (mono float32 at 16 kHz, full scale 1.0) becomes a model's per-frame input.

    Frame i is the video frame shown at i / VIDEO_FPS s into the audio.
    """

    window_shape: tuple[int, ...]  # one frame's features, e.g. (1, 80, 16) for the Wav2Lip mel

    def covered_frames(self, samples: int) -> int:
        """How many frames (from the first) read only the first `samples` samples: the frames
        a growing piece of audio may already hand out."""
        ...

    def windows(self, audio: np.ndarray, frame_count: int, first: int = 0) -> np.ndarray:
        """float32 [frame_count - first, *window_shape]: the features of frames
        first..frame_count-1 of `audio` (what lies past its end reads as silence)."""
        ...

    def silent(self, audio: np.ndarray, frame_count: int, first: int = 0) -> np.ndarray:
        """bool [frame_count - first]: frames whose features are computed from silence only
        (a model whose output for them is its input need not see them)."""
        ...


@dataclass
class LipSyncModel(ABC):
    """One served model of a family: `render` lip-syncs a batch of frames."""

    client: TensorModelClient
    name: str  # the Triton model name
    crop_size: int | None  # None: any size (the avatar's own crop size)
    silence_returns_face: bool = False  # output == input crop for silent frames (its config)

    # The audio features the family's models read (the pipeline computes these for them).
    features: ClassVar[AudioFeatures]
    # The client that knows the family's tensors; `open` builds one per model.
    client_type: ClassVar[type[TensorModelClient]]
    # How high on the crop the model's drawing is pasted from (a fraction of its height; None:
    # the compositor's lower-face default, avatar/compositor.MASK_TOP_FRACTION).
    paste_top_fraction: ClassVar[float | None] = None
    # Per-frame arrays of the avatar the family reads besides its crops (Avatar.model_inputs,
    # e.g. MuseTalk's "latents"): `render` gets each, for the batch's frames, as a keyword.
    avatar_inputs: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    @abstractmethod
    def accepts(inputs: dict[str, list[int]]) -> bool:
        """Whether a Triton model with these inputs (name -> shape, batch first, -1 any) is one
        of this family's."""

    @classmethod
    def open(cls, url: str, name: str, inputs: dict[str, list[int]], config: dict,
             shared_memory: bool = False) -> LipSyncModel:
        """The model `name` on Triton at `url`, from its metadata (`inputs`, accepted by
        `accepts`) and its config (Triton's JSON form)."""
        client = cls.client_type(url, model=name, shared_memory=shared_memory)
        return cls(client, name, cls.crop_size_of(inputs), silence_returns_face(config))

    @staticmethod
    def crop_size_of(inputs: dict[str, list[int]]) -> int | None:
        """The crop size the model takes: the last dimension of its `face` input (None: any)."""
        size = inputs["face"][-1]
        return size if size > 0 else None

    @abstractmethod
    async def render(self, windows: np.ndarray, crops: np.ndarray,
                     mouth: np.ndarray) -> np.ndarray:
        """windows float32 [B, *features.window_shape], crops uint8 [B,S,S,3] RGB, mouth
        float32 [B,4] (the avatar's mouth geometry) -> uint8 [B,S,S,3] RGB; a family with
        `avatar_inputs` also gets those arrays [B, ...] by name. Raises ValueError for
        inconsistent shapes, InferenceServerException from Triton."""


def silence_returns_face(config: dict) -> bool:
    """Whether a model's config (Triton's JSON form) declares SILENCE_RETURNS_FACE "true"."""
    value = config.get("parameters", {}).get(SILENCE_RETURNS_FACE, {}).get("string_value", "")
    return value.strip().lower() == "true"
