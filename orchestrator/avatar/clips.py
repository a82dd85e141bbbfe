"""Custom action clips (`custom_config`): what the avatar shows between answers (greet, think,
point, wave), played by `/set_audiotype` in place of the idle loop.

Format, compatible with LiveTalking's:

    [{"audiotype": 2, "imgpath": "customvideo/wave", "audiopath": "customvideo/wave.wav"},
     {"audiotype": 3, "video": "customvideo/think.mp4"}]

`imgpath`: a folder of frames (sorted by name); `video`: any file PyAV decodes (its audio track is
the clip's audio unless `audiopath` is given); `audiopath`: optional sound played with the clip.
Paths are relative to the data directory (a leading `data/`, as LiveTalking writes them, is
accepted); nothing outside it is read.

Limits, checked from the files' listing and container headers before anything is decoded: at most
MAX_CLIPS entries, MAX_CLIP_SECONDS per clip and MAX_CONFIG_CLIP_SECONDS for the distinct clips
of one config together (a clip named twice counts once: it is decoded once, see clip_cache).
"""

from __future__ import annotations

import math
import mmap
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatars.video import probe_video, video_frames

from ..errors import ApiError
from ..media.audio_decoding import decode_audio_file
from ..media.clock import AUDIO_SAMPLES_PER_TICK, VIDEO_FPS
from .compositor import fit_to

