"""The rest pose: a closed mouth. Photos often smile with teeth showing; the lip-sync models
open the mouth from closed lips, so the lower lip and chin are warped up to meet the upper lip."""

from __future__ import annotations

import cv2
import numpy as np

from .mouth import Mouth

# Horizontal reach of the lift, as a fraction of the lip width (the corners stay put).
LIFT_HALF_WIDTH = 0.55
LIFT_PROFILE_POWER = 0.7
# Below the lips the whole jaw lifts, over a wider, smoother profile, so its sides do not shear.
JAW_HALF_WIDTH = 1.1
JAW_PROFILE_POWER = 1.5
# Below the lower lip the lift fades out over this many lip widths (the chin follows, the neck not).
CHIN_FADE_WIDTHS = 0.6


def close_mouth(rgb: np.ndarray, mouth: Mouth) -> tuple[np.ndarray, Mouth]:
    """(image with closed lips, landmarks after closing); unchanged if the lips already meet."""
    if mouth.gap <= 0:
        return rgb, mouth
    # The lift is zero outside the jaw's band: warp only that band (video builds close the mouth
    # of every frame, and a full-frame warp of a 720p frame costs ~40 ms).
    h, w = rgb.shape[:2]
    reach = JAW_HALF_WIDTH * mouth.width
    x0, x1 = max(int(mouth.centre_x - reach), 0), min(int(mouth.centre_x + reach) + 2, w)
    y0 = max(int(mouth.line), 0)
    y1 = min(int(mouth.bottom + CHIN_FADE_WIDTHS * mouth.width) + 2, h)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx = xs - mouth.centre_x
    lips = np.clip(1 - (dx / (LIFT_HALF_WIDTH * mouth.width)) ** 2, 0, 1) ** LIFT_PROFILE_POWER
    jaw = np.clip(1 - (dx / (JAW_HALF_WIDTH * mouth.width)) ** 2, 0, 1) ** JAW_PROFILE_POWER
    to_jaw = _smoothstep(mouth.line + mouth.gap, mouth.bottom + mouth.gap * 0.5, ys)
    fade = 1 - _smoothstep(mouth.bottom, mouth.bottom + CHIN_FADE_WIDTHS * mouth.width, ys)
    lift = np.where(ys >= mouth.line, mouth.gap * (lips + to_jaw * (jaw - lips)) * fade, 0)
    closed = rgb.copy()
    closed[y0:y1, x0:x1] = cv2.remap(rgb, xs, ys + lift.astype(np.float32), cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
    after = Mouth(mouth.left, mouth.right, mouth.top, mouth.bottom - mouth.gap, mouth.line, 0.0)
    return closed, after


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / max(edge1 - edge0, 1e-6), 0, 1)
    return t * t * (3 - 2 * t)
