"""Avatar packages (docs/INTERFACES.md), loaded once by id and shared read-only by all sessions.

A LiveTalking avatar folder (`full_imgs/`, `face_imgs/`, `coords.pkl`) in the avatar directory
loads as it is (avatars/livetalking.py), with its own boxes and its mirrored loop; so does a
LiveTalking MuseTalk folder (`latents.pt`, `mask/`, `mask_coords.pkl`: avatars/musetalk_avatar.py),
with its latents and blending masks, speaking with the `musetalk` model."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from avatars import livetalking, musetalk_avatar

from ..media.clock import VIDEO_FPS
from ..settings import DEFAULT_LIPSYNC_MODEL
from .compositor import BlendMasks

FORMAT = "livehuman-avatar"
SUPPORTED_VERSIONS = (1,)
LOOPS = ("ping-pong", "mirror")  # ours (ends shown once) and LiveTalking's (ends shown twice)
AVATAR_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class AvatarNotFound(KeyError):
    pass


@dataclass(frozen=True, eq=False)
class Avatar:
    id: str
    fps: int
    width: int
    height: int
    crop_size: int
    lipsync_model: str
    frames: np.ndarray  # uint8 [N, H, W, 3] RGB, read-only
    boxes: np.ndarray  # int32 [N, 4] x0, y0, x1, y1 (may pass the frame edge; imported
    # LiveTalking boxes are not square: their crop is stretched to S x S, as LiveTalking does)
    mouth: np.ndarray  # float32 [N, 4] relative to the box (x to its width, y to its height)
    loop: str = "ping-pong"
    # Per-frame arrays a lip-sync family reads besides the crops (lipsync/base.avatar_inputs):
    # "latents" float32 [N, 8, 32, 32] for MuseTalk. Read-only.
    model_inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    # The avatar's own blending masks (LiveTalking MuseTalk avatars); None: the compositor's.
    blend_masks: BlendMasks | None = None

    def frame_index(self, tick: int) -> int:
        """The idle loop. ping-pong: 0, 1, ..., N-1, N-2, ..., 1, 0, 1, ...;
        mirror (LiveTalking's): 0, 1, ..., N-1, N-1, N-2, ..., 0, 0, 1, ..."""
        n = len(self.frames)
        if n == 1:
            return 0
        if self.loop == "mirror":
            position = tick % (2 * n)
            return position if position < n else 2 * n - 1 - position
        position = tick % (2 * n - 2)
        return position if position < n else 2 * n - 2 - position

    def crop_rgb(self, index: int, size: int | None = None) -> np.ndarray:
        """uint8 [S, S, 3] RGB of frame `index` inside its crop box, S = `size` or crop_size."""
        frame = self.frames[index]
        size = size or self.crop_size
        x0, y0, x1, y1 = (int(v) for v in self.boxes[index])
        h, w = frame.shape[:2]
        pad = max(0, -x0, -y0, x1 - w, y1 - h)
        if pad:
            frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
        region = frame[y0:y1, x0:x1]
        if region.shape[:2] != (size, size):
            region = cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)
        return region

    def crop(self, index: int) -> np.ndarray:
        """The default model's `face` input for frame `index`: float32 [3, S, S] RGB in [0, 1]."""
        return self.crop_rgb(index).transpose(2, 0, 1).astype(np.float32) / 255.0


@dataclass(frozen=True)
class AvatarInfo:
    """What a listing shows of a package: its manifest, without loading the frames."""

    id: str
    frame_count: int
    width: int
    height: int
    source: str