FIELD = "custom_config"
KEYS = {"audiotype", "imgpath", "audiopath", "video"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
MAX_CLIPS = 32  # entries of one custom_config
MAX_CLIP_SECONDS = 60.0  # one clip, on the 25 fps clock
MAX_CONFIG_CLIP_SECONDS = 120.0  # the distinct clips of one custom_config together
MAX_CLIP_FRAMES = int(MAX_CLIP_SECONDS * VIDEO_FPS)
CHANNELS = 3  # RGB


@dataclass(frozen=True)
class ClipSource:
    """A validated entry of custom_config: files found, nothing decoded yet."""

    audiotype: int
    frames: Path  # a folder of images or a video file
    audio: Path | None


@dataclass(frozen=True)
class ClipMedia:
    """A decoded clip, shared by every session that shows it (never written to)."""

    frames: np.ndarray  # uint8 [N, H, W, 3] RGB at a session's frame size, read-only
    audio: np.ndarray | None  # float32 16 kHz mono, N frames' worth, read-only; None: silent


@dataclass(frozen=True, eq=False)
class Clip:
    audiotype: int
    frames: np.ndarray  # uint8 [N, H, W, 3] RGB at the session's frame size, read-only
    audio: np.ndarray | None  # float32 16 kHz mono, N frames' worth, or None (silent clip)

    def frame_audio(self, position: int) -> np.ndarray | None:
        if self.audio is None:
            return None
        return self.audio[position * AUDIO_SAMPLES_PER_TICK : (position + 1) * AUDIO_SAMPLES_PER_TICK]


MAX_PATH_CHARS = 1024


def _inside(data_dir: Path, value: object, where: str, kind: str | None = None) -> Path:
    """The existing path `value` names inside the data directory; `kind` "file" or "folder"
    when it must be one. 400 for anything else, never an OSError (NUL, a name too long)."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError.bad_request(f"field '{FIELD}': {where} must be a non-empty path string")
    shown = repr(value[:80])
    if "\0" in value or len(value) > MAX_PATH_CHARS:
        raise ApiError.bad_request(f"field '{FIELD}': {where} {shown} is not a usable path "
                                   f"(NUL, or longer than {MAX_PATH_CHARS} characters)")
    relative = Path(value)
    if relative.is_absolute() or ".." in relative.parts:
        raise ApiError.bad_request(f"field '{FIELD}': {where} {shown} must be a path inside the data directory")
    try:
        if relative.parts and relative.parts[0] == data_dir.name and not (data_dir / relative).exists():
            relative = Path(*relative.parts[1:])
        root = data_dir.resolve()
        path = (root / relative).resolve()
        inside = path.is_relative_to(root)
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a loop
        raise ApiError.bad_request(f"field '{FIELD}': {where} {shown} is not a usable path "
                                   f"({type(exc).__name__})") from None
    if not inside:
        raise ApiError.bad_request(f"field '{FIELD}': {where} {shown} leaves the data directory")
    if not exists:
        raise ApiError.bad_request(f"field '{FIELD}': {where} {shown} not found")
    if kind == "file" and is_dir:
        raise ApiError.bad_request(f"field '{FIELD}': {where} {shown} is a folder, not a file")
    if kind == "folder" and not is_dir:
        raise ApiError.bad_request(f"field '{FIELD}': {where} {shown} is not a folder")
    return path


def parse_custom_config(config: list, data_dir: Path) -> list[ClipSource]:
    """Check every entry (keys, types, files) without decoding anything: 400 naming the problem."""
    if len(config) > MAX_CLIPS:
        raise ApiError.bad_request(f"field '{FIELD}': at most {MAX_CLIPS} clips")
    sources: list[ClipSource] = []
    for i, entry in enumerate(config):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise ApiError.bad_request(f"field '{FIELD}': {where} must be an object")
        unknown = sorted(set(entry) - KEYS)
        if unknown:
            raise ApiError.bad_request(f"field '{FIELD}': {where} has unknown keys {unknown}; "
                                       f"allowed: {sorted(KEYS)}")
        audiotype = entry.get("audiotype")
        if not isinstance(audiotype, int) or isinstance(audiotype, bool) or audiotype < 1:
            raise ApiError.bad_request(f"field '{FIELD}': {where}.audiotype must be an integer >= 1 "
                                       "(0 is the idle loop)")
        if any(s.audiotype == audiotype for s in sources):
            raise ApiError.bad_request(f"field '{FIELD}': audiotype {audiotype} appears twice")
        if ("imgpath" in entry) == ("video" in entry):
            raise ApiError.bad_request(f"field '{FIELD}': {where} needs exactly one of 'imgpath' or 'video'")
        key = "imgpath" if "imgpath" in entry else "video"
        frames = _inside(data_dir, entry[key], f"{where}.{key}")
        if key == "imgpath" and not frames.is_dir():
            raise ApiError.bad_request(f"field '{FIELD}': {where}.imgpath must be a folder of images")
        if key == "video" and not frames.is_file():
            raise ApiError.bad_request(f"field '{FIELD}': {where}.video must be a file")
        audio = _inside(data_dir, entry["audiopath"], f"{where}.audiopath", "file") if "audiopath" in entry else None
        sources.append(ClipSource(audiotype, frames, audio))
    return sources


def clip_frames(source: ClipSource) -> int:
    """How many 25 fps frames the clip will have, from the folder listing or the container's
    duration (blocking, cheap: nothing is decoded but a video's first frame); 400 over
    MAX_CLIP_SECONDS. A video whose container does not say counts as the limit."""
    where = f"field '{FIELD}': audiotype {source.audiotype}"
    if source.frames.is_dir():
        count = len(_image_files(source.frames))
        if count == 0:
            raise ApiError.bad_request(f"{where}: no images in its imgpath folder")
    else:
        try:
            info = probe_video(source.frames, MAX_CLIP_SECONDS)
        except ValueError as exc:
            raise ApiError.bad_request(f"{where}: {source.frames.name}: {exc}") from None
        count = math.ceil(info.seconds * VIDEO_FPS) if info.seconds else MAX_CLIP_FRAMES
    if count > MAX_CLIP_FRAMES:
        raise ApiError.bad_request(f"{where}: {count} frames ({count / VIDEO_FPS:.1f} s at "
                                   f"{VIDEO_FPS} fps); the limit is {MAX_CLIP_SECONDS:.0f} s per clip")
    return count


def check_config_frames(frames: list[int]) -> None:
    """400 when the distinct clips of one config hold more than MAX_CONFIG_CLIP_SECONDS."""
    total = sum(frames)
    if total > MAX_CONFIG_CLIP_SECONDS * VIDEO_FPS:
        raise ApiError.bad_request(f"field '{FIELD}': its clips last {total / VIDEO_FPS:.1f} s "
                                   f"together; the limit is {MAX_CONFIG_CLIP_SECONDS:.0f} s")


def decode_clip(source: ClipSource, width: int, height: int,
                directory: Path | None = None) -> ClipMedia:
    """Decode a clip at this frame size (blocking: run it in an executor). With `directory`, the
    frames go to a nameless file there, memory-mapped read-only: shared pages instead of heap,
    freed when the last user drops them, nothing left on disk after a crash. Decoding holds one
    frame in memory at a time."""
    where = f"field '{FIELD}': audiotype {source.audiotype}"
    if source.frames.is_dir():
        frames, audio = _image_frames(source.frames, where), None
    else:
        frames, audio = _video_frames(source.frames, where), source.frames
    if source.audio is not None:
        audio = source.audio
    fitted = (fit_to(frame, width, height) for frame in frames)
    stored = _memory_mapped(fitted, directory, width, height) if directory else _in_memory(fitted)
    if len(stored) == 0:
        raise ApiError.bad_request(f"{where}: {source.frames.name} has no frames")
    sound = None
    if audio is not None:
        sound = _decoded_audio(audio, where, optional=audio == source.frames)
    if sound is not None:
        # Exactly one tick of sound per frame: the clip's picture and sound loop together.
        sound = np.resize(sound, len(stored) * AUDIO_SAMPLES_PER_TICK).astype(np.float32)
        sound.setflags(write=False)
    return ClipMedia(stored, sound)


def load_clip(source: ClipSource, width: int, height: int) -> Clip:
    """One clip decoded into memory, uncached (tools and tests; sessions use clip_cache)."""
    media = decode_clip(source, width, height)
    return Clip(source.audiotype, media.frames, media.audio)


def _in_memory(frames: Iterator[np.ndarray]) -> np.ndarray:
    listed = list(frames)
    stacked = np.stack(listed) if listed else np.zeros((0, 0, 0, CHANNELS), np.uint8)
    stacked.setflags(write=False)
    return stacked


def _memory_mapped(frames: Iterator[np.ndarray], directory: Path, width: int,
                   height: int) -> np.ndarray:
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    with tempfile.TemporaryFile(dir=directory) as file:  # O_TMPFILE: it never has a name
        for frame in frames:
            file.write(memoryview(np.ascontiguousarray(frame, np.uint8)).cast("B"))
            count += 1
        if count == 0:
            return np.zeros((0, height, width, CHANNELS), np.uint8)
        file.flush()
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)  # keeps its own handle
    return np.frombuffer(mapped, np.uint8).reshape(count, height, width, CHANNELS)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _image_frames(folder: Path, where: str) -> Iterator[np.ndarray]:
    files = _image_files(folder)
    if len(files) > MAX_CLIP_FRAMES:  # the folder grew since the limits were checked
        raise ApiError.bad_request(f"{where}: more than {MAX_CLIP_FRAMES} images; the limit is "
                                   f"{MAX_CLIP_SECONDS:.0f} s per clip")
    for path in files:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ApiError.bad_request(f"{where}: cannot read image {path.name}")
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _video_frames(path: Path, where: str) -> Iterator[np.ndarray]:
    """Frames on the 25 fps clock (the avatar builder's decoder), at most MAX_CLIP_SECONDS."""
    try:
        yield from video_frames(path, probe_video(path, MAX_CLIP_SECONDS), MAX_CLIP_SECONDS)
    except ValueError as exc:
        raise ApiError.bad_request(f"{where}: {path.name}: {exc}") from None


def _decoded_audio(path: Path, where: str, optional: bool) -> np.ndarray | None:
    """The file's sound; a video without a usable audio track (`optional`) is a silent clip."""
    try:
        return decode_audio_file(path, FIELD)
    except ApiError as exc:
        if optional:
            return None
        raise ApiError.bad_request(f"{where}: audiopath {path.name}: {exc.msg}") from None
