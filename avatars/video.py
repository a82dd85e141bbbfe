"""Build an avatar package from a video of the person: decode it (any container and codec PyAV
reads), put it on the player's 25 fps clock, track the face, close the mouth in every frame.

Limits: at most MAX_SECONDS long (longer videos are rejected: an idle loop needs a few seconds,
and a build costs ~30 ms per frame); frames larger than MAX_LONG_SIDE_PX on their long side are
scaled down to it (phone videos are 1080p or 4K; the player and the lip-sync crop need far less),
frames over MAX_SOURCE_SIDE_PX are rejected (decoding them costs too much memory). Only common
video containers are opened: FFmpeg's playlist and text demuxers can read other files.

The video is decoded twice: once to track the face (smoothing needs the whole track), once to
write the frames, so memory stays small whatever the length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from .mouth import find_mouth
from .package import (
    FPS,
    MAX_LONG_SIDE_PX,
    PackageWriter,
    Progress,
    check_avatar_id,
    crop_box,
    mouth_geometry,
)
from .rest_pose import close_mouth
from .tracking import FaceTracker, centred_mean

if TYPE_CHECKING:
    from .model_crops import ModelCrop

MAX_SECONDS = 60.0
MAX_SOURCE_SIDE_PX = 4096
# FFmpeg demuxer names: mp4/mov/3gp, mkv/webm, avi, flv, MPEG-TS/PS, ogg, wmv, gif.
VIDEO_DEMUXERS = "mov,matroska,avi,flv,mpegts,mpeg,ogg,asf,gif"
# Sources this close to 25 fps keep every frame (24 fps film plays 4% fast: unnoticeable when
# idle); others are resampled by timestamp.
NEAR_PLAYER_FPS = 1.0
# The lip-sync model's mouth input, per frame: lightly smoothed so the mouth does not jitter.
MOUTH_SMOOTHING_HALF = 2
TIME_EPSILON_S = 1e-6  # timestamps are rationals turned into floats


@dataclass(frozen=True)
class VideoInfo:
    width: int  # decoded, before scaling and rotation
    height: int
    fps: float | None  # average rate, when the container knows it
    seconds: float | None


def _reason(exc: Exception) -> str:
    """What went wrong, without the file's path (FFmpeg errors end with it; errors reach
    clients)."""
    return getattr(exc, "strerror", None) or type(exc).__name__


def probe_video(path: Path, max_seconds: float = MAX_SECONDS) -> VideoInfo:
    """What the first video stream holds; ValueError when it is not decodable or too long."""
    try:
        with _open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{Path(path).name}: no video stream")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            seconds = None
            if container.duration:
                seconds = container.duration / av.time_base
            elif stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            rate = stream.average_rate or stream.guessed_rate
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise ValueError(f"{Path(path).name} is not a decodable video: {_reason(exc)}") from None
    if first is None:
        raise ValueError(f"{Path(path).name}: the video has no frames")
    if seconds is not None and seconds > max_seconds + 0.5 / FPS:
        raise ValueError(f"the video is {seconds:.1f} s long; the limit is {max_seconds:.0f} s")
    if max(first.width, first.height) > MAX_SOURCE_SIDE_PX:
        raise ValueError(f"the video is {first.width}x{first.height}; the limit is "
                         f"{MAX_SOURCE_SIDE_PX} px on the long side")
    return VideoInfo(first.width, first.height, float(rate) if rate else None, seconds)


def video_frames(path: Path, info: VideoInfo, max_seconds: float = MAX_SECONDS) -> Iterator[np.ndarray]:
    """uint8 RGB frames on the 25 fps clock, upright, scaled to at most MAX_LONG_SIDE_PX."""
    scale = min(1.0, MAX_LONG_SIDE_PX / max(info.width, info.height))
    width, height = round(info.width * scale), round(info.height * scale)
    keep_every_frame = info.fps is not None and abs(info.fps - FPS) <= NEAR_PLAYER_FPS
    max_frames = int(max_seconds * FPS + 0.5)
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            decoded = container.decode(stream)
            frames = decoded if keep_every_frame else _at_player_rate(
                (frame.time if frame.time is not None else k / (info.fps or FPS), frame)
                for k, frame in enumerate(decoded))
            for count, frame in enumerate(frames):
                if count >= max_frames:
                    raise ValueError(f"the video is longer than the limit of {max_seconds:.0f} s")
                rgb = frame.to_ndarray(format="rgb24", width=width, height=height,
                                       interpolation="AREA")
                if frame.rotation:  # phones store portrait video as landscape plus a rotation
                    rgb = np.ascontiguousarray(np.rot90(rgb, round(frame.rotation / 90)))
                yield rgb
    except av.error.FFmpegError as exc:
        raise ValueError(f"the video cannot be decoded: {_reason(exc)}") from None


def _open(path: Path) -> av.container.InputContainer:
    return av.open(str(path), options={"format_whitelist": VIDEO_DEMUXERS,
                                       "protocol_whitelist": "file"})


def _at_player_rate(frames: Iterable[tuple[float, av.VideoFrame]]) -> Iterator[av.VideoFrame]:
    """Each 25 fps tick shows the source frame nearest to it: frames repeat when the source is
    slower, are skipped when it is faster. Ticks count from the first frame's time; the last
    frame lasts as long as the gap before it."""
    previous: tuple[float, av.VideoFrame] | None = None
    start, ticks, gap = 0.0, 0, 1 / FPS
    for time, frame in frames:
        if previous is None:
            start = time
        else:
            midpoint, gap = (previous[0] + time) / 2, time - previous[0]
            while start + ticks / FPS < midpoint:
                yield previous[1]
                ticks += 1
        previous = (time, frame)
    if previous is not None:
        end = previous[0] + gap - TIME_EPSILON_S  # a tick on the very end belongs to the next
        while start + ticks / FPS < end:
            yield previous[1]
            ticks += 1


def build_from_video(path: Path, avatar_id: str, out_dir: Path, progress: Progress | None = None,
                     max_seconds: float = MAX_SECONDS, source: str | None = None,
                     crop: ModelCrop | None = None) -> Path:
    """`crop`: the lip-sync model's crop (avatars/model_crops.py; default: the default model's)."""
    check_avatar_id(avatar_id)
    info = probe_video(path, max_seconds)
    # Progress counts both passes; the first only has the container's estimate of the length.
    estimate = max(1, int((info.seconds or max_seconds) * FPS))
    tracker = FaceTracker()
    for k, rgb in enumerate(video_frames(path, info, max_seconds)):
        tracker.observe(rgb)
        if progress:
            progress(min(k + 1, estimate), 2 * estimate)
    faces = tracker.track()
    count = len(faces)
    boxes, geometry = [], []
    with PackageWriter(avatar_id, out_dir) as package:
        for rgb, face in zip(video_frames(path, info, max_seconds), faces):
            rest, mouth = close_mouth(rgb, find_mouth(rgb, face))
            box = crop.box(face) if crop else crop_box(face)
            package.add_frame(rest)
            boxes.append(box)
            geometry.append(mouth_geometry(mouth, box, (0.0, 0.0)))
            if progress:
                progress(count + package.frame_count, 2 * count)
        if package.frame_count != count:
            raise ValueError(f"decoding gave {count} frames, then {package.frame_count}")
        return package.finish(
            boxes, centred_mean(np.array(geometry), MOUTH_SMOOTHING_HALF),
            source if source is not None else str(path), **(crop.manifest() if crop else {}),
            tracking={"frames_without_face": tracker.missed, "frames_scanned": tracker.scanned,
                      "source_fps": info.fps, "source_size": [info.width, info.height]})
