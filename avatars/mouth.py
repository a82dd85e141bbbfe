"""Mouth landmarks from a face box: the Haar mouth (smile) cascade finds the mouth, lip colour
(CIELAB a*: lips are redder than skin) finds the lips, brightness finds teeth between them."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .face_detection import Box, _cascade, _gray

# Where a mouth can be, as fractions of the face box.
SEARCH_TOP, SEARCH_BOTTOM = 0.58, 1.0
SEARCH_LEFT, SEARCH_RIGHT = 0.18, 0.82
# Lips: a* this much above the skin's median; teeth: bright and unsaturated.
LIP_REDNESS_MIN = 6
TEETH_LIGHTNESS_MIN = 215
TEETH_SATURATION_MAX = 50
TEETH_ROW_FILL = 0.3


@dataclass(frozen=True)
class Mouth:
    """Image coordinates (pixels)."""

    left: tuple[float, float]
    right: tuple[float, float]
    top: float  # top of the upper lip
    bottom: float  # bottom of the lower lip
    line: float  # where the lips meet (the upper lip's lower edge when teeth show)
    gap: float  # height of the opening between the lips at the centre (0 when closed)

    @property
    def centre_x(self) -> float:
        return (self.left[0] + self.right[0]) / 2

    @property
    def width(self) -> float:
        return self.right[0] - self.left[0]


def _search_region(face: Box) -> Box:
    x0 = face.x + int(face.w * SEARCH_LEFT)
    y0 = face.y + int(face.h * SEARCH_TOP)
    return Box(x0, y0, face.x + int(face.w * SEARCH_RIGHT) - x0,
               face.y + int(face.h * SEARCH_BOTTOM) - y0)


def _mouth_box(rgb: np.ndarray, region: Box) -> Box:
    """The mouth cascade's detection nearest the region's centre, or the region itself."""
    crop = rgb[region.y : region.y + region.h, region.x : region.x + region.w]
    found = _cascade("haarcascade_smile.xml").detectMultiScale(
        _gray(crop), scaleFactor=1.05, minNeighbors=8, minSize=(region.w // 3, region.h // 6))
    if len(found) == 0:
        return region
    cx, cy = region.w / 2, region.h * 0.45
    x, y, w, h = min(found, key=lambda b: (b[0] + b[2] / 2 - cx) ** 2 + (b[1] + b[3] / 2 - cy) ** 2)
    pad_x, pad_y = int(w * 0.15), int(h * 0.3)
    x0, y0 = max(region.x + x - pad_x, 0), max(region.y + y - pad_y, 0)
    return Box(x0, y0, w + 2 * pad_x, h + 2 * pad_y)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count <= 1:
        return np.zeros_like(mask, bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def find_mouth(rgb: np.ndarray, face: Box) -> Mouth:
    region = _search_region(face)
    box = _mouth_box(rgb, region)
    crop = rgb[box.y : box.y + box.h, box.x : box.x + box.w]
    lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB).astype(np.int16)
    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
    redness = lab[:, :, 1] - np.median(lab[:, :, 1])
    teeth = (lab[:, :, 0] >= TEETH_LIGHTNESS_MIN) & (hsv[:, :, 1] <= TEETH_SATURATION_MAX)
    lips = cv2.morphologyEx((redness >= LIP_REDNESS_MIN).astype(np.uint8), cv2.MORPH_CLOSE,
                            np.ones((3, 3), np.uint8))
    # Teeth sit between the lips: join them so upper and lower lip form one component.
    mouth_mask = _largest_component(cv2.morphologyEx(
        (lips.astype(bool) | teeth).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)))
    if mouth_mask.sum() < box.w:  # nothing lip-like: fall back to the face's proportions
        return _proportional_mouth(face)
    ys, xs = np.nonzero(mouth_mask)
    left_x, right_x = xs.min(), xs.max()
    left_y = ys[xs <= left_x + 1].mean()
    right_y = ys[xs >= right_x - 1].mean()
    c0, c1 = int(left_x + 0.35 * (right_x - left_x)), int(right_x - 0.35 * (right_x - left_x)) + 1
    centre = (xs >= c0) & (xs < c1)
    top, bottom = ys[centre].min(), ys[centre].max()
    # rows where teeth fill a good part of the centre (specular highlights on lips do not)
    teeth_rows = np.nonzero((teeth & mouth_mask)[:, c0:c1].mean(axis=1) >= TEETH_ROW_FILL)[0]
    if teeth_rows.size >= 2:
        line, gap = float(teeth_rows.min()), float(teeth_rows.max() - teeth_rows.min() + 1)
    else:
        # closed lips: they meet along the darkest row between top and bottom
        rows = np.arange(int(top), int(bottom) + 1)
        profile = lab[rows, c0:c1, 0].astype(np.float32).mean(axis=1)
        line, gap = float(rows[int(np.argmin(profile))]), 0.0
    return Mouth(
        left=(float(box.x + left_x), float(box.y + left_y)),
        right=(float(box.x + right_x), float(box.y + right_y)),
        top=float(box.y + top),
        bottom=float(box.y + bottom),
        line=float(box.y + line),
        gap=gap,
    )


def _proportional_mouth(face: Box) -> Mouth:
    """Average facial proportions, for faces whose lips do not stand out from the skin."""
    cx, line = face.x + face.w / 2, face.y + face.h * 0.8
    half = face.w * 0.2
    return Mouth((cx - half, line), (cx + half, line), line - face.h * 0.06, line + face.h * 0.07,
                 line, 0.0)
