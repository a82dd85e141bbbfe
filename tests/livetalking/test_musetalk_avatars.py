"""LiveTalking MuseTalk avatar folders: read as they are (latents.pt from CUDA on a CPU machine,
without torch), imported as packages, blended through their own masks, hostile files refused.
Speaking with one is in tests/lipsync/test_musetalk.py (it needs the MuseTalk export)."""

from __future__ import annotations

import copy
import pickle

import cv2
import numpy as np
import pytest
from musetalk_folders import FRAMES, crop_boxes, make_musetalk_folder, musetalk_boxes

from avatars.__main__ import main as avatars_main
from avatars.livetalking import LiveTalkingAvatarError
from avatars.musetalk_avatar import read_latents, read_torch_tensors
from orchestrator.avatar.compositor import BlendMasks, paste_masked
from orchestrator.avatar.store import AvatarStore

torch = pytest.importorskip("torch", reason="the folders are written with torch.save")


def test_a_musetalk_folder_loads_as_it_is(tmp_path):
    latents = make_musetalk_folder(tmp_path / "mt")
    with pytest.raises(RuntimeError, match="CUDA"):  # really saved "from CUDA"
        torch.load(tmp_path / "mt" / "latents.pt", weights_only=True)
    store = AvatarStore(tmp_path)
    avatar = store.load("mt")
    assert avatar.lipsync_model == "musetalk" and avatar.crop_size == 256
    assert avatar.loop == "mirror" and len(avatar.frames) == FRAMES
    np.testing.assert_array_equal(avatar.model_inputs["latents"], latents)
    assert [list(b) for b in avatar.boxes] == musetalk_boxes()
    assert [list(b) for b in avatar.blend_masks.boxes] == crop_boxes(musetalk_boxes())
    assert avatar.blend_masks.weights[0].max() == pytest.approx(1.0)
    (info,) = store.catalog()
    assert info.id == "mt" and info.frame_count == FRAMES


def test_latents_read_without_torch_match_torch_load(tmp_path):
    make_musetalk_folder(tmp_path / "mt", cuda_tagged=False)
    expected = torch.load(tmp_path / "mt" / "latents.pt", map_location="cpu", weights_only=True)
    got = read_latents(tmp_path / "mt" / "latents.pt")
    np.testing.assert_array_equal(got, np.concatenate([t.float().numpy() for t in expected]))
    # other dtypes and layouts: a transposed (strided) float32 and a bfloat16 tensor
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    torch.save({"t": base.transpose(0, 2), "b": base.to(torch.bfloat16)}, tmp_path / "x.pt")
    loaded = read_torch_tensors(tmp_path / "x.pt")
    np.testing.assert_array_equal(loaded["t"], base.transpose(0, 2).numpy())
    np.testing.assert_array_equal(loaded["b"], base.numpy())


def test_hostile_or_broken_latents_are_refused(tmp_path):
    make_musetalk_folder(tmp_path / "mt")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    torch.save([Evil()], tmp_path / "mt" / "latents.pt")
    with pytest.raises(LiveTalkingAvatarError, match="refused"):
        read_latents(tmp_path / "mt" / "latents.pt")
    with pytest.raises(ValueError, match="refused"):
        AvatarStore(tmp_path).load("mt")
    assert not marker.exists()
    torch.save([torch.zeros(1, 4, 32, 32)], tmp_path / "mt" / "latents.pt")
    with pytest.raises(LiveTalkingAvatarError, match=r"entry 0 is \[1, 4, 32, 32\]"):
        read_latents(tmp_path / "mt" / "latents.pt")
    torch.save([torch.zeros(1, 8, 32, 32)] * (FRAMES - 1), tmp_path / "mt" / "latents.pt")
    with pytest.raises(ValueError, match=f"{FRAMES - 1} in latents.pt"):
        AvatarStore(tmp_path).load("mt")


def test_import_livetalking_detects_a_musetalk_folder(tmp_path):
    latents = make_musetalk_folder(tmp_path / "lt" / "mt")
    out = tmp_path / "avatars"
    assert avatars_main(["import-livetalking", str(tmp_path / "lt" / "mt"), "--id", "mtpkg",
                         "--out-dir", str(out)]) == 0
    avatar = AvatarStore(out).load("mtpkg")
    folder = AvatarStore(tmp_path / "lt").load("mt")
    assert avatar.lipsync_model == "musetalk" and avatar.crop_size == 256
    np.testing.assert_array_equal(avatar.model_inputs["latents"], latents)
    np.testing.assert_array_equal(avatar.boxes, folder.boxes)
    np.testing.assert_array_equal(avatar.blend_masks.boxes, folder.blend_masks.boxes)
    for a, b in zip(avatar.blend_masks.weights, folder.blend_masks.weights):
        np.testing.assert_array_equal(a, b)


def livetalking_blending(image, face, face_box, mask_array, crop_box):
    """LiveTalking's get_image_blending (avatars/musetalk/myutil.py), for reference."""
    body = image.copy()
    x, y, x1, y1 = face_box
    x_s, y_s, x_e, y_e = crop_box
    face_large = copy.deepcopy(body[y_s:y_e, x_s:x_e])
    face_large[y - y_s : y1 - y_s, x - x_s : x1 - x_s] = face
    mask_image = (mask_array / 255).astype(np.float32)
    body[y_s:y_e, x_s:x_e] = cv2.blendLinear(face_large, body[y_s:y_e, x_s:x_e], mask_image,
                                             1 - mask_image)
    return body


def test_paste_masked_is_livetalkings_blending():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (300, 400, 3), np.uint8)
    box, crop_box = np.array([120, 80, 220, 200]), np.array([100, 50, 260, 230])
    mask = cv2.GaussianBlur(rng.integers(0, 256, (180, 160), np.uint8), (9, 9), 0)
    crop = rng.integers(0, 256, (256, 256, 3), np.uint8)
    got = paste_masked(frame, box, crop, BlendMasks.of([mask], crop_box[None]), 0)
    face = cv2.resize(crop, (100, 120), interpolation=cv2.INTER_LINEAR)
    expected = livetalking_blending(frame, face, box, mask, crop_box)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    # a mask box past the frame's edge: the visible part only, no error
    edge = paste_masked(frame, box, crop, BlendMasks.of([mask], np.array([[300, 200, 460, 380]])),
                        0)
    assert edge.shape == frame.shape


def test_a_mask_coords_file_naming_code_is_refused(tmp_path):
    make_musetalk_folder(tmp_path / "mt")

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("true",))

    (tmp_path / "mt" / "mask_coords.pkl").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(ValueError, match="refused"):
        AvatarStore(tmp_path).load("mt")
