"""Paste lip-synced face crops back into the avatar's full frame with a feathered mask."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

# The lip-sync models only change the lower face; blending just that region keeps the resize
# blur of the crop away from the eyes and hair, and the feather hides the rectangle's edges.
MASK_TOP_FRACTION = 0.45
MASK_SIDE_FRACTION = 0.12
MASK_BOTTOM_FRACTION = 0.02
MASK_FEATHER_FRACTION = 0.08


@lru_cache(maxsize=32)
def lower_face_mask(size: int, width: int | None = None,
                    top_fraction: float = MASK_TOP_FRACTION) -> np.ndarray:
    """float32 [size, width, 1] in [0, 1] (width defaults to size): 1 over the mouth and chin
    (from `top_fraction` of the height down), fading to 0 at the edges."""
    height, width = size, width or size
    mask = np.zeros((height, width), np.float32)
    top = int(height * top_fraction)
    side = int(width * MASK_SIDE_FRACTION)
    bottom = height - int(height * MASK_BOTTOM_FRACTION)
    mask[top:bottom, side : width - side] = 1.0
    blur_x = max(3, int(width * MASK_FEATHER_FRACTION) | 1)
    blur_y = max(3, int(height * MASK_FEATHER_FRACTION) | 1)
    mask = cv2.GaussianBlur(mask, (blur_x, blur_y), 0)
    mask.setflags(write=False)
    return mask[:, :, None]


@lru_cache(maxsize=32)
def _blend_weights(height: int, width: int,
                   top_fraction: float = MASK_TOP_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """The lower-face mask as cv2.blendLinear's weights: float32 [height, width] for the crop
    and for the frame (1 - mask), each contiguous."""
    mask = np.ascontiguousarray(lower_face_mask(height, width, top_fraction)[:, :, 0])
    rest = np.ascontiguousarray(1.0 - mask, dtype=np.float32)
    mask.setflags(write=False)
    rest.setflags(write=False)
    return mask, rest


def paste_face(frame: np.ndarray, box: np.ndarray, crop: np.ndarray,
               top_fraction: float | None = None) -> np.ndarray:
    """Return a copy of `frame` (uint8 HxWx3) with `crop` (uint8 SxSx3) blended into `box`,
    from `top_fraction` of its height down (None: MASK_TOP_FRACTION; a model whose crop starts
    lower on the face says how high its drawing reaches: lipsync/base.LipSyncModel).

    The box may extend past the frame edges (only the visible part is written) and need not be
    square (an imported LiveTalking box: the crop is stretched back into it). The blend is
    OpenCV's (`blendLinear`, rounded: within one level of mask * crop + (1 - mask) * frame),
    about a sixth of the time of the same sum in numpy floats (0.27 against 1.5 ms for the
    default avatar's box here): it runs on the event loop for every talking tick.
    """
    out = frame.copy()
    x0, y0, x1, y1 = (int(v) for v in box)
    width, height = x1 - x0, y1 - y0
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x1, frame.shape[1]), min(y1, frame.shape[0])
    if fx0 >= fx1 or fy0 >= fy1:
        return out
    resized = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
    weights, rest = _blend_weights(height, width, MASK_TOP_FRACTION if top_fraction is None
                                   else top_fraction)
    cx0, cy0 = fx0 - x0, fy0 - y0
    cx1, cy1 = cx0 + (fx1 - fx0), cy0 + (fy1 - fy0)
    if (cx0, cy0, cx1, cy1) != (0, 0, width, height):  # past an edge: the visible part
        resized = np.ascontiguousarray(resized[cy0:cy1, cx0:cx1])
        weights = np.ascontiguousarray(weights[cy0:cy1, cx0:cx1])
        rest = np.ascontiguousarray(rest[cy0:cy1, cx0:cx1])
    region = np.ascontiguousarray(out[fy0:fy1, fx0:fx1])
    out[fy0:fy1, fx0:fx1] = cv2.blendLinear(resized, region, weights, rest)
    return out


@dataclass(frozen=True, eq=False)
class BlendMasks:
    """An avatar's own blending masks (LiveTalking's MuseTalk avatars): per frame, a region of
    the frame (`boxes` int32 [N, 4] x0, y0, x1, y1) and the weights of the lip-synced picture in
    it (`weights` float32 [h, w] in [0, 1], the region's size). Read-only."""

    boxes: np.ndarray
    weights: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, masks: list[np.ndarray], boxes: np.ndarray) -> BlendMasks:
        """uint8 grey masks (0..255) and their boxes; ValueError when the counts differ."""
        if len(masks) != len(boxes):
            raise ValueError(f"{len(masks)} masks for {len(boxes)} boxes")
        weights = []
        for mask in masks:
            weight = np.ascontiguousarray(mask, np.float32) / np.float32(255.0)
            weight.setflags(write=False)
            weights.append(weight)
        boxes = np.asarray(boxes, np.int32)
        boxes.setflags(write=False)
        return cls(boxes, tuple(weights))


def paste_masked(frame: np.ndarray, box: np.ndarray, crop: np.ndarray, masks: BlendMasks,
                 index: int) -> np.ndarray:
    """A copy of `frame` (uint8 HxWx3) with `crop` (uint8 SxSx3) resized into `box`, blended
    through the avatar's own mask `index` over its region (LiveTalking's get_image_blending):
    inside the region the frame with the crop in its box, weighted by the mask. The parts of the
    region past the frame's edges are left out."""
    out = frame.copy()
    x0, y0, x1, y1 = (int(v) for v in box)
    composed = frame.copy()
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x1, frame.shape[1]), min(y1, frame.shape[0])
    if fx0 < fx1 and fy0 < fy1:
        resized = cv2.resize(crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        composed[fy0:fy1, fx0:fx1] = resized[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    mx0, my0, mx1, my1 = (int(v) for v in masks.boxes[index])
    weights = masks.weights[index]
    rx0, ry0 = max(mx0, 0), max(my0, 0)
    rx1, ry1 = min(mx1, frame.shape[1]), min(my1, frame.shape[0])
    if rx0 >= rx1 or ry0 >= ry1:
        return out
    weight = np.ascontiguousarray(weights[ry0 - my0 : ry1 - my0, rx0 - mx0 : rx1 - mx0])
    rest = np.ascontiguousarray(1.0 - weight, dtype=np.float32)
    out[ry0:ry1, rx0:rx1] = cv2.blendLinear(np.ascontiguousarray(composed[ry0:ry1, rx0:rx1]),
                                            np.ascontiguousarray(frame[ry0:ry1, rx0:rx1]),
                                            weight, rest)
    return out


def fit_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` scaled to fit width x height, centred on a black background (aspect kept)."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - new_w) // 2, (height - new_h) // 2
    out[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return out


def crossfade(previous: np.ndarray, current: np.ndarray, amount: float) -> np.ndarray:
    """`amount` 0 → previous, 1 → current: switching between clip, idle loop and another avatar
    blends over a few frames instead of jumping."""
    return cv2.addWeighted(previous, 1.0 - amount, current, amount, 0.0)
