"""LiveTalking avatar folders: import, direct loading, malformed and hostile folders, and speech
end to end (default model; LiveTalking's wav2lip256 architecture with random weights).

The folders are made here from the shipped NASA portrait the way LiveTalking's
`wav2lip/genavatar.py` makes them: numbered PNG frames, face crops resized to the model's square
input, and a pickled list of (y1, y2, x1, x2) boxes: the detector's box plus 10 px below the chin,
so not square.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from server_fixtures import running_server, server_settings
from skimage import data

from avatars.__main__ import main as avatars_main
from avatars.face_detection import detect_single_face
from avatars.livetalking import LiveTalkingAvatarError, open_folder, read_coords
from orchestrator.avatar.store import AvatarStore
from orchestrator.client import AvatarClient, mean_window, mouth_motion, mouth_window

FRAMES = 6
BOTTOM_PAD_PX = 10  # LiveTalking's default --pads 0 10 0 0
SPEECH_RMS = 0.01


def livetalking_boxes(frames: int = FRAMES) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) per frame: the face box, padded below, following a 0-2 px head sway."""
    face = detect_single_face(data.astronaut())
    return [(face.y, face.y + face.h + BOTTOM_PAD_PX, face.x + k % 3, face.x + face.w + k % 3)
            for k in range(frames)]


def make_livetalking_folder(folder: Path, face_px: int = 96, frames: int = FRAMES,
                            numpy_ints: bool = False) -> list[tuple[int, int, int, int]]:
    """A LiveTalking wav2lip avatar folder; returns the boxes it pickled."""
    bgr = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    (folder / "full_imgs").mkdir(parents=True)
    (folder / "face_imgs").mkdir()
    boxes = livetalking_boxes(frames)
    for k, (y1, y2, x1, x2) in enumerate(boxes):
        shift = np.float32([[1, 0, k % 3], [0, 1, 0]])  # the head sways with its box
        frame = cv2.warpAffine(bgr, shift, (bgr.shape[1], bgr.shape[0]),
                               borderMode=cv2.BORDER_REPLICATE)
        cv2.imwrite(str(folder / "full_imgs" / f"{k:08d}.png"), frame)
        cv2.imwrite(str(folder / "face_imgs" / f"{k:08d}.png"),
                    cv2.resize(frame[y1:y2, x1:x2], (face_px, face_px)))
    stored = [tuple(np.int64(v) for v in box) for box in boxes] if numpy_ints else boxes
    (folder / "coords.pkl").write_bytes(pickle.dumps(stored))
    return boxes


