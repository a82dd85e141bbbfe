"""MuseTalk avatars: LiveTalking's MuseTalk folders read as they are or imported, and the
MuseTalk latents of our own packages.

A LiveTalking MuseTalk avatar (`data/avatars/<id>/`, written by its `avatars/musetalk/genavatar.py`
or the older `genavatar_musetalk.py`) holds:

- `full_imgs/<n>.png`: the video's frames (numbered `%08d`), played with LiveTalking's
  `mirror_index` (0 .. N-1, N-1 .. 0, ...);
- `coords.pkl`: a pickled list with one `[x1, y1, x2, y2]` per frame (MuseTalk's order, not the
  Wav2Lip folders' `(y1, y2, x1, x2)`): the face box, whose crop is resized to 256 x 256;
- `latents.pt`: `torch.save` of a list of N tensors [1, 8, 32, 32] (fp16 or fp32, often saved
  from CUDA): each frame's VAE latents, masked lower half then whole crop;
- `mask/<n>.png` and `mask_coords.pkl`: per frame, the blending mask (face parsing, feathered)
  and the box `[x_s, y_s, x_e, y_e]` it covers; the lip-synced crop is pasted into its box and
  the box blended into the frame through the mask (LiveTalking's get_image_blending);
- `avator_info.json` (sic): the id, source video and bbox_shift it was made with (not needed).

`latents.pt` is read without torch (the server does not depend on it): a zip of a pickle and raw
storages, unpickled with nothing but tensor rebuilds allowed, each storage read as the dtype it
names; where it was saved (`cuda:0`) does not matter. A file that names anything else is refused
(a pickle can run code).
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .livetalking import (
    COORDS,
    FULL_IMGS,
    LOOP,
    MAX_COORDS_BYTES,
    LiveTalkingAvatarError,
    _as_int,
    _CoordsUnpickler,
    _numbered_images,
    _read_rgb,
    mouth_in_box,
)

LATENTS_PT = "latents.pt"
MASKS = "mask"
MASK_COORDS = "mask_coords.pkl"
AVATAR_INFO = "avator_info.json"  # LiveTalking's spelling
LATENT_SHAPE = (8, 32, 32)
FACE_PX = 256
MUSETALK_MODEL = "musetalk"  # the served model an imported MuseTalk avatar speaks with
MAX_LATENTS_BYTES = 1 << 30
LATENTS_FILE = "latents.npy"  # in a package (manifest "model_inputs": {"latents": ...})
MASKS_PATTERN = "masks/%05d.png"
# torch's storage classes by name -> numpy dtype (what torch.save writes for each dtype).
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": None,  # read as uint16 and widened (numpy has no bfloat16)
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def is_musetalk_folder(folder: Path) -> bool:
    """LiveTalking's MuseTalk layout, by its names only."""
    return ((folder / COORDS).is_file() and (folder / FULL_IMGS).is_dir()
            and (folder / LATENTS_PT).is_file())


# --- latents.pt without torch -------------------------------------------------------------------
@dataclass(frozen=True)
class _StorageType:
    name: str


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_ignored) -> np.ndarray:
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride))
    return np.array(view)


class _TensorUnpickler(pickle.Unpickler):
    """torch.save's data.pkl with only tensor rebuilds: storages come from the zip."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise LiveTalkingAvatarError(f"{LATENTS_PT} names {module}.{name}: refused (it should "
                                     "hold tensors only; other objects in a pickle can run code)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise LiveTalkingAvatarError(f"{LATENTS_PT}: unknown storage reference {pid!r:.80}")
        kind, key = pid[1].name, str(pid[2])
        raw = self._archive.read(f"{self._prefix}data/{key}")
        dtype = STORAGE_DTYPES[kind]
        if dtype is None:  # bfloat16: the upper half of a float32
            return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, dtype)


def read_torch_tensors(path: Path) -> object:
    """What `torch.save` wrote at `path` (its zip format), tensors as numpy arrays; only
    tensors, lists, tuples, dicts and numbers. LiveTalkingAvatarError for anything else."""
    path = Path(path)
    if path.stat().st_size > MAX_LATENTS_BYTES:
        raise LiveTalkingAvatarError(f"{LATENTS_PT} is larger than {MAX_LATENTS_BYTES} bytes")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise LiveTalkingAvatarError(f"{LATENTS_PT} is not a torch.save file (torch >= 1.6's zip "
                                     "format)") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise LiveTalkingAvatarError(f"{LATENTS_PT} has no single data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            return _TensorUnpickler(archive.read(pickles[0]), archive, prefix).load()
        except LiveTalkingAvatarError:
            raise
        except Exception as exc:
            raise LiveTalkingAvatarError(f"{LATENTS_PT} is not readable "
                                         f"({type(exc).__name__}: {exc})") from None


def read_latents(path: Path) -> np.ndarray:
    """float32 [N, 8, 32, 32] from LiveTalking's latents.pt (a list of [1, 8, 32, 32])."""
    loaded = read_torch_tensors(path)
    if isinstance(loaded, np.ndarray):
        loaded = list(loaded)
    if not isinstance(loaded, list | tuple) or not loaded:
        raise LiveTalkingAvatarError(f"{LATENTS_PT} holds {type(loaded).__name__}, expected a "
                                     "list of [1, 8, 32, 32] tensors")
    out = []
    for k, item in enumerate(loaded):
        array = np.asarray(item, np.float32).reshape(-1, *LATENT_SHAPE) \
            if isinstance(item, np.ndarray) and item.size == np.prod(LATENT_SHAPE) else None
        if array is None:
            shape = list(item.shape) if isinstance(item, np.ndarray) else type(item).__name__
            raise LiveTalkingAvatarError(f"{LATENTS_PT} entry {k} is {shape}, expected "
                                         "[1, 8, 32, 32]")
        out.append(array[0])
    return np.stack(out)


