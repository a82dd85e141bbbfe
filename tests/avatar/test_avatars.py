"""The avatar tool on the real public-domain photo, and the orchestrator's avatar loader."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from skimage import data

from avatars.__main__ import main as avatars_main
from avatars.face_detection import FaceError, detect_single_face
from avatars.mouth import TEETH_LIGHTNESS_MIN, TEETH_SATURATION_MAX, find_mouth
from avatars.package import build_from_image
from avatars.rest_pose import close_mouth
from orchestrator.avatar.store import AvatarNotFound, AvatarStore

SECONDS = 1.2  # 30 frames: enough for one blink, quick to build


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()


@pytest.fixture(scope="module")
def built(astronaut, tmp_path_factory):
    out = tmp_path_factory.mktemp("avatars")
    build_from_image(astronaut, "astro", out, seconds=SECONDS, source="test")
    return out


def teeth_pixels(rgb, mouth):
    """White pixels (bright, unsaturated: mouth.py's teeth test) in the opening between the lips."""
    rows = slice(int(mouth.line), int(mouth.line + mouth.gap))
    region = np.ascontiguousarray(rgb[rows, int(mouth.left[0]) : int(mouth.right[0]) + 1])
    lightness = cv2.cvtColor(region, cv2.COLOR_RGB2LAB)[..., 0]
    saturation = cv2.cvtColor(region, cv2.COLOR_RGB2HSV)[..., 1]
    return int(((lightness >= TEETH_LIGHTNESS_MIN) & (saturation <= TEETH_SATURATION_MAX)).sum())


def test_detects_the_face_and_the_mouth_inside_it(astronaut):
    face = detect_single_face(astronaut)
    # Where the astronaut's face is (measured by hand on the 512x512 picture).
    assert abs(face.x - 177) < 15 and abs(face.y - 67) < 15 and abs(face.w - 93) < 15
    mouth = find_mouth(astronaut, face)
    assert face.x < mouth.left[0] < mouth.right[0] < face.x + face.w
    assert face.y + 0.55 * face.h < mouth.top < mouth.line < mouth.bottom <= face.y + 1.1 * face.h
    assert 0.3 * face.w < mouth.width < 0.7 * face.w
    assert mouth.gap > 0  # she smiles with her teeth showing


def test_rest_pose_closes_the_mouth(astronaut):
    face = detect_single_face(astronaut)
    mouth = find_mouth(astronaut, face)
    rest, rest_mouth = close_mouth(astronaut, mouth)
    assert rest_mouth.gap == 0
    assert teeth_pixels(astronaut, mouth) > 60
    assert teeth_pixels(rest, mouth) < 0.3 * teeth_pixels(astronaut, mouth)
    assert find_mouth(rest, face).gap == 0, "the detector itself sees closed lips"
    # Only the mouth and jaw move: the eyes and forehead are untouched.
    assert np.array_equal(rest[: face.y + face.h // 2], astronaut[: face.y + face.h // 2])


def test_no_face_is_a_clear_error(tmp_path):
    blank = np.full((256, 256, 3), 128, np.uint8)
    with pytest.raises(FaceError, match="no face"):
        build_from_image(blank, "blank", tmp_path)
    assert not any(tmp_path.iterdir()), "nothing half-built is left behind"


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    picture = tmp_path / "grey.png"
    cv2.imwrite(str(picture), np.full((200, 200, 3), 90, np.uint8))
    assert avatars_main(["build", "--image", str(picture), "--id", "x", "--out-dir", str(tmp_path)]) == 2
    assert "no face" in capsys.readouterr().err
    assert avatars_main(["build", "--image", str(tmp_path / "missing.jpg"), "--id", "x",
                         "--out-dir", str(tmp_path)]) == 2
    assert avatars_main(["build", "--image", str(picture), "--id", "../evil",
                         "--out-dir", str(tmp_path)]) == 2


def test_package_layout_and_idle_motion(built):
    folder = built / "astro"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "livehuman-avatar" and manifest["version"] == 1
    assert manifest["frame_count"] == 30 and manifest["fps"] == 25

    avatar = AvatarStore(built).load("astro")
    assert avatar.frames.shape == (30, 512, 512, 3)
    assert avatar.boxes.shape == (30, 4) and avatar.mouth.shape == (30, 4)
    differences = [np.abs(avatar.frames[k].astype(int) - avatar.frames[0]).mean() for k in range(1, 30)]
    # Idle motion: every frame differs a little from the first, none much (sub-pixel sway, blinks).
    assert min(differences) > 0.01 and max(differences) < 8
    x0, y0, x1, y1 = avatar.boxes[0]
    assert x1 - x0 == y1 - y0
    crop = avatar.crop(0)
    assert crop.shape == (3, avatar.crop_size, avatar.crop_size) and crop.dtype == np.float32
    assert 0 <= crop.min() and crop.max() <= 1
    cx, line_y, width, height = avatar.mouth[0]
    assert 0.3 < cx < 0.7 and 0.4 < line_y < 0.8 and 0.15 < width < 0.6 and 0 < height < 0.3
    with pytest.raises(ValueError):
        avatar.frames[0, 0, 0, 0] = 1  # shared by all sessions: read-only


def test_idle_loop_plays_ping_pong(built):
    avatar = AvatarStore(built).load("astro")
    n = len(avatar.frames)
    indices = [avatar.frame_index(t) for t in range(3 * n)]
    assert indices[: n] == list(range(n))
    assert indices[n : 2 * n - 2] == list(range(n - 2, 0, -1))
    assert all(abs(a - b) == 1 for a, b in zip(indices, indices[1:])), "no jumps in the loop"


@pytest.mark.parametrize("bad", ["../astro", "a/b", "", "x" * 65, "astro\0", ".."])
def test_store_rejects_ids_outside_the_directory(built, bad):
    with pytest.raises(ValueError):
        AvatarStore(built).load(bad)


def test_store_missing_and_symlinked_avatars(built, tmp_path):
    store = AvatarStore(built)
    with pytest.raises(AvatarNotFound):
        store.load("nobody")
    outside = tmp_path / "outside"
    shutil.copytree(built / "astro", outside / "astro")
    (built / "link").symlink_to(outside / "astro")
    try:
        with pytest.raises(ValueError, match="outside"):
            store.load("link")
    finally:
        (built / "link").unlink()


def test_manifest_paths_stay_inside_the_package(built, tmp_path):
    copy = tmp_path / "avatars" / "sneaky"
    shutil.copytree(built / "astro", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["geometry"] = "../../../etc/passwd"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="leaves the package"):
        AvatarStore(tmp_path / "avatars").load("sneaky")
