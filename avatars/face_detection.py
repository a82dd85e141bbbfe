"""Face and eye detection with OpenCV's Haar cascades (shipped in the opencv-python wheel)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_FACE_FRACTION = 0.08  # of the image's shorter side
# A second face at least this large (relative to the largest) makes the choice ambiguous.
SECOND_FACE_RATIO = 0.5


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


def _cascade(name: str) -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    if cascade.empty():
        raise RuntimeError(f"OpenCV cascade {name} not found")
    return cascade


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def detect_faces(rgb: np.ndarray) -> list[Box]:
    """All frontal faces, largest first."""
    gray = _gray(rgb)
    min_side = int(min(gray.shape) * MIN_FACE_FRACTION)
    found = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    boxes = [Box(int(x), int(y), int(w), int(h)) for x, y, w, h in found]
    return sorted(boxes, key=lambda b: -b.w * b.h)


def detect_single_face(rgb: np.ndarray) -> Box:
    faces = detect_faces(rgb)
    if not faces:
        raise FaceError("no face found: use a frontal, well-lit picture of one person")
    if len(faces) > 1 and faces[1].w * faces[1].h >= SECOND_FACE_RATIO * faces[0].w * faces[0].h:
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
