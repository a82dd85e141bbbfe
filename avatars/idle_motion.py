"""An idle loop from one still: blinks, breathing and a slight head sway, so a silent avatar
does not look frozen. Motions are periodic over the loop so it also plays seamlessly ping-pong."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from .face_detection import Box

SWAY_PX = 0.8  # head, left-right
NOD_PX = 0.5  # head, up-down (twice per loop)
BREATH_PX = 1.2  # shoulders
# Blink: eyelid closure per frame, about 200 ms.
BLINK_PROFILE = (0.35, 0.85, 1.0, 0.75, 0.3)
BLINK_AT_FRACTIONS = (0.3, 0.8)  # of the loop; the second is skipped on short loops
SHORT_LOOP_FRAMES = 60


@dataclass(frozen=True)
class IdleFrame:
    image: np.ndarray  # uint8 RGB
    head_shift: tuple[float, float]  # (dx, dy) applied at the face centre, pixels


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0, 1)
    return t * t * (3 - 2 * t)


def _blink_schedule(frames: int) -> dict[int, float]:
    starts = [int(f * frames) for f in BLINK_AT_FRACTIONS[: 1 if frames < SHORT_LOOP_FRAMES else 2]]
    return {s + k: amount for s in starts for k, amount in enumerate(BLINK_PROFILE) if s + k < frames}


def _close_eye(image: np.ndarray, eye: Box, amount: float) -> None:
    """Lower the upper eyelid: skin from just above the eye covers it down to the lid's edge."""
    cx, cy = eye.centre[0], eye.centre[1] + eye.h * 0.08  # Haar eye boxes include the brow
    rx, ry = eye.w * 0.38, eye.h * 0.2
    x0, x1 = int(cx - rx - 3), int(cx + rx + 4)
    y0, y1 = int(cy - ry - 3), int(cy + ry + 4)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    patch = image[y0:y1, x0:x1].astype(np.float32)
    skin_above = cv2.remap(cv2.GaussianBlur(image, (5, 5), 0), xs, ys - 2.2 * ry,
                           cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    radius = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
    inside = _smoothstep(1.15, 0.6, radius)  # soft rim: no outline around the closed lid
    lid_edge = cy - ry + 2 * ry * amount
    covered = _smoothstep(lid_edge + 0.8, lid_edge - 0.8, ys) * inside
    lash = np.exp(-((ys - lid_edge) ** 2) / 0.8) * inside * amount
    out = patch + covered[..., None] * (skin_above - patch)
    out *= 1 - 0.35 * lash[..., None]
    image[y0:y1, x0:x1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)


def idle_frames(rgb: np.ndarray, face: Box, eyes: list[Box], frames: int) -> Iterator[IdleFrame]:
    h, w = rgb.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = face.centre
    head = np.exp(-(((xs - fx) / (face.w * 1.1)) ** 2 + ((ys - fy) / (face.h * 1.2)) ** 2))
    chin = face.y + face.h * 1.1
    body = _smoothstep(chin, chin + face.h * 0.6, ys)
    blinks = _blink_schedule(frames)
    for k in range(frames):
        phase = 2 * math.pi * k / frames
        sway, nod = SWAY_PX * math.sin(phase), NOD_PX * math.sin(2 * phase)
        breath = BREATH_PX * 0.5 * (1 - math.cos(phase))
        map_x = xs - sway * head
        map_y = ys - nod * head - breath * body
        image = cv2.remap(rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if k in blinks:
            for eye in eyes:
                shifted = Box(int(round(eye.x + sway)), int(round(eye.y + nod)), eye.w, eye.h)
                _close_eye(image, shifted, blinks[k])
        yield IdleFrame(image, (sway, nod))
