"""Build an avatar package (docs/INTERFACES.md) from a still picture: detect, close the mouth,
animate the idle loop, write frames, geometry and a versioned manifest."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from .face_detection import Box, detect_eyes, detect_single_face
from .idle_motion import idle_frames
from .mouth import Mouth, find_mouth
from .rest_pose import close_mouth

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
AVATAR_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

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


def build_from_image(rgb: np.ndarray, avatar_id: str, out_dir: Path, seconds: float = 4.0,
                     source: str = "", progress: Progress | None = None) -> Path:
    if not AVATAR_ID.match(avatar_id):
        raise ValueError(f"avatar id {avatar_id!r}: use 1-64 letters, digits, '_' or '-'")
    face = detect_single_face(rgb)
    eyes = detect_eyes(rgb, face)
    rest, mouth = close_mouth(rgb, find_mouth(rgb, face))
    frames = max(2, int(round(seconds * FPS)))
    box = crop_box(face)

    target = Path(out_dir) / avatar_id
    staging = target.with_name(f".{avatar_id}.building")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "frames").mkdir(parents=True)
    geometry = []
    for k, frame in enumerate(idle_frames(rest, face, eyes, frames)):
        bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(staging / "frames" / f"{k:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        geometry.append(mouth_geometry(mouth, box, frame.head_shift))
        if progress:
            progress(k + 1, frames)
    np.savez(staging / "geometry.npz", boxes=np.array([box] * frames, np.int32),
             mouth=np.array(geometry, np.float32))
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "id": avatar_id, "fps": FPS,
        "width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "frame_count": frames,
        "crop_size": CROP_SIZE, "lipsync_model": DEFAULT_LIPSYNC_MODEL,
        "lipsync_models": [DEFAULT_LIPSYNC_MODEL],
        "frames": "frames/%05d.jpg", "geometry": "geometry.npz", "loop": "ping-pong",
        "source": source,
        "detected": {"face": [face.x, face.y, face.w, face.h],
                     "eyes": [[e.x, e.y, e.w, e.h] for e in eyes],
                     "mouth": {"left": mouth.left, "right": mouth.right, "top": mouth.top,
                               "bottom": mouth.bottom, "line": mouth.line}},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # readers never see a half-built avatar
    return target


def read_image(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read an image from {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
