"""LiveTalking avatar folders (its wav2lip layout), read as they are or converted to a package.

A LiveTalking avatar (`data/avatars/<id>/`, written by its `wav2lip/genavatar.py`) holds:

- `full_imgs/<n>.png` (or .jpg): the idle video's frames, names numbered `%08d`, sorted by
  that number; played forwards then backwards, each end frame shown twice (its
  `mirror_index`: 0 .. N-1, N-1 .. 0, 0 ..);
- `face_imgs/<n>.png`: the face crop of each frame, resized to the model's square input (96 or
  256) without keeping the aspect ratio;
- `coords.pkl`: a pickled list with one `(y1, y2, x1, x2)` tuple per frame (Python ints, or
  numpy integers from older versions): the face box in frame pixels, from its face detector
  plus padding, clipped to the frame, so usually not square. Its model is fed exactly
  `frame[y1:y2, x1:x2]` resized to S x S, and its output is resized back into that box.

We keep those boxes as they are (no face detection here): they are what the model was trained
to see. Only the mouth, which our default model takes as an input, is located inside the first
frame's box (avatars/mouth.py, or average proportions when no lips stand out).

An Ultralight avatar (its `ultralight/genavatar.py`) has the same three parts and its model:
`face_imgs/` are 168 x 168 (the model reads their centre 160), `coords.pkl` holds
`(x1, y1, x2, y2)` per frame (another order: its boxes come from face landmarks, nose bridge to
chin, jaw to jaw), and `ultralight.pth` is the UNet trained on this person, which
`python -m export ultralight --checkpoint` turns into a Triton model. The folder's model is
told by that file (`folder_model`). MuseTalk folders (latents, masks) are not read.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .face_detection import Box
from .mouth import find_mouth

FULL_IMGS = "full_imgs"
FACE_IMGS = "face_imgs"
COORDS = "coords.pkl"
# Optional, ours: {"lipsync_model": "wav2lip256"} picks the model a folder loaded as it is uses.
OVERRIDES = "livehuman.json"
ULTRALIGHT_CHECKPOINT = "ultralight.pth"  # an Ultralight folder's own UNet
WAV2LIP, ULTRALIGHT = "wav2lip", "ultralight"  # the LiveTalking models whose folders we read
# The Triton model an Ultralight folder speaks with unless livehuman.json names another: the
# default name of `python -m export ultralight` (export/ultralight_export.py DEFAULT_NAME).
ULTRALIGHT_MODEL = "ultralight"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # LiveTalking globs '*.[jpJP][pnPN]*[gG]'
LOOP = "mirror"
MAX_COORDS_BYTES = 16 << 20  # ~30 bytes a frame: far more than any idle video needs
MAX_FRAMES = 9000  # 6 minutes at 25 fps; every frame is held in memory


class LiveTalkingAvatarError(ValueError):
    """The folder is not a readable LiveTalking avatar; the message names what is wrong."""


def is_livetalking_folder(folder: Path) -> bool:
    """The layout, by its names only (a package has a manifest.json instead)."""
    return (folder / COORDS).is_file() and (folder / FULL_IMGS).is_dir()


def folder_model(folder: Path) -> str:
    """Which LiveTalking model wrote the folder, from its files: ULTRALIGHT when it holds
    `ultralight.pth`, else WAV2LIP."""
    return ULTRALIGHT if (folder / ULTRALIGHT_CHECKPOINT).is_file() else WAV2LIP


# --- coords.pkl -------------------------------------------------------------------------------
def _numpy_scalar() -> Callable:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 1.26
        from numpy.core.multiarray import scalar
    return scalar


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """What protocol-2 pickles call to rebuild bytes; only ever returns bytes."""
    return text.encode(encoding)


class _CoordsUnpickler(pickle.Unpickler):
    """Unpickling runs whatever callables a file names, so a hostile coords.pkl could execute
    code (`os.system`, ...). This unpickler resolves no name from the file: lists, tuples, ints
    and floats need none, and the only callables allowed are the two that rebuild numpy scalars
    (`numpy.core.multiarray.scalar` / `numpy._core.multiarray.scalar` with a `numpy.dtype`) and
    protocol 2's `_codecs.encode`. Anything else is refused before it is called."""

    def find_class(self, module: str, name: str):
        if name == "scalar" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_scalar()
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("_codecs", "encode"):
            return _codecs_encode
        raise LiveTalkingAvatarError(
            f"{COORDS} names {module}.{name}: refused (a coords file holds only numbers; "
            "loading other objects from a pickle can run code)")


def _as_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise LiveTalkingAvatarError(f"{where} is {type(value).__name__}, expected a number")
    if float(value) != int(value):
        raise LiveTalkingAvatarError(f"{where} is {value}, expected a whole number of pixels")
    return int(value)