def _member(folder: Path, relative: str) -> Path:
    """A file named by the manifest; it must stay inside the package."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ValueError(f"{folder.name}: manifest path {relative!r} leaves the package")
    return path


def load_avatar(folder: Path) -> Avatar:
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") not in SUPPORTED_VERSIONS:
        raise ValueError(f"{folder.name}: not a {FORMAT} package of version {SUPPORTED_VERSIONS}")
    count = int(manifest["frame_count"])
    if count < 1:
        raise ValueError(f"{folder.name}: frame_count must be >= 1")
    frames = []
    for k in range(count):
        bgr = cv2.imread(str(_member(folder, manifest["frames"] % k)), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{folder.name}: frame {k} is missing or unreadable")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    stacked = np.stack(frames)
    geometry = np.load(_member(folder, manifest["geometry"]))
    boxes, mouth = geometry["boxes"].astype(np.int32), geometry["mouth"].astype(np.float32)
    if len(boxes) != count or len(mouth) != count:
        raise ValueError(f"{folder.name}: geometry does not match frame_count {count}")
    loop = manifest.get("loop", "ping-pong")
    if loop not in LOOPS:
        raise ValueError(f"{folder.name}: loop {loop!r} is not one of {LOOPS}")
    return _shared(Avatar(
        id=manifest["id"], fps=int(manifest["fps"]), width=stacked.shape[2],
        height=stacked.shape[1], crop_size=int(manifest["crop_size"]),
        lipsync_model=manifest.get("lipsync_model", DEFAULT_LIPSYNC_MODEL),
        frames=stacked, boxes=boxes, mouth=mouth, loop=loop,
        model_inputs=_model_inputs(folder, manifest, count),
        blend_masks=_blend_masks(folder, manifest, count),
    ))


def _model_inputs(folder: Path, manifest: dict, count: int) -> dict[str, np.ndarray]:
    """The manifest's `model_inputs` ({name: "file.npy"}): one row per frame each."""
    inputs = {}
    for name, relative in (manifest.get("model_inputs") or {}).items():
        array = np.load(_member(folder, str(relative)), allow_pickle=False)
        if len(array) != count:
            raise ValueError(f"{folder.name}: model input {name!r} has {len(array)} rows for "
                             f"{count} frames")
        inputs[str(name)] = array.astype(np.float32, copy=False)
    return inputs


