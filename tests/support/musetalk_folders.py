"""LiveTalking MuseTalk avatar folders made the way its `avatars/musetalk/genavatar.py` makes
them: numbered PNG frames, a pickled list of [x1, y1, x2, y2] face boxes, `torch.save` of a list of
fp16 [1, 8, 32, 32] latents (saved from CUDA: `cuda_tagged`), per-frame blending masks the size
of their (1.5x face) crop boxes, `mask_coords.pkl` and `avator_info.json`."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from avatars.face_detection import detect_single_face

FRAMES = 4
EXTRA_MARGIN_PX = 10  # genavatar's --extra_margin below the chin (v15)


def musetalk_boxes(frames: int = FRAMES) -> list[list[int]]:
    face = detect_single_face(data.astronaut())
    return [[face.x + k % 2, face.y, face.x + face.w + k % 2, face.y + face.h + EXTRA_MARGIN_PX]
            for k in range(frames)]


def crop_boxes(boxes: list[list[int]], expand: float = 1.5) -> list[list[int]]:
    """MuseTalk's get_crop_box: a square of `expand` x the box's larger half side."""
    out = []
    for x, y, x1, y1 in boxes:
        cx, cy = (x + x1) // 2, (y + y1) // 2
        s = int(max(x1 - x, y1 - y) // 2 * expand)
        out.append([cx - s, cy - s, cx + s, cy + s])
    return out


def tag_as_cuda(path: Path) -> None:
    """Rewrite a torch.save file's storage locations from 'cpu' to 'cuda:0', as a file saved
    from GPU tensors has them (torch.load then needs map_location on a machine without CUDA)."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    old, new = b"cpu", b"cuda:0"
    pickled = entries[name]
    # BINUNICODE: 'X' + 4-byte little-endian length + the bytes
    pickled = pickled.replace(b"X" + len(old).to_bytes(4, "little") + old,
                              b"X" + len(new).to_bytes(4, "little") + new)
    assert b"cuda:0" in pickled
    entries[name] = pickled
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for entry, content in entries.items():
            archive.writestr(entry, content)


def make_musetalk_folder(folder: Path, frames: int = FRAMES, cuda_tagged: bool = True,
                         seed: int = 0) -> np.ndarray:
    """The folder; returns its latents as float32 [N, 8, 32, 32] (what was saved, fp16)."""
    import torch

    bgr = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    (folder / "full_imgs").mkdir(parents=True)
    (folder / "mask").mkdir()
    boxes = musetalk_boxes(frames)
    masks = crop_boxes(boxes)
    for k, (x0, y0, x1, y1) in enumerate(masks):
        cv2.imwrite(str(folder / "full_imgs" / f"{k:08d}.png"), bgr)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        h, w = mask.shape
        mask[h // 2 : h * 5 // 6, w // 5 : w * 4 // 5] = 255  # jaw and mouth
        cv2.imwrite(str(folder / "mask" / f"{k:08d}.png"), cv2.GaussianBlur(mask, (15, 15), 0))
    (folder / "coords.pkl").write_bytes(pickle.dumps(boxes))
    (folder / "mask_coords.pkl").write_bytes(pickle.dumps(masks))
    rng = np.random.default_rng(seed)
    latents = [torch.from_numpy(rng.normal(size=(1, 8, 32, 32)).astype(np.float16))
               for _ in range(frames)]
    torch.save(latents, folder / "latents.pt")
    if cuda_tagged:
        tag_as_cuda(folder / "latents.pt")
    (folder / "avator_info.json").write_text(json.dumps(
        {"avatar_id": folder.name, "video_path": "me.mp4", "bbox_shift": 0}))
    return np.concatenate([t.numpy() for t in latents]).astype(np.float32)
