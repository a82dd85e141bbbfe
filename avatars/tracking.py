"""Following one face through a video: Haar detections per frame, cleaned and smoothed into a
steady box per frame.

A full-frame Haar scan costs 50-200 ms, a search around the last face ~10 ms: the tracker scans
every few frames (to find the face again after losing it, and to notice a second person) and
searches near the last face in between. Raw Haar boxes jitter by a few pixels and their size
steps by the detector's 10% scale factor, so the track is smoothed: the centre lightly (the head
really moves), the size strongly (it hardly changes while someone talks to a camera).
"""

from __future__ import annotations

import numpy as np

from .face_detection import Box, FaceError, detect_face_near, detect_faces, is_second_face

SCAN_EVERY_FRAMES = 5
# Once a face is tracked, scans only look for faces this large relative to it: enough to see a
# second person of similar size (SECOND_FACE_RATIO by area), and the scan is several times
# cheaper than the photo's search for any face.
SCAN_MIN_SIZE_OF_TRACKED = 0.6
MAX_MISSED_FRACTION = 0.5  # of all frames
MAX_CROWDED_FRACTION = 0.3  # of the scanned frames
# Centred moving averages, half-widths in frames (25 fps).
CENTRE_SMOOTHING_HALF = 2
SIZE_SMOOTHING_HALF = 12
# A detection this far (face widths) from the median of its neighbours, or this far off their
# size (ratio), is a false positive: dropped and filled in like a miss.
OUTLIER_HALF = 12
OUTLIER_DISTANCE_WIDTHS = 0.5
OUTLIER_SIZE_RATIO = 1.5


class FaceTracker:
    """Feed frames in order with `observe`, then `track` gives the smoothed box per frame."""

    def __init__(self) -> None:
        self._observed: list[Box | None] = []
        self._last: Box | None = None
        self.scanned = 0
        self.crowded = 0  # scanned frames with a second face of similar size
        self.most_faces = 1
        self.missed = 0  # frames without a face (misses and false positives), set by track

    def observe(self, rgb: np.ndarray) -> None:
        if len(self._observed) % SCAN_EVERY_FRAMES == 0:
            face = self._scan(rgb)
        elif self._last is not None:
            face = detect_face_near(rgb, self._last)
        else:
            face = None  # no face yet: wait for the next scan rather than scan every frame
        self._observed.append(face)
        self._last = face or self._last

    def _scan(self, rgb: np.ndarray) -> Box | None:
        self.scanned += 1
        min_side = int(self._last.w * SCAN_MIN_SIZE_OF_TRACKED) if self._last else None
        faces = detect_faces(rgb, min_side)
        similar = [f for f in faces if is_second_face(faces[0], f)]
        if len(similar) > 1:
            self.crowded += 1
            self.most_faces = max(self.most_faces, len(similar))
        if not faces:
            return None
        if self._last is None:
            return faces[0]
        cx, cy = self._last.centre
        return min(faces, key=lambda f: (f.centre[0] - cx) ** 2 + (f.centre[1] - cy) ** 2)

    def track(self) -> list[Box]:
        """One box per observed frame; FaceError when the video does not show one face."""
        total = len(self._observed)
        if total == 0:
            raise ValueError("the video has no frames")
        if self.crowded > MAX_CROWDED_FRACTION * self.scanned:
            raise FaceError(f"{self.most_faces} faces in {self.crowded} of {self.scanned} checked "
                            "frames: the video must show one person")
        # columns: centre x, centre y, size (Haar boxes are square)
        observed = np.array([(*f.centre, f.w) if f else (np.nan,) * 3 for f in self._observed])
        observed[_outliers(observed)] = np.nan
        self.missed = int(np.isnan(observed[:, 0]).sum())
        if self.missed > MAX_MISSED_FRACTION * total:
            raise FaceError(f"no face found in {self.missed} of {total} frames: "
                            "the video must show one frontal face most of the time")
        filled = _interpolate_gaps(observed)
        centre = centred_mean(filled[:, :2], CENTRE_SMOOTHING_HALF)
        size = centred_mean(filled[:, 2], SIZE_SMOOTHING_HALF, keep_trend=False)
        return [Box(int(round(cx - s / 2)), int(round(cy - s / 2)), int(round(s)), int(round(s)))
                for (cx, cy), s in zip(centre, size)]


def centred_mean(values: np.ndarray, half: int, keep_trend: bool = True) -> np.ndarray:
    """Mean over +-half frames along axis 0. With `keep_trend`, the window shrinks symmetrically
    near the ends, so steady motion passes unchanged (no lag, no pull towards the first or last
    frame); without, it is cut at the ends: full smoothing for what should stay constant."""
    sums = np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(values, axis=0)])
    out = np.empty(values.shape, np.float64)
    n = len(values)
    for i in range(n):
        h = min(half, i, n - 1 - i)
        lo, hi = (i - h, i + h + 1) if keep_trend else (max(i - half, 0), min(i + half + 1, n))
        out[i] = (sums[hi] - sums[lo]) / (hi - lo)
    return out


def _outliers(observed: np.ndarray) -> np.ndarray:
    found = ~np.isnan(observed[:, 0])
    out = np.zeros(len(observed), bool)
    for i in np.nonzero(found)[0]:
        window = observed[max(i - OUTLIER_HALF, 0) : i + OUTLIER_HALF + 1]
        cx, cy, size = np.nanmedian(window, axis=0)
        distance = np.hypot(observed[i, 0] - cx, observed[i, 1] - cy)
        ratio = max(observed[i, 2] / size, size / observed[i, 2])
        out[i] = distance > OUTLIER_DISTANCE_WIDTHS * size or ratio > OUTLIER_SIZE_RATIO
    return out


def _interpolate_gaps(observed: np.ndarray) -> np.ndarray:
    """Misses take the straight line between their neighbours (the nearest one at the ends)."""
    found = np.nonzero(~np.isnan(observed[:, 0]))[0]
    frames = np.arange(len(observed))
    return np.stack([np.interp(frames, found, observed[found, c]) for c in range(3)], axis=1)