# --- boxes ------------------------------------------------------------------------------------
def read_boxes(path: Path) -> np.ndarray:
    """int32 [N, 4] x0, y0, x1, y1 from a pickled list of [x1, y1, x2, y2] (coords.pkl or
    mask_coords.pkl of a MuseTalk folder): numbers only (the coords unpickler)."""
    size = path.stat().st_size
    if size > MAX_COORDS_BYTES:
        raise LiveTalkingAvatarError(f"{path.name} is {size} bytes (at most {MAX_COORDS_BYTES})")
    try:
        boxes = _CoordsUnpickler(io.BytesIO(path.read_bytes())).load()
    except LiveTalkingAvatarError:
        raise
    except Exception as exc:
        raise LiveTalkingAvatarError(f"{path.name} is not a readable pickle "
                                     f"({type(exc).__name__}: {exc})") from None
    if not isinstance(boxes, list | tuple) or not boxes:
        raise LiveTalkingAvatarError(f"{path.name} holds {type(boxes).__name__}, expected a "
                                     "non-empty list of [x1, y1, x2, y2]")
    out = []
    for k, item in enumerate(boxes):
        if not isinstance(item, list | tuple) or len(item) != 4:
            raise LiveTalkingAvatarError(f"{path.name} entry {k} is {item!r:.60}, expected "
                                         "[x1, y1, x2, y2]")
        x1, y1, x2, y2 = (_as_int(v, f"{path.name} entry {k}") for v in item)
        if not (x1 < x2 and y1 < y2):
            raise LiveTalkingAvatarError(f"{path.name} entry {k} [x1, y1, x2, y2] = "
                                         f"{[x1, y1, x2, y2]} is an empty box")
        out.append((x1, y1, x2, y2))
    return np.asarray(out, np.int32)


# --- the folder ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MuseTalkAvatar:
    frames: np.ndarray  # uint8 [N, H, W, 3] RGB
    boxes: np.ndarray  # int32 [N, 4] x0, y0, x1, y1: the face boxes (resized to 256 for the model)
    mouth: np.ndarray  # float32 [N, 4] relative to each box (the default model's input)
    latents: np.ndarray  # float32 [N, 8, 32, 32]
    masks: list[np.ndarray]  # uint8 [h, w] per frame, the size of its mask box
    mask_boxes: np.ndarray  # int32 [N, 4] x0, y0, x1, y1
    loop: str = LOOP


def _read_gray(path: Path) -> np.ndarray:
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise LiveTalkingAvatarError(f"{path.parent.name}/{path.name} is not a readable image")
    return gray


def load(path: Path, progress: Callable[[int, int], None] | None = None) -> MuseTalkAvatar:
    """Everything the server needs from a LiveTalking MuseTalk folder; LiveTalkingAvatarError
    names what does not fit (counts, sizes, files)."""
    path = Path(path)
    frames_paths = _numbered_images(path / FULL_IMGS, "frame")
    boxes = read_boxes(path / COORDS)
    latents = read_latents(path / LATENTS_PT)
    mask_paths = _numbered_images(path / MASKS, "mask")
    mask_boxes = read_boxes(path / MASK_COORDS) if (path / MASK_COORDS).is_file() else None
    if mask_boxes is None:
        raise LiveTalkingAvatarError(f"{path.name}: no {MASK_COORDS}")
    counts = {FULL_IMGS: len(frames_paths), COORDS: len(boxes), LATENTS_PT: len(latents),
              MASKS: len(mask_paths), MASK_COORDS: len(mask_boxes)}
    if len(set(counts.values())) != 1:
        raise LiveTalkingAvatarError(f"{path.name}: one per frame expected, found " + ", ".join(
            f"{n} in {k}" for k, n in counts.items()))
    frames, masks = [], []
    for k, (frame_path, mask_path) in enumerate(zip(frames_paths, mask_paths)):
        rgb = _read_rgb(frame_path)
        if frames and rgb.shape != frames[0].shape:
            raise LiveTalkingAvatarError(f"{FULL_IMGS}/{frame_path.name} differs in size from "
                                         "the first frame")
        x0, y0, x1, y1 = (int(v) for v in boxes[k])
        if x0 < 0 or y0 < 0 or x1 > rgb.shape[1] or y1 > rgb.shape[0]:
            raise LiveTalkingAvatarError(f"{COORDS} entry {k} {[x0, y0, x1, y1]} leaves frame "
                                         f"{frame_path.name} ({rgb.shape[1]}x{rgb.shape[0]})")
        mask = _read_gray(mask_path)
        mx0, my0, mx1, my1 = (int(v) for v in mask_boxes[k])
        if mask.shape != (my1 - my0, mx1 - mx0):
            mask = cv2.resize(mask, (mx1 - mx0, my1 - my0), interpolation=cv2.INTER_LINEAR)
        frames.append(rgb)
        masks.append(mask)
        if progress:
            progress(k + 1, len(frames_paths))
    stacked = np.stack(frames)
    mouth = mouth_in_box(stacked[0], boxes[0])
    return MuseTalkAvatar(stacked, boxes, np.tile(mouth, (len(stacked), 1)), latents, masks,
                          mask_boxes)