def read_coords(path: Path, order: str = WAV2LIP) -> np.ndarray:
    """int32 [N, 4] boxes as x0, y0, x1, y1 from LiveTalking's (y1, y2, x1, x2) tuples (its
    wav2lip avatars) or (x1, y1, x2, y2) tuples (`order` ULTRALIGHT)."""
    names = _ORDERS[order]
    size = path.stat().st_size
    if size > MAX_COORDS_BYTES:
        raise LiveTalkingAvatarError(f"{COORDS} is {size} bytes (at most {MAX_COORDS_BYTES})")
    try:
        coords = _CoordsUnpickler(io.BytesIO(path.read_bytes())).load()
    except LiveTalkingAvatarError:
        raise
    except Exception as exc:
        raise LiveTalkingAvatarError(f"{COORDS} is not a readable pickle "
                                     f"({type(exc).__name__}: {exc})") from None
    if isinstance(coords, np.ndarray) or not isinstance(coords, list | tuple) or not coords:
        raise LiveTalkingAvatarError(f"{COORDS} holds {type(coords).__name__}, expected a "
                                     f"non-empty list of {names} tuples")
    boxes = []
    for k, item in enumerate(coords):
        if not isinstance(item, list | tuple) or len(item) != 4:
            raise LiveTalkingAvatarError(f"{COORDS} entry {k} is {item!r:.60}, expected {names}")
        values = tuple(_as_int(v, f"{COORDS} entry {k}") for v in item)
        x1, y1, x2, y2 = values if order == ULTRALIGHT else (values[2], values[0], values[3],
                                                              values[1])
        if not (0 <= y1 < y2 and 0 <= x1 < x2):
            raise LiveTalkingAvatarError(f"{COORDS} entry {k} {names} = {values} is an empty "
                                         "or negative box")
        boxes.append((x1, y1, x2, y2))
    return np.asarray(boxes, np.int32)