def _blend_masks(folder: Path, manifest: dict, count: int) -> BlendMasks | None:
    """The manifest's `blend_masks` ({"masks": "masks/%05d.png", "boxes": "file.npy"})."""
    spec = manifest.get("blend_masks")
    if not spec:
        return None
    boxes = np.load(_member(folder, str(spec["boxes"])), allow_pickle=False).astype(np.int32)
    masks = []
    for k in range(count):
        mask = cv2.imread(str(_member(folder, str(spec["masks"]) % k)), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ValueError(f"{folder.name}: blending mask {k} is missing or unreadable")
        masks.append(mask)
    return BlendMasks.of(masks, boxes)


def _shared(avatar: Avatar) -> Avatar:
    for array in (avatar.frames, avatar.boxes, avatar.mouth, *avatar.model_inputs.values()):
        array.setflags(write=False)  # shared by every session: nobody may paint on it
    return avatar


def _livetalking_model(folder: Path, default: str | None = None) -> str:
    """The lip-sync model a LiveTalking folder uses: `livehuman.json` may name one; else
    `default`, or an Ultralight folder's (found from its files) or the default model."""
    if default is None:
        default = (livetalking.default_model(livetalking.folder_model(folder))
                   or DEFAULT_LIPSYNC_MODEL)
    overrides = folder / livetalking.OVERRIDES
    if not overrides.is_file():
        return default
    try:
        model = json.loads(overrides.read_text()).get("lipsync_model", default)
    except (ValueError, AttributeError, OSError) as exc:
        raise ValueError(f"{folder.name}/{livetalking.OVERRIDES}: {exc}") from None
    if not isinstance(model, str) or not model:
        raise ValueError(f"{folder.name}/{livetalking.OVERRIDES}: lipsync_model must be a name")
    return model


def load_livetalking_avatar(folder: Path) -> Avatar:
    """A LiveTalking folder as it is (ValueError naming what is wrong with it)."""
    if musetalk_avatar.is_musetalk_folder(folder):
        return load_musetalk_avatar(folder)
    loaded = livetalking.load(folder)
    return _shared(Avatar(
        id=folder.name, fps=VIDEO_FPS,  # LiveTalking plays every avatar at 25 fps, as we do
        width=loaded.frames.shape[2],
        height=loaded.frames.shape[1], crop_size=loaded.crop_size,
        lipsync_model=_livetalking_model(folder), frames=loaded.frames, boxes=loaded.boxes,
        mouth=loaded.mouth, loop=loaded.loop,
    ))



def load_musetalk_avatar(folder: Path) -> Avatar:
    """A LiveTalking MuseTalk folder as it is: its boxes, latents and blending masks; it speaks
    with `musetalk` (or what `livehuman.json` names)."""
    loaded = musetalk_avatar.load(folder)
    return _shared(Avatar(
        id=folder.name, fps=VIDEO_FPS, width=loaded.frames.shape[2],
        height=loaded.frames.shape[1], crop_size=musetalk_avatar.FACE_PX,
        lipsync_model=_livetalking_model(folder, musetalk_avatar.MUSETALK_MODEL),
        frames=loaded.frames, boxes=loaded.boxes, mouth=loaded.mouth, loop=loaded.loop,
        model_inputs={"latents": loaded.latents},
        blend_masks=BlendMasks.of(loaded.masks, loaded.mask_boxes),
    ))


class AvatarStore:
    """Loads avatars by id from one directory, once; ids never leave that directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        self._cache: dict[str, Avatar] = {}
        self._lock = threading.Lock()  # loads run in executor threads

    def path_of(self, avatar_id: str) -> Path:
        if not AVATAR_ID.fullmatch(avatar_id):
            raise ValueError(f"avatar id {avatar_id!r} may only use letters, digits, '_' and '-'")
        folder = (self.directory / avatar_id).resolve()
        if folder.parent != self.directory:  # a symlink pointing elsewhere
            raise ValueError(f"avatar id {avatar_id!r} resolves outside the avatar directory")
        if not (folder / "manifest.json").is_file() and not livetalking.is_livetalking_folder(folder):
            raise AvatarNotFound(avatar_id)
        return folder

    def exists(self, avatar_id: str) -> bool:
        """ValueError for an id that cannot name an avatar here."""
        try:
            self.path_of(avatar_id)
        except AvatarNotFound:
            return False
        return True

    def catalog(self) -> list[AvatarInfo]:
        """The packages in the directory, by id; unreadable ones (and build staging) skipped."""
        infos = []
        for entry in sorted(self.directory.iterdir()) if self.directory.is_dir() else []:
            try:
                folder = self.path_of(entry.name)
                if not (folder / "manifest.json").is_file():
                    infos.append(_livetalking_info(folder))
                    continue
                manifest = json.loads((folder / "manifest.json").read_text())
                infos.append(AvatarInfo(entry.name, int(manifest["frame_count"]),
                                        int(manifest["width"]), int(manifest["height"]),
                                        str(manifest.get("source", ""))))
            except (AvatarNotFound, ValueError, KeyError, TypeError, OSError):
                continue  # not a package (or a broken one): loading it would fail too
        return infos

    def loaded(self, avatar_id: str) -> bool:
        """Whether the avatar is in memory already (a `load` would not read its folder)."""
        return avatar_id in self._cache

    def load(self, avatar_id: str) -> Avatar:
        """The avatar, read on first use (blocking: run it in an executor); AvatarNotFound, or
        ValueError for an id or a package that cannot be read."""
        with self._lock:
            if avatar_id not in self._cache:
                folder = self.path_of(avatar_id)
                self._cache[avatar_id] = (load_avatar(folder) if (folder / "manifest.json").is_file()
                                          else load_livetalking_avatar(folder))
            return self._cache[avatar_id]


def _livetalking_info(folder: Path) -> AvatarInfo:
    """A listing entry for a LiveTalking folder: its counts checked, one frame's size read."""
    if musetalk_avatar.is_musetalk_folder(folder):
        frames = livetalking._numbered_images(folder / livetalking.FULL_IMGS, "frame")
        header = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR)
        if header is None:
            raise ValueError(f"{folder.name}: first frame unreadable")
        return AvatarInfo(folder.name, len(frames), int(header.shape[1]), int(header.shape[0]),
                          "LiveTalking MuseTalk avatar folder")
    checked = livetalking.open_folder(folder)
    header = cv2.imread(str(checked.frames[0]), cv2.IMREAD_COLOR)
    if header is None:
        raise ValueError(f"{folder.name}: first frame unreadable")
    return AvatarInfo(folder.name, len(checked), int(header.shape[1]), int(header.shape[0]),
                      "LiveTalking avatar folder")
