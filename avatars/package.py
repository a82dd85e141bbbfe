"""Build an avatar package (docs/INTERFACES.md) from a still picture: detect, close the mouth,
animate the idle loop, write frames, geometry and a versioned manifest."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .face_detection import Box, detect_eyes, detect_single_face
from .idle_motion import idle_frames
from .mouth import Mouth, find_mouth
from .rest_pose import close_mouth

if TYPE_CHECKING:
    from .model_crops import ModelCrop

FORMAT = "livehuman-avatar"
FORMAT_VERSION = 1
FPS = 25
CROP_SIZE = 128
DEFAULT_LIPSYNC_MODEL = "lipsync_default"
# The crop box: square, this many face widths, centred this far below the face box's centre
# (the chin and the open jaw must fit).
CROP_FACE_WIDTHS = 1.35
CROP_CENTRE_DROP = 0.18
JPEG_QUALITY = 95
# Larger sources (phone photos and videos) are scaled down to this: every frame of a package is
# held in memory by the server, and the lip-sync crop is 128 px anyway.
MAX_LONG_SIDE_PX = 1280
AVATAR_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

Progress = Callable[[int, int], None]


def crop_box(face: Box) -> tuple[int, int, int, int]:
    size = int(round(face.w * CROP_FACE_WIDTHS))
    cx, cy = face.centre
    x0 = int(round(cx - size / 2))
    y0 = int(round(cy + face.h * CROP_CENTRE_DROP - size / 2))
    return x0, y0, x0 + size, y0 + size


def mouth_geometry(mouth: Mouth, box: tuple[int, int, int, int], shift: tuple[float, float]) -> list[float]:
    """The model's `mouth` input: centre x, lip line y, lip width, lip height over the box size."""
    x0, y0, x1, _ = box
    size = x1 - x0
    return [(mouth.centre_x + shift[0] - x0) / size, (mouth.line + shift[1] - y0) / size,
            mouth.width / size, (mouth.bottom - mouth.top) / size]


def fit_long_side(rgb: np.ndarray, limit: int = MAX_LONG_SIDE_PX) -> np.ndarray:
    scale = limit / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def check_avatar_id(avatar_id: str) -> None:
    if not AVATAR_ID.fullmatch(avatar_id):
        raise ValueError(f"avatar id {avatar_id!r}: use 1-64 letters, digits, '_' or '-'")


class PackageWriter:
    """Writes one package: frames as they come, then geometry and manifest in `finish`.

    Everything goes to a hidden staging folder that `finish` renames into place, so readers never
    see a half-built avatar; leaving the `with` block without `finish` (an error, a cancelled
    build) removes it, so a failed build leaves nothing behind.
    """

    def __init__(self, avatar_id: str, out_dir: Path) -> None:
        check_avatar_id(avatar_id)
        self.avatar_id = avatar_id
        self.target = Path(out_dir) / avatar_id
        self.staging = self.target.with_name(f".{avatar_id}.building")
        self.frame_count = 0
        self._size: tuple[int, int] | None = None  # width, height

    def __enter__(self) -> PackageWriter:
        shutil.rmtree(self.staging, ignore_errors=True)
        (self.staging / "frames").mkdir(parents=True)
        return self

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)  # gone already after finish

    def add_frame(self, rgb: np.ndarray) -> None:
        size = (int(rgb.shape[1]), int(rgb.shape[0]))
        if self._size not in (None, size):
            raise ValueError(f"frame {self.frame_count} is {size}, the first was {self._size}")
        self._size = size
        path = self.staging / "frames" / f"{self.frame_count:05d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        self.frame_count += 1

    def finish(self, boxes: np.ndarray, mouth: np.ndarray, source: str, **details) -> Path:
        """Geometry per frame (docs/INTERFACES.md), the manifest (with `details` added), and the
        rename into place (replacing an older package of the same id)."""
        boxes, mouth = np.asarray(boxes, np.int32), np.asarray(mouth, np.float32)
        if self._size is None or boxes.shape != (self.frame_count, 4) or mouth.shape != boxes.shape:
            raise ValueError(f"geometry {boxes.shape}/{mouth.shape} for {self.frame_count} frames")
        np.savez(self.staging / "geometry.npz", boxes=boxes, mouth=mouth)
        manifest = {
            "format": FORMAT, "version": FORMAT_VERSION, "id": self.avatar_id, "fps": FPS,
            "width": self._size[0], "height": self._size[1], "frame_count": self.frame_count,
            "crop_size": CROP_SIZE, "lipsync_model": DEFAULT_LIPSYNC_MODEL,
            "lipsync_models": [DEFAULT_LIPSYNC_MODEL],
            "frames": "frames/%05d.jpg", "geometry": "geometry.npz", "loop": "ping-pong",
            "source": source, **details,
        }
        (self.staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(self.target, ignore_errors=True)
        self.staging.rename(self.target)
        return self.target


def build_from_image(rgb: np.ndarray, avatar_id: str, out_dir: Path, seconds: float = 4.0,
                     source: str = "", progress: Progress | None = None,
                     crop: ModelCrop | None = None) -> Path:
    """The degenerate video: one still, animated by a synthetic idle motion. `crop`: the
    lip-sync model's crop (avatars/model_crops.py; default: the default model's)."""
    check_avatar_id(avatar_id)
    rgb = fit_long_side(rgb)
    face = detect_single_face(rgb)
    eyes = detect_eyes(rgb, face)
    rest, mouth = close_mouth(rgb, find_mouth(rgb, face))
    frames = max(2, int(round(seconds * FPS)))
    box = crop.box(face) if crop else crop_box(face)
    geometry = []
    with PackageWriter(avatar_id, out_dir) as package:
        for k, frame in enumerate(idle_frames(rest, face, eyes, frames)):
            package.add_frame(frame.image)
            geometry.append(mouth_geometry(mouth, box, frame.head_shift))
            if progress:
                progress(k + 1, frames)
        return package.finish(
            [box] * frames, geometry, source, **(crop.manifest() if crop else {}),
            detected={"face": [face.x, face.y, face.w, face.h],
                      "eyes": [[e.x, e.y, e.w, e.h] for e in eyes],
                      "mouth": {"left": mouth.left, "right": mouth.right, "top": mouth.top,
                                "bottom": mouth.bottom, "line": mouth.line}})


def read_image(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read an image from {Path(path).name}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