def as_xyxy(boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    return np.array([(x1, y1, x2, y2) for y1, y2, x1, x2 in boxes], np.int32)


# --- import and loading -------------------------------------------------------------------------
@pytest.mark.parametrize("numpy_ints", [False, True], ids=["python-ints", "numpy-ints"])
def test_import_keeps_their_boxes(tmp_path, capsys, numpy_ints):
    boxes = make_livetalking_folder(tmp_path / "lt", numpy_ints=numpy_ints)
    assert boxes[0][1] - boxes[0][0] != boxes[0][3] - boxes[0][2], "the test box is not square"
    code = avatars_main(["import-livetalking", str(tmp_path / "lt"), "--id", "imported",
                         "--out-dir", str(tmp_path / "avatars")])
    assert code == 0, capsys.readouterr().err
    package = tmp_path / "avatars" / "imported"
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["frame_count"] == FRAMES and manifest["crop_size"] == 96
    assert manifest["loop"] == "mirror" and manifest["lipsync_model"] == "lipsync_default"
    assert (manifest["width"], manifest["height"]) == (512, 512)
    geometry = np.load(package / "geometry.npz")
    np.testing.assert_array_equal(geometry["boxes"], as_xyxy(boxes))
    avatar = AvatarStore(tmp_path / "avatars").load("imported")
    np.testing.assert_array_equal(avatar.boxes, as_xyxy(boxes))
    # the mouth was found inside their box: lower part, centred
    cx, line, width, _ = avatar.mouth[0]
    assert 0.35 < cx < 0.65 and 0.6 < line < 0.95 and 0.15 < width < 0.7


def test_store_loads_a_livetalking_folder_as_it_is(tmp_path):
    boxes = make_livetalking_folder(tmp_path / "lt")
    store = AvatarStore(tmp_path)
    assert store.exists("lt")
    [info] = store.catalog()
    assert (info.id, info.frame_count, info.width, info.height) == ("lt", FRAMES, 512, 512)
    avatar = store.load("lt")
    np.testing.assert_array_equal(avatar.boxes, as_xyxy(boxes))
    assert avatar.crop_size == 96 and avatar.lipsync_model == "lipsync_default"
    # LiveTalking's mirror_index: each end frame twice
    assert [avatar.frame_index(t) for t in range(14)] == [0, 1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0, 0, 1]
    # the crop is the box stretched to the model's square, as their face_imgs are
    y1, y2, x1, x2 = boxes[2]
    crop = avatar.crop_rgb(2, 96)
    theirs = cv2.cvtColor(cv2.imread(str(tmp_path / "lt" / "face_imgs" / "00000002.png")),
                          cv2.COLOR_BGR2RGB)
    assert crop.shape == (96, 96, 3)
    assert np.abs(crop.astype(np.float32) - theirs).mean() < 4  # INTER_AREA vs their LINEAR

    (tmp_path / "lt" / "livehuman.json").write_text('{"lipsync_model": "wav2lip256"}')
    assert AvatarStore(tmp_path).load("lt").lipsync_model == "wav2lip256"


def _error(folder: Path) -> str:
    with pytest.raises(LiveTalkingAvatarError) as caught:
        open_folder(folder)
    return str(caught.value)


def test_malformed_folders_name_what_is_wrong(tmp_path):
    lt = tmp_path / "lt"
    make_livetalking_folder(lt)
    open_folder(lt)  # the intact folder is fine

    broken = tmp_path / "counts"
    shutil.copytree(lt, broken)
    (broken / "face_imgs" / "00000005.png").unlink()
    assert "6 frames in full_imgs/, 5 crops in face_imgs/ and 6 boxes in coords.pkl" in _error(broken)

    broken = tmp_path / "names"
    shutil.copytree(lt, broken)
    (broken / "full_imgs" / "00000003.png").rename(broken / "full_imgs" / "frame3.png")
    assert "frame image full_imgs/frame3.png: names must be frame numbers" in _error(broken)

    broken = tmp_path / "nocoords"
    shutil.copytree(lt, broken)
    (broken / "coords.pkl").unlink()
    assert "no coords.pkl" in _error(broken)

    broken = tmp_path / "noface"
    shutil.copytree(lt, broken)
    shutil.rmtree(broken / "face_imgs")
    assert "no face folder face_imgs/" in _error(broken)

    for content, message in [
        ({"boxes": [1, 2, 3, 4]}, "holds dict, expected a non-empty list"),
        ([(1, 2, 3)] * FRAMES, "entry 0 is (1, 2, 3), expected (y1, y2, x1, x2)"),
        ([(10, 5, 0, 20)] * FRAMES, "entry 0 (y1, y2, x1, x2) = (10, 5, 0, 20) is an empty"),
        ([(0, 10, 0, "20")] * FRAMES, "entry 0 is str, expected a number"),
    ]:
        (broken / "coords.pkl").write_bytes(pickle.dumps(content))
        with pytest.raises(LiveTalkingAvatarError, match=message.replace("(", r"\(")
                           .replace(")", r"\)")):
            read_coords(broken / "coords.pkl")
    (broken / "coords.pkl").write_bytes(b"not a pickle")
    with pytest.raises(LiveTalkingAvatarError, match="coords.pkl is not a readable pickle"):
        read_coords(broken / "coords.pkl")

    outside = tmp_path / "outside"
    shutil.copytree(lt, outside)
    (outside / "coords.pkl").write_bytes(pickle.dumps([(0, 600, 0, 100)] * FRAMES))
    with pytest.raises(ValueError, match=r"entry 0 \(y1, y2, x1, x2\) = \(0, 600, 0, 100\) "
                                         r"leaves frame 00000000.png \(512x512\)"):
        AvatarStore(tmp_path).load("outside")


class _Exploit:
    """What a hostile coords.pkl holds: unpickling it would call os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_pickle_is_refused(tmp_path, capsys):
    lt = tmp_path / "lt"
    make_livetalking_folder(lt)
    marker = tmp_path / "pwned"
    (lt / "coords.pkl").write_bytes(pickle.dumps([_Exploit(marker)] * FRAMES))
    with pytest.raises(LiveTalkingAvatarError, match=r"names (posix|os)\.system: refused"):
        read_coords(lt / "coords.pkl")
    code = avatars_main(["import-livetalking", str(lt), "--id", "evil",
                         "--out-dir", str(tmp_path / "avatars")])
    assert code == 2 and "refused" in capsys.readouterr().err
    with pytest.raises(ValueError, match="refused"):
        AvatarStore(tmp_path).load("lt")
    assert not marker.exists()
    assert not (tmp_path / "avatars" / "evil").exists()
    # a numpy array is an object too (numpy.core.multiarray._reconstruct): refused as well
    (lt / "coords.pkl").write_bytes(pickle.dumps(np.zeros((FRAMES, 4), np.int64)))
    with pytest.raises(LiveTalkingAvatarError, match="_reconstruct: refused"):
        read_coords(lt / "coords.pkl")


# --- speaking -----------------------------------------------------------------------------------
async def _speaks(base_url: str, services, avatar_id: str, text: str, seconds: float) -> float:
    """Mean mouth-window change while speaking against the idle picture (0 = nothing pasted)."""
    client = AvatarClient(base_url)
    try:
        await client.connect(avatar=avatar_id)
        await client.wait_for_video(15)
        await asyncio.sleep(0.5)
        region = mouth_window(services.avatars.load(avatar_id))
        idle = client.received.video[-10:]
        sent = time.monotonic()
        status, answer = await client.post("/human", type="echo", text=text)
        assert status == 200 and answer["code"] == 0, answer
        first = await client.wait_for_speech(sent, SPEECH_RMS, timeout=30)
        await asyncio.sleep(seconds)
        r = client.received
        speaking = [f for t, f in zip(r.video_times, r.video) if first < t < first + seconds]
        assert speaking and speaking[0].shape == (512, 512, 3)
        return float(mouth_motion(speaking, region, mean_window(idle, region)).mean())
    finally:
        await client.close()


async def test_livetalking_avatars_speak_on_the_default_model(triton, tmp_path):
    """The imported package and the folder as it is, through a real server and aiortc peer."""
    make_livetalking_folder(tmp_path / "avatars" / "ltfolder")
    assert avatars_main(["import-livetalking", str(tmp_path / "avatars" / "ltfolder"),
                         "--id", "ltpackage", "--out-dir", str(tmp_path / "avatars")]) == 0
    settings = server_settings(triton, avatar_dir=tmp_path / "avatars", data_dir=tmp_path,
                               avatar_id="ltpackage")
    async with running_server(settings) as (base_url, services):
        for avatar_id in ("ltpackage", "ltfolder"):
            changed = await _speaks(base_url, services, avatar_id,
                                    "Hello from a LiveTalking avatar.", 1.0)
            print(f"{avatar_id}: mouth change {changed:.1f}")
            assert changed > 3, f"{avatar_id}: the lip-synced mouth is pasted into their box"


@pytest.mark.slow  # CI: the 256 layouts in tests/lipsync/test_wav2lip_export.py, and an exported Wav2Lip speaking there
async def test_a_livetalking_avatar_speaks_through_livetalkings_wav2lip256(tmp_path):
    """Export LiveTalking's wav2lip256 generator (random weights), serve it, and let a 256-px
    LiveTalking folder speak with it. Random weights draw noise in the lower face; the plumbing
    (layout, export, model family from Triton's metadata, 256 crops of their boxes, paste back)
    is the real one. 256 runs at a few frames per second on CPU: one short word."""
    pytest.importorskip("torch", reason="the export needs PyTorch (the export extra)")
    from export.__main__ import main as export_main
    from orchestrator.settings import PROJECT_ROOT
    from orchestrator.triton.server import EmbeddedTriton

    repo = tmp_path / "repository"
    started = time.monotonic()
    export_main(["wav2lip", "--random-init", "--variant", "256", "--out",
                 str(repo / "wav2lip256"), "--max-batch", "8"])
    print(f"wav2lip256 (livetalking256) export: {time.monotonic() - started:.1f} s")
    for name in ("tts_espeak", "lipsync_default"):
        shutil.copytree(PROJECT_ROOT / "model_repository" / name, repo / name)
    folder = tmp_path / "avatars" / "lt256"
    make_livetalking_folder(folder, face_px=256)
    (folder / "livehuman.json").write_text('{"lipsync_model": "wav2lip256"}')

    async with EmbeddedTriton(repo, ["tts_espeak", "lipsync_default", "wav2lip256"]) as server:
        # This repository holds eSpeak and the lip-sync models only: eSpeak speaks, no voice input.
        settings = server_settings(server, avatar_dir=tmp_path / "avatars", data_dir=tmp_path,
                                   avatar_id="lt256", tts="espeak", voice_input=False)
        async with running_server(settings) as (base_url, services):
            avatar = services.avatars.load("lt256")
            assert avatar.crop_size == 256 and avatar.lipsync_model == "wav2lip256"
            changed = await _speaks(base_url, services, "lt256", "Hi.", 0.4)
            model = await services.lipsync_models.get("wav2lip256")
            assert model.crop_size == 256
            assert not model.silence_returns_face, "Wav2Lip sees silent frames too"
            stats = await model.client._client.get_inference_statistics("wav2lip256",
                                                                         as_json=True)
            assert int(stats["model_stats"][0]["inference_count"]) > 0
            assert changed > 3, "the wav2lip256 output is pasted into their box"