# --- the folder ---------------------------------------------------------------------------------
def _numbered_images(folder: Path, kind: str) -> list[Path]:
    if not folder.is_dir():
        raise LiveTalkingAvatarError(f"no {kind} folder {folder.name}/")
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    for path in images:
        if not path.stem.isdigit():
            raise LiveTalkingAvatarError(f"{kind} image {folder.name}/{path.name}: names must be "
                                         "frame numbers (00000000.png, ...)")
    if not images:
        raise LiveTalkingAvatarError(f"{folder.name}/ holds no .png or .jpg images")
    return sorted(images, key=lambda p: int(p.stem))


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise LiveTalkingAvatarError(f"{path.parent.name}/{path.name} is not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class LiveTalkingFolder:
    """A checked folder: image paths and boxes, nothing decoded but the first face crop."""

    path: Path
    frames: list[Path]
    faces: list[Path]
    boxes: np.ndarray  # int32 [N, 4] x0, y0, x1, y1: LiveTalking's boxes, unchanged
    face_px: int  # the face crops' size: the model input they were made for (96, 256, 168...)
    model: str = WAV2LIP  # folder_model: WAV2LIP or ULTRALIGHT

    def __len__(self) -> int:
        return len(self.frames)


def open_folder(path: Path) -> LiveTalkingFolder:
    """Check the layout and the counts; LiveTalkingAvatarError says what does not fit."""
    path = Path(path)
    if not path.is_dir():
        raise LiveTalkingAvatarError(f"{path} is not a folder")
    if not (path / COORDS).is_file():
        hint = " (a MuseTalk avatar? its latents need MuseTalk)" if (path / "latents.pt").exists() else ""
        raise LiveTalkingAvatarError(f"{path.name}: no {COORDS}{hint}")
    frames = _numbered_images(path / FULL_IMGS, "frame")
    faces = _numbered_images(path / FACE_IMGS, "face")
    model = folder_model(path)
    boxes = read_coords(path / COORDS, model)
    if not len(frames) == len(faces) == len(boxes):
        raise LiveTalkingAvatarError(
            f"{path.name}: {len(frames)} frames in {FULL_IMGS}/, {len(faces)} crops in "
            f"{FACE_IMGS}/ and {len(boxes)} boxes in {COORDS}: they must be one per frame")
    if len(frames) > MAX_FRAMES:
        raise LiveTalkingAvatarError(f"{path.name}: {len(frames)} frames (at most {MAX_FRAMES})")
    face = _read_rgb(faces[0])
    if face.shape[0] != face.shape[1]:
        raise LiveTalkingAvatarError(f"{FACE_IMGS}/{faces[0].name} is {face.shape[1]}x"
                                     f"{face.shape[0]}, expected a square model input")
    return LiveTalkingFolder(path, frames, faces, boxes, face.shape[0], model)


def read_frames(folder: LiveTalkingFolder,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB, checked against the boxes (all inside, all the same size)."""
    frames = []
    for k, path in enumerate(folder.frames):
        rgb = _read_rgb(path)
        if frames and rgb.shape != frames[0].shape:
            raise LiveTalkingAvatarError(f"{FULL_IMGS}/{path.name} is {rgb.shape[1]}x"
                                         f"{rgb.shape[0]}, the first frame "
                                         f"{frames[0].shape[1]}x{frames[0].shape[0]}")
        x0, y0, x1, y1 = (int(v) for v in folder.boxes[k])
        if x1 > rgb.shape[1] or y1 > rgb.shape[0]:
            raise LiveTalkingAvatarError(
                f"{COORDS} entry {k} {_ORDERS[folder.model]} = "
                f"{_as_stored(folder.boxes[k], folder.model)} leaves frame "
                f"{path.name} ({rgb.shape[1]}x{rgb.shape[0]})")
        frames.append(rgb)
        if progress:
            progress(k + 1, len(folder.frames))
    return np.stack(frames)


def mouth_in_box(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """float32 [4]: the default model's `mouth` input (centre x, lip line y, lip width, lip
    height) as fractions of the box's width (x) and height (y), found inside LiveTalking's box."""
    x0, y0, x1, y1 = (int(v) for v in box)
    width, height = x1 - x0, y1 - y0
    mouth = find_mouth(rgb, Box(x0, y0, width, height))
    return np.array([(mouth.centre_x - x0) / width, (mouth.line - y0) / height,
                     mouth.width / width, (mouth.bottom - mouth.top) / height], np.float32)


@dataclass(frozen=True)
class LiveTalkingAvatar:
    frames: np.ndarray  # uint8 [N, H, W, 3] RGB
    boxes: np.ndarray  # int32 [N, 4] x0, y0, x1, y1 (LiveTalking's, unchanged)
    mouth: np.ndarray  # float32 [N, 4] relative to each box
    crop_size: int
    loop: str = LOOP
    model: str = WAV2LIP  # folder_model


def load(path: Path, progress: Callable[[int, int], None] | None = None) -> LiveTalkingAvatar:
    """Everything the server needs from a LiveTalking folder."""
    folder = open_folder(path)
    frames = read_frames(folder, progress)
    mouth = mouth_in_box(frames[0], folder.boxes[0])
    return LiveTalkingAvatar(frames, folder.boxes, np.tile(mouth, (len(folder), 1)),
                             folder.face_px, model=folder.model)


def default_model(model: str) -> str | None:
    """The Triton model a folder of LiveTalking's `model` speaks with by default (None: the
    project's default model)."""
    return ULTRALIGHT_MODEL if model == ULTRALIGHT else None


def import_folder(path: Path, avatar_id: str, out_dir: Path, lipsync_model: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """Write a package (docs/INTERFACES.md) from a LiveTalking folder: its frames, its boxes as
    they are, its crop size and its mirrored loop (an Ultralight folder speaks with
    ULTRALIGHT_MODEL unless `lipsync_model` names another; its ultralight.pth is not copied:
    it is exported to Triton)."""
    from .package import DEFAULT_LIPSYNC_MODEL, PackageWriter, check_avatar_id

    check_avatar_id(avatar_id)
    avatar = load(path, progress)
    model = lipsync_model or default_model(avatar.model) or DEFAULT_LIPSYNC_MODEL
    with PackageWriter(avatar_id, out_dir) as package:
        for frame in avatar.frames:
            package.add_frame(frame)
        return package.finish(
            avatar.boxes, avatar.mouth, f"LiveTalking avatar {Path(path).name}",
            crop_size=avatar.crop_size, loop=avatar.loop, lipsync_model=model,
            lipsync_models=sorted({model, DEFAULT_LIPSYNC_MODEL}),
            livetalking={"model": avatar.model, "face_px": avatar.crop_size,
                         "frames": len(avatar.frames),
                         "boxes": f"coords.pkl {_ORDERS[avatar.model]} as x0, y0, x1, y1"})


_ORDERS = {WAV2LIP: "(y1, y2, x1, x2)", ULTRALIGHT: "(x1, y1, x2, y2)"}


def _as_stored(box: np.ndarray, model: str) -> tuple[int, ...]:
    """A box x0, y0, x1, y1 as the folder's coords.pkl writes it."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return (x0, y0, x1, y1) if model == ULTRALIGHT else (y0, y1, x0, x1)
