"""LiveTalking Ultralight avatar folders: loaded as they are and imported (the model told by the
folder's files), `avatars build --model ultralight`, and such a folder speaking end to end with
its own `ultralight.pth` exported to Triton (random weights of the real UNet, a 1-layer HuBERT
of the real class).

The folders are made from the shipped NASA portrait the way LiveTalking's
`ultralight/genavatar.py` makes them (tests/support/ultralight_fixtures.py).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from server_fixtures import running_server, server_settings
from skimage import data
from test_livetalking_avatars import _speaks
from ultralight_fixtures import AVATAR_ID, CROP_PX, FRAMES, make_ultralight_folder

from avatars.__main__ import main as avatars_main
from avatars.face_detection import detect_single_face
from avatars.livetalking import folder_model, read_coords
from orchestrator.avatar.store import AvatarStore


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def test_the_store_loads_an_ultralight_folder_as_it_is(tmp_path):
    boxes = make_ultralight_folder(tmp_path / "ul")
    assert folder_model(tmp_path / "ul") == "ultralight"
    store = AvatarStore(tmp_path)
    [info] = store.catalog()
    assert (info.id, info.frame_count) == ("ul", FRAMES)
    avatar = store.load("ul")
    np.testing.assert_array_equal(avatar.boxes, np.array(boxes, np.int32))
    assert avatar.crop_size == CROP_PX and avatar.lipsync_model == "ultralight"
    assert avatar.loop == "mirror"
    crop = avatar.crop_rgb(2, CROP_PX)
    theirs = cv2.cvtColor(cv2.imread(str(tmp_path / "ul" / "face_imgs" / "00000002.png")),
                          cv2.COLOR_BGR2RGB)
    assert np.abs(crop.astype(np.float32) - theirs).mean() < 4  # their face_imgs, our crop

    (tmp_path / "ul" / "livehuman.json").write_text('{"lipsync_model": "ultralight_anna"}')
    assert AvatarStore(tmp_path).load("ul").lipsync_model == "ultralight_anna"


def test_ultralight_coords_are_read_in_their_order(tmp_path):
    make_ultralight_folder(tmp_path / "ul")
    (tmp_path / "ul" / "coords.pkl").write_bytes(pickle.dumps([(10, 20, 110, 130)] * FRAMES))
    assert read_coords(tmp_path / "ul" / "coords.pkl", "ultralight")[0].tolist() == \
        [10, 20, 110, 130]
    assert read_coords(tmp_path / "ul" / "coords.pkl")[0].tolist() == [110, 10, 130, 20]
    (tmp_path / "ul" / "coords.pkl").write_bytes(pickle.dumps([(400, 20, 600, 130)] * FRAMES))
    with pytest.raises(ValueError, match=r"entry 0 \(x1, y1, x2, y2\) = \(400, 20, 600, 130\) "
                                         r"leaves frame 00000000.png"):
        AvatarStore(tmp_path).load("ul")


def test_import_livetalking_takes_the_model_from_the_folder(tmp_path, capsys):
    boxes = make_ultralight_folder(tmp_path / "ul")
    code = avatars_main(["import-livetalking", str(tmp_path / "ul"), "--id", "imported",
                         "--out-dir", str(tmp_path / "avatars")])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "avatars" / "imported" / "manifest.json").read_text())
    assert manifest["lipsync_model"] == "ultralight" and manifest["crop_size"] == CROP_PX
    assert manifest["livetalking"]["model"] == "ultralight"
    assert sorted(manifest["lipsync_models"]) == ["lipsync_default", "ultralight"]
    avatar = AvatarStore(tmp_path / "avatars").load("imported")
    np.testing.assert_array_equal(avatar.boxes, np.array(boxes, np.int32))


@pytest.mark.parametrize("source", ["image", "video"])
def test_build_for_ultralight(tmp_path, capsys, source):
    rgb = data.astronaut()
    if source == "image":
        path = tmp_path / "face.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        args = ["--image", str(path), "--seconds", "0.2"]
    else:
        args = ["--video", str(write_video(tmp_path / "face.mp4", [rgb] * 5))]
    code = avatars_main(["build", *args, "--id", "ul", "--model", "ultralight",
                         "--out-dir", str(tmp_path / "avatars")])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "avatars" / "ul" / "manifest.json").read_text())
    assert manifest["lipsync_model"] == "ultralight" and manifest["crop_size"] == CROP_PX
    avatar = AvatarStore(tmp_path / "avatars").load("ul")
    face = detect_single_face(rgb)
    x0, y0, x1, y1 = avatar.boxes[0]
    assert x1 - x0 == y1 - y0, "square, as LiveTalking's"
    assert face.y + 0.3 * face.h < y0 < face.y + 0.55 * face.h, "from the nose bridge"
    assert y1 > face.y + face.h, "down past the chin"
    _, line, _, _ = avatar.mouth[0]
    assert 0.3 < line < 0.6, "the mouth is inside the crop, below the nose"
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        avatars_main(["build", *args, "--id", "x", "--model", "nope"])


async def test_an_ultralight_folder_speaks_unchanged(ultralight_export, tmp_path):
    """The folder's own ultralight.pth (random weights of the real UNet) and a HuBERT folder in
    Hugging Face's layout, exported with the CLI (tests/support/ultralight_fixtures.py); the
    folder, as it is in the avatar directory, speaks through a real server and aiortc peer.
    Random weights draw noise in the lower face; the plumbing (the model from the folder's
    files, 168 crops of their boxes, audio windows, the ensemble, paste back) is the real one."""
    from orchestrator.triton.server import EmbeddedTriton

    models = ["tts_espeak", "lipsync_default", "ultralight"]
    async with EmbeddedTriton(ultralight_export.repository, models) as server:
        settings = server_settings(server, avatar_dir=ultralight_export.avatars,
                                   data_dir=tmp_path, avatar_id=AVATAR_ID, tts="espeak",
                                   voice_input=False)
        async with running_server(settings) as (base_url, services):
            avatar = services.avatars.load(AVATAR_ID)
            assert avatar.crop_size == CROP_PX and avatar.lipsync_model == "ultralight"
            changed = await _speaks(base_url, services, AVATAR_ID, "Hello there.", 0.6)
            model = await services.lipsync_models.get("ultralight")
            for name in ("ultralight_unet", "ultralight_audio"):
                stats = await model.client._client.get_inference_statistics(name, as_json=True)
                assert int(stats["model_stats"][0]["inference_count"]) > 0, name
            print(f"ultralight: mouth change {changed:.1f}")
            assert changed > 3, "the ultralight output is pasted into their box"