def import_folder(path: Path, avatar_id: str, out_dir: Path, lipsync_model: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """A package (docs/INTERFACES.md) from a LiveTalking MuseTalk folder: its frames, boxes,
    latents (latents.npy) and blending masks (masks/, their boxes in geometry.npz)."""
    from .package import DEFAULT_LIPSYNC_MODEL, PackageWriter, check_avatar_id

    check_avatar_id(avatar_id)
    avatar = load(path, progress)
    model = lipsync_model or MUSETALK_MODEL
    with PackageWriter(avatar_id, out_dir) as package:
        for frame in avatar.frames:
            package.add_frame(frame)
        (package.staging / "masks").mkdir()
        for k, mask in enumerate(avatar.masks):
            cv2.imwrite(str(package.staging / (MASKS_PATTERN % k)), mask)
        np.save(package.staging / LATENTS_FILE, avatar.latents)
        np.save(package.staging / "mask_boxes.npy", avatar.mask_boxes)
        return package.finish(
            avatar.boxes, avatar.mouth, f"LiveTalking MuseTalk avatar {Path(path).name}",
            crop_size=FACE_PX, loop=avatar.loop, lipsync_model=model,
            lipsync_models=sorted({model, DEFAULT_LIPSYNC_MODEL}),
            model_inputs={"latents": LATENTS_FILE},
            blend_masks={"masks": MASKS_PATTERN, "boxes": "mask_boxes.npy"},
            livetalking={"layout": "musetalk", "frames": len(avatar.frames),
                         "boxes": "coords.pkl [x1, y1, x2, y2]"})


# --- latents for our own packages ---------------------------------------------------------------
def encoder_onnx(model_repository: Path, model: str = MUSETALK_MODEL) -> Path:
    """The exported VAE encoder (`python -m export musetalk`): `<model>_vae_encoder/1/model.onnx`
    in the repository. ValueError when it is not there."""
    path = Path(model_repository) / f"{model}_vae_encoder" / "1" / "model.onnx"
    if not path.is_file():
        raise ValueError(f"no MuseTalk VAE encoder in {Path(model_repository).name}/ (export it: "
                         f"python -m export musetalk --out {model_repository}/{model})")
    return path


def face_crop(rgb: np.ndarray, box: np.ndarray, size: int = FACE_PX) -> np.ndarray:
    """uint8 [size, size, 3]: the box's region (edges replicated past the frame), resized as
    the server crops it (orchestrator/avatar/store.py Avatar.crop_rgb)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = rgb.shape[:2]
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    region = rgb[y0:y1, x0:x1]
    if region.shape[:2] != (size, size):
        region = cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)
    return region


def encode_latents(crops_rgb: np.ndarray, onnx_path: Path, batch: int = 8,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """uint8 [N,256,256,3] RGB crops -> float32 [N,8,32,32] through the exported VAE encoder
    (onnxruntime, CPU; once per avatar frame, at build time)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(crops_rgb), batch):
        face = crops_rgb[start : start + batch].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        out.append(session.run(["latents"], {"face": face})[0])
        if progress:
            progress(min(start + batch, len(crops_rgb)), len(crops_rgb))
    return np.concatenate(out).astype(np.float32)


def add_musetalk(package: Path, model_repository: Path, model: str = MUSETALK_MODEL,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Make a built package speak with MuseTalk: each frame's 256 x 256 crop through the
    exported VAE encoder (latents.npy), its manifest naming `model`. Blending uses the
    compositor's own lower-face mask (no face-parsing model here)."""
    onnx_path = encoder_onnx(model_repository, model)
    manifest = json.loads((package / "manifest.json").read_text())
    boxes = np.load(package / manifest["geometry"])["boxes"]
    crops = np.stack([face_crop(_read_rgb(package / (manifest["frames"] % k)), box)
                      for k, box in enumerate(boxes)])
    np.save(package / LATENTS_FILE, encode_latents(crops, onnx_path, progress=progress))
    manifest.update(lipsync_model=model, crop_size=FACE_PX,
                    lipsync_models=sorted({model, *manifest.get("lipsync_models", [])}),
                    model_inputs={"latents": LATENTS_FILE})
    (package / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return package
