"""Which lip-sync model an avatar is built for (`python -m avatars build --model`): the crop box
around the detected face, the crop size and the Triton model the package names.

- `default`: the project's default model (`lipsync_default`), package.crop_box, 128 px;
- `ultralight`: LiveTalking's Ultralight (export/ultralight_export.py, Triton model
  `ultralight`), 168 px crops whose centre 160 the UNet reads. LiveTalking's
  `ultralight/genavatar.py` cuts the box from 98 face landmarks (PFLD): from the jaw line's
  left end to its right end (landmarks 1 and 31) and from the nose bridge (landmark 52) down by
  that width, so the nose, mouth and chin fill the crop. No landmark model installs here, so the
  box is placed from the Haar face box by the same proportions (ULTRALIGHT_* below: the jaw
  points lie about 0.9 face widths apart, the nose bridge landmark about 0.42 face heights
  below the box's top). An Ultralight UNet is trained on one person's video: a package built
  here speaks with a UNet trained on the same person, exported under the name it names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .face_detection import Box
from .livetalking import ULTRALIGHT_MODEL
from .package import CROP_SIZE, DEFAULT_LIPSYNC_MODEL, crop_box

ULTRALIGHT_CROP_PX = 168  # LiveTalking's face_imgs size (orchestrator/lipsync/ultralight.py)
ULTRALIGHT_WIDTH_FRACTION = 0.9  # of the Haar box's width: landmark 1 to landmark 31
ULTRALIGHT_TOP_FRACTION = 0.42  # of the Haar box's height: landmark 52 below the box's top


def ultralight_box(face: Box) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1: a square from the nose bridge down, jaw to jaw wide (see the module)."""
    size = int(round(face.w * ULTRALIGHT_WIDTH_FRACTION))
    x0 = int(round(face.centre[0] - size / 2))
    y0 = int(round(face.y + face.h * ULTRALIGHT_TOP_FRACTION))
    return x0, y0, x0 + size, y0 + size


@dataclass(frozen=True)
class ModelCrop:
    lipsync_model: str
    crop_size: int
    box: Callable[[Box], tuple[int, int, int, int]]

    def manifest(self) -> dict:
        """The package manifest's fields for this model (package.PackageWriter.finish)."""
        return {"crop_size": self.crop_size, "lipsync_model": self.lipsync_model,
                "lipsync_models": sorted({self.lipsync_model, DEFAULT_LIPSYNC_MODEL})}


MODEL_CROPS = {
    "default": ModelCrop(DEFAULT_LIPSYNC_MODEL, CROP_SIZE, crop_box),
    "ultralight": ModelCrop(ULTRALIGHT_MODEL, ULTRALIGHT_CROP_PX, ultralight_box),
}


def model_crop(name: str) -> ModelCrop:
    """ValueError naming the choices for an unknown model."""
    if name not in MODEL_CROPS:
        raise ValueError(f"--model {name!r} is not one of {sorted(MODEL_CROPS)}")
    return MODEL_CROPS[name]
