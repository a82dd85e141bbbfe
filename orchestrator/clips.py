"""Custom action clips (`custom_config`): what the avatar shows between answers (greet, think,
point, wave), played by `/set_audiotype` in place of the idle loop.

Format, compatible with LiveTalking's:

    [{"audiotype": 2, "imgpath": "customvideo/wave", "audiopath": "customvideo/wave.wav"},
     {"audiotype": 3, "video": "customvideo/think.mp4"}]

`imgpath`: a folder of frames (sorted by name); `video`: any file PyAV decodes (its audio track is
the clip's audio unless `audiopath` is given); `audiopath`: optional sound played with the clip.
Paths are relative to the data directory (a leading `data/`, as LiveTalking writes them, is
accepted); nothing outside it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatars.video import probe_video, video_frames

from .audio_input import decode_audio
from .compositor import fit_to
from .errors import ApiError
from .media_clock import AUDIO_SAMPLES_PER_TICK, VIDEO_FPS

FIELD = "custom_config"
KEYS = {"audiotype", "imgpath", "audiopath", "video"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
MAX_CLIP_FRAMES = 60 * VIDEO_FPS  # image folders; videos have the avatar builder's limit
MAX_CLIPS = 32


@dataclass(frozen=True)
class ClipSource:
    """A validated entry of custom_config: files found, nothing decoded yet."""

    audiotype: int
    frames: Path  # a folder of images or a video file
    audio: Path | None


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


def load_clip(source: ClipSource, width: int, height: int) -> Clip:
    """Decode a clip for a session of this frame size (blocking: run it in an executor)."""
    where = f"field '{FIELD}': audiotype {source.audiotype}"
    if source.frames.is_dir():
        frames = _image_frames(source.frames, where)
        audio = None
    else:
        frames, audio = _video_frames(source.frames, where)
    if source.audio is not None:
        audio = _decoded_audio(source.audio, where)
    fitted = np.stack([fit_to(f, width, height) for f in frames])
    fitted.setflags(write=False)
    if audio is not None:
        # Exactly one tick of sound per frame: the clip's picture and sound loop together.
        audio = np.resize(audio, len(fitted) * AUDIO_SAMPLES_PER_TICK).astype(np.float32)
        audio.setflags(write=False)
    return Clip(source.audiotype, fitted, audio)


def _image_frames(folder: Path, where: str) -> list[np.ndarray]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_CLIP_FRAMES]
    frames = []
    for path in files:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ApiError.bad_request(f"{where}: cannot read image {path.name}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not frames:
        raise ApiError.bad_request(f"{where}: no images in its imgpath folder")
    return frames


def _video_frames(path: Path, where: str) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Frames on the 25 fps clock (the avatar builder's decoder), and the audio track if any."""
    try:
        frames = list(video_frames(path, probe_video(path)))
    except ValueError as exc:
        raise ApiError.bad_request(f"{where}: {path.name}: {exc}") from None
    if not frames:
        raise ApiError.bad_request(f"{where}: {path.name} has no frames")
    try:
        audio = decode_audio(path.read_bytes(), FIELD)
    except ApiError:
        audio = None  # a silent clip
    return frames, audio


def _decoded_audio(path: Path, where: str) -> np.ndarray:
    try:
        return decode_audio(path.read_bytes(), FIELD)
    except ApiError as exc:
        raise ApiError.bad_request(f"{where}: audiopath {path.name}: {exc.msg}") from None
