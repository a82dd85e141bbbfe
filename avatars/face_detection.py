"""Face and eye detection with OpenCV's Haar cascades (shipped in the opencv-python wheel)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

MIN_FACE_FRACTION = 0.08  # of the image's shorter side
# A second face at least this large (relative to the largest) makes the choice ambiguous.
SECOND_FACE_RATIO = 0.5
# Tracking in video: search around the last face, this many face widths on each side, for a face
# of about the same size (Haar sizes step by the 1.1 scale factor, so allow a few steps).
TRACK_MARGIN_WIDTHS = 0.6
TRACK_MIN_SIZE, TRACK_MAX_SIZE = 0.75, 1.35

# Loading a cascade's XML costs ~25 ms, more than a tracked detection; a classifier keeps
# per-image state while detecting, so each thread (builds run in executor threads) has its own.
_cascades = threading.local()


class FaceError(ValueError):
    """The picture does not show exactly one usable face."""


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2

    @property
    def area(self) -> int:
        return self.w * self.h


def _cascade(name: str) -> cv2.CascadeClassifier:
    loaded = _cascades.__dict__
    if name not in loaded:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
        if cascade.empty():
            raise RuntimeError(f"OpenCV cascade {name} not found")
        loaded[name] = cascade
    return loaded[name]


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def _frontal_faces(gray: np.ndarray, min_side: int, max_side: int = 0) -> list[Box]:
    found = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side),
        maxSize=(max_side, max_side))
    return [Box(int(x), int(y), int(w), int(h)) for x, y, w, h in found]


def detect_faces(rgb: np.ndarray, min_side: int | None = None) -> list[Box]:
    """All frontal faces at least `min_side` pixels wide (default: MIN_FACE_FRACTION of the
    shorter side), largest first. The cost grows as (shorter side / min_side)^2."""
    if min_side is None:
        min_side = int(min(rgb.shape[:2]) * MIN_FACE_FRACTION)
    return sorted(_frontal_faces(_gray(rgb), min_side), key=lambda b: -b.area)


def is_second_face(largest: Box, other: Box) -> bool:
    """Whether `other` is large enough that the picture may be of two people."""
    return other.area >= SECOND_FACE_RATIO * largest.area


def detect_face_near(rgb: np.ndarray, last: Box) -> Box | None:
    """The face of about `last`'s size nearest to it, searched around it only (fast: tracking)."""
    margin = int(last.w * TRACK_MARGIN_WIDTHS)
    x0, y0 = max(last.x - margin, 0), max(last.y - margin, 0)
    # Equalised over the whole frame, as a scan does: equalising the region alone shifts the
    # detector's boxes (measured: 5% larger), and the track would jump at every scan.
    region = _gray(rgb)[y0 : last.y + last.h + margin, x0 : last.x + last.w + margin]
    found = _frontal_faces(region, int(last.w * TRACK_MIN_SIZE), int(last.w * TRACK_MAX_SIZE))
    if not found:
        return None
    cx, cy = last.centre[0] - x0, last.centre[1] - y0
    b = min(found, key=lambda f: (f.centre[0] - cx) ** 2 + (f.centre[1] - cy) ** 2)
    return Box(b.x + x0, b.y + y0, b.w, b.h)


def detect_single_face(rgb: np.ndarray) -> Box:
    faces = detect_faces(rgb)
    if not faces:
        raise FaceError("no face found: use a frontal, well-lit picture of one person")
    if len(faces) > 1 and is_second_face(faces[0], faces[1]):
        raise FaceError(f"{len(faces)} faces found: the avatar picture must show one person")
    return faces[0]


def detect_eyes(rgb: np.ndarray, face: Box) -> list[Box]:
    """Up to two eyes in the upper half of the face, left to right (image coordinates)."""
    top = rgb[face.y : face.y + face.h // 2 + face.h // 8, face.x : face.x + face.w]
    found = _cascade("haarcascade_eye.xml").detectMultiScale(
        _gray(top), scaleFactor=1.1, minNeighbors=5, minSize=(face.w // 8, face.w // 8))
    eyes = sorted((Box(face.x + int(x), face.y + int(y), int(w), int(h)) for x, y, w, h in found),
                  key=lambda b: -b.w * b.h)[:2]
    return sorted(eyes, key=lambda b: b.x)
