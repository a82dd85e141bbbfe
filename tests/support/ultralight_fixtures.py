"""LiveTalking Ultralight avatar folders made from the NASA portrait, and one Ultralight export
shared by the test session (pytest plugin, loaded by tests/conftest.py).

A folder is made the way LiveTalking's `ultralight/genavatar.py` makes it: numbered PNG frames,
168 x 168 face crops, a pickled list of (x1, y1, x2, y2) boxes as numpy integers (its landmarks
are numpy arrays), and the UNet checkpoint `ultralight.pth`. The export is the CLI's, from such
a folder's `ultralight.pth` (random weights of the real UNet) and a HuBERT in Hugging Face's
layout (the real class and hidden size, one layer): no weights can be downloaded here.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from avatars.face_detection import detect_single_face
from avatars.model_crops import ultralight_box

FRAMES = 6
CROP_PX = 168
ULTRALIGHT_MODEL = "ultralight"
AVATAR_ID = "ultralight_avatar1"  # LiveTalking's default --avatar_id for genavatar
MAX_BATCH = 16


def ultralight_boxes(frames: int = FRAMES) -> list[tuple[int, int, int, int]]:
    """(x1, y1, x2, y2) per frame, swaying 0-2 px with the head."""
    x0, y0, x1, y1 = ultralight_box(detect_single_face(data.astronaut()))
    return [(x0 + k % 3, y0, x1 + k % 3, y1) for k in range(frames)]


def make_ultralight_folder(folder: Path, checkpoint: bytes = b"weights") -> list[tuple]:
    """A LiveTalking Ultralight avatar folder; returns the boxes it pickled."""
    bgr = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    (folder / "full_imgs").mkdir(parents=True)
    (folder / "face_imgs").mkdir()
    boxes = ultralight_boxes()
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        shift = np.float32([[1, 0, k % 3], [0, 1, 0]])
        frame = cv2.warpAffine(bgr, shift, (bgr.shape[1], bgr.shape[0]),
                               borderMode=cv2.BORDER_REPLICATE)
        cv2.imwrite(str(folder / "full_imgs" / f"{k:08d}.png"), frame)
        cv2.imwrite(str(folder / "face_imgs" / f"{k:08d}.png"),
                    cv2.resize(frame[y1:y2, x1:x2], (CROP_PX, CROP_PX)))
    (folder / "coords.pkl").write_bytes(pickle.dumps(
        [tuple(np.int64(v) for v in box) for box in boxes]))
    (folder / "ultralight.pth").write_bytes(checkpoint)
    return boxes


@dataclass(frozen=True)
class UltralightExport:
    unet: object  # export.ultralight_model.UltralightUNet, the weights in the folder
    hubert: object  # transformers HubertModel, the weights in hubert_dir
    avatars: Path  # holds AVATAR_ID, a LiveTalking Ultralight folder
    hubert_dir: Path
    repository: Path  # the CLI's three models, plus tts_espeak and lipsync_default
    stdout: str


@pytest.fixture(scope="session")
def ultralight_export(tmp_path_factory) -> UltralightExport:
    torch = pytest.importorskip("torch", reason="the export needs PyTorch (the export extra)")
    pytest.importorskip("transformers", reason="HuBERT needs transformers (the export extra)")
    from conftest import ensure_lipsync_onnx

    from export.__main__ import main as export_main
    from export.ultralight_configs import TINY_HUBERT
    from export.ultralight_model import random_hubert, random_unet
    from orchestrator.settings import PROJECT_ROOT

    root = tmp_path_factory.mktemp("ultralight")
    folder = root / "avatars" / AVATAR_ID
    make_ultralight_folder(folder)
    unet, hubert = random_unet(seed=3), random_hubert(seed=4, **TINY_HUBERT)
    torch.save(unet.state_dict(), folder / "ultralight.pth")
    hubert.save_pretrained(root / "hubert-large-ls960-ft")
    repo = root / "repository"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        export_main(["ultralight", "--checkpoint", str(folder / "ultralight.pth"), "--hubert",
                     str(root / "hubert-large-ls960-ft"), "--out", str(repo / ULTRALIGHT_MODEL),
                     "--max-batch", str(MAX_BATCH)])
    ensure_lipsync_onnx()
    for name in ("tts_espeak", "lipsync_default"):
        shutil.copytree(PROJECT_ROOT / "model_repository" / name, repo / name)
    return UltralightExport(unet, hubert, root / "avatars", root / "hubert-large-ls960-ft",
                            repo, stdout.getvalue())
