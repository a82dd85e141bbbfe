"""Avatars from a video (avatars/video.py) and the HTTP build API (orchestrator/http/avatar_api.py),
on videos made here from the shipped public-domain photo."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import av
import cv2
import numpy as np
import pytest
from aiohttp import web
from server_fixtures import disclosure_guard
from skimage import data

from avatars.__main__ import main as avatars_main
from avatars.face_detection import FaceError, detect_single_face
from avatars.mouth import find_mouth
from avatars.package import build_from_image
from avatars.video import build_from_video, probe_video, video_frames
from orchestrator.app import json_errors
from orchestrator.avatar.jobs import AvatarJobs
from orchestrator.avatar.store import AvatarStore
from orchestrator.http.avatar_api import AVATAR_JOBS_KEY, routes

FRAMES = 40
SHIFT_PX = 2  # per frame, to the right
CANVAS = (512, 600)  # height, width: the 512x512 photo slides across it
APP_BODY_LIMIT = 1 << 20  # as the real app: uploads stream past it


def write_video(path, frames, fps=25, rotation=None):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "18"})
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def noise(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()


@pytest.fixture(scope="module")
def moving_video(astronaut, tmp_path_factory):
    frames = []
    for k in range(FRAMES):
        canvas = np.full((*CANVAS, 3), 120, np.uint8)
        canvas[:, SHIFT_PX * k : SHIFT_PX * k + 512] = astronaut
        frames.append(canvas)
    return write_video(tmp_path_factory.mktemp("videos") / "moving.mp4", frames)


@pytest.fixture(scope="module")
def noise_video(tmp_path_factory):
    frames = [noise(120, 160, seed) for seed in range(20)]
    return write_video(tmp_path_factory.mktemp("videos") / "noise.mp4", frames)


@pytest.fixture(scope="module")
def built(moving_video, tmp_path_factory):
    out = tmp_path_factory.mktemp("avatars")
    build_from_video(moving_video, "walker", out, source="test")
    return out


def test_boxes_follow_the_face(built):
    avatar = AvatarStore(built).load("walker")
    assert avatar.frames.shape == (FRAMES, *CANVAS, 3)
    boxes = avatar.boxes.astype(float)
    assert np.all(boxes[:, 2] - boxes[:, 0] == boxes[:, 3] - boxes[:, 1]), "square crop boxes"
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    frames = np.arange(FRAMES)
    slope_x = np.polyfit(frames, centre_x, 1)[0]
    assert abs(slope_x - SHIFT_PX) < 0.2, f"box moves {slope_x:.2f} px/frame"
    assert np.abs(np.diff(centre_x) - SHIFT_PX).max() <= 3, "no jumps"
    assert abs(np.polyfit(frames, centre_y, 1)[0]) < 0.2
    # The crop holds the face as the photo's single-frame crop would: ~1.35 face widths.
    size = boxes[:, 2] - boxes[:, 0]
    assert 120 <= size.min() and size.max() <= 145 and np.ptp(size) <= 4
    cx, line_y, width, height = avatar.mouth.T
    assert np.all((0.4 < cx) & (cx < 0.6) & (0.45 < line_y) & (line_y < 0.7))
    assert np.all((0.2 < width) & (width < 0.45) & (height > 0) & (height < 0.2))


def test_manifest_and_closed_mouth(built):
    manifest = json.loads((built / "walker" / "manifest.json").read_text())
    assert manifest["format"] == "livehuman-avatar" and manifest["version"] == 1
    assert (manifest["fps"], manifest["frame_count"]) == (25, FRAMES)
    assert (manifest["width"], manifest["height"]) == (CANVAS[1], CANVAS[0])
    assert manifest["loop"] == "ping-pong" and manifest["source"] == "test"
    assert manifest["lipsync_models"] == ["lipsync_default"]
    assert manifest["tracking"]["frames_without_face"] == 0
    avatar = AvatarStore(built).load("walker")
    for k in (0, FRAMES // 2, FRAMES - 1):  # she smiles with teeth in the source: closed here
        frame = np.ascontiguousarray(avatar.frames[k])
        assert find_mouth(frame, detect_single_face(frame)).gap == 0
    assert not list(built.glob(".*")), "no staging folder left"


def test_other_frame_rates_are_resampled_by_timestamp(tmp_path):
    # Brightness encodes the source frame index: 50 fps keeps every other frame, 10 fps repeats.
    levels = [noise(64, 64, 0) // 8 + 6 * k for k in range(30)]
    for fps, expected in ((50, list(range(0, 30, 2))), (10, [min(round(0.4 * k), 29) for k in range(75)])):
        path = write_video(tmp_path / f"fps{fps}.mp4", levels, fps=fps)
        frames = list(video_frames(path, probe_video(path)))
        index = [round((f.astype(float).mean() - levels[0].mean()) / 6) for f in frames]
        assert index == expected, fps


def test_large_frames_are_scaled_down_and_long_videos_refused(astronaut, tmp_path):
    path = write_video(tmp_path / "big.mp4", [noise(1000, 1600)] * 3)
    assert [f.shape for f in video_frames(path, probe_video(path))] == [(800, 1280, 3)] * 3
    with pytest.raises(ValueError, match="limit is 0 s"):
        probe_video(path, max_seconds=0.04)
    photo = cv2.resize(astronaut, (1600, 1600), interpolation=cv2.INTER_CUBIC)
    manifest = json.loads((build_from_image(photo, "big", tmp_path, seconds=0.08) / "manifest.json").read_text())
    assert (manifest["width"], manifest["height"]) == (1280, 1280)


def test_only_video_containers_are_opened(tmp_path):
    # FFmpeg's tty demuxer renders any text file as video (and its playlist demuxers follow
    # links to other files): only video containers may be opened.
    text = tmp_path / "secret.ans"
    text.write_text("password=hunter2\n")
    with av.open(str(text)) as container:
        assert container.streams.video, "FFmpeg alone would open it"
    with pytest.raises(ValueError, match="not a decodable video"):
        probe_video(text)


def test_rotated_phone_video_is_built_upright(astronaut, tmp_path):
    # Stored sideways with a display rotation, as phones record portrait video.
    upright = np.full((512, 576, 3), 120, np.uint8)
    upright[:, 32:544] = astronaut
    path = write_video(tmp_path / "phone.mp4", [np.ascontiguousarray(np.rot90(upright, -1))] * 10,
                       rotation=90)
    manifest = json.loads((build_from_video(path, "phone", tmp_path / "out") / "manifest.json").read_text())
    assert (manifest["width"], manifest["height"], manifest["frame_count"]) == (576, 512, 10)


def test_no_face_is_a_clear_error_and_leaves_nothing(noise_video, tmp_path):
    with pytest.raises(FaceError, match="no face found in 20 of 20 frames"):
        build_from_video(noise_video, "nobody", tmp_path)
    assert not any(tmp_path.iterdir())


def test_two_people_are_refused(astronaut, tmp_path):
    pair = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)
    path = write_video(tmp_path / "pair.mp4", [pair] * 10)
    with pytest.raises(FaceError, match=r"2 faces in \d+ of \d+ checked frames: .* one person"):
        build_from_video(path, "pair", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_builds_from_a_video(moving_video, noise_video, tmp_path, capsys):
    assert avatars_main(["build", "--video", str(moving_video), "--id", "clip",
                         "--out-dir", str(tmp_path)]) == 0
    assert AvatarStore(tmp_path).load("clip").frames.shape[0] == FRAMES
    assert avatars_main(["build", "--video", str(noise_video), "--id", "x",
                         "--out-dir", str(tmp_path)]) == 2
    assert "no face found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one source only
        avatars_main(["build", "--video", str(moving_video), "--image", "a.jpg", "--id", "x"])


# --- HTTP API ---------------------------------------------------------------------------------


@pytest.fixture
async def server(tmp_path):
    """(base_url, jobs) of an app with the avatar routes only, on 127.0.0.1."""
    jobs = AvatarJobs(AvatarStore(tmp_path / "avatars"), tmp_path / "uploads", image_seconds=1.0)
    app = web.Application(middlewares=[disclosure_guard(tmp_path), json_errors],
                          client_max_size=APP_BODY_LIMIT)
    app.add_routes(routes)
    app[AVATAR_JOBS_KEY] = jobs
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}") as http:
        yield http, jobs
    await jobs.close()
    await runner.cleanup()


def form(avatar_id, content, filename="upload.bin"):
    body = aiohttp.FormData()
    if avatar_id is not None:
        body.add_field("id", avatar_id)
    if content is not None:
        body.add_field("file", content, filename=filename)
    return body


async def submit(http, avatar_id, content, status=202):
    async with http.post("/avatars", data=form(avatar_id, content)) as response:
        answer = await response.json()
        assert response.status == status, answer
        return answer


async def wait_for(http, job_id, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with http.get(f"/avatars/{job_id}") as response:
            job = (await response.json())["data"]
        if job["state"] in ("done", "failed"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['state']}")


def png(rgb):
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


async def test_api_builds_from_an_image_and_a_video(server, astronaut, moving_video):
    http, jobs = server
    answer = await submit(http, "astro", png(astronaut))
    assert answer["code"] == 0 and answer["data"]["state"] in ("queued", "running")
    video = await submit(http, "walker", moving_video.read_bytes())  # queued behind the image
    image_job = await wait_for(http, answer["data"]["job"])
    video_job = await wait_for(http, video["data"]["job"])
    assert image_job["state"] == video_job["state"] == "done", (image_job, video_job)
    assert image_job["kind"] == "image" and video_job["kind"] == "video"
    assert video_job["progress"] == 1 and video_job["avatar"] == "walker"
    async with http.get("/avatars") as response:
        listing = (await response.json())["data"]
    assert [a["id"] for a in listing["avatars"]] == ["astro", "walker"] and listing["jobs"] == []
    walker = next(a for a in listing["avatars"] if a["id"] == "walker")
    assert walker == {"id": "walker", "frame_count": FRAMES, "width": CANVAS[1],
                      "height": CANVAS[0], "source": "upload: upload.bin"}
    assert AvatarStore(jobs.store.directory).load("astro").frames.shape == (25, 512, 512, 3)
    assert AvatarStore(jobs.store.directory).load("walker").frames.shape[0] == FRAMES
    assert not any(jobs.upload_dir.iterdir()), "uploads are deleted"
    await submit(http, "walker", png(astronaut), status=409)


async def test_event_loop_stays_responsive_during_a_build(server, moving_video):
    http, _ = server
    job_id = (await submit(http, "busy", moving_video.read_bytes()))["data"]["job"]
    lateness, answers = [], []
    while True:
        before = time.monotonic()
        await asyncio.sleep(0.01)
        lateness.append(time.monotonic() - before - 0.01)
        before = time.monotonic()
        async with http.get(f"/avatars/{job_id}") as response:
            state = (await response.json())["data"]["state"]
        answers.append(time.monotonic() - before)
        if state in ("done", "failed"):
            break
    assert state == "done" and len(answers) > 10
    print(f"during a {FRAMES}-frame video build: timer late by at most "
          f"{max(lateness) * 1e3:.1f} ms, requests answered in at most {max(answers) * 1e3:.1f} ms "
          f"(median {np.median(answers) * 1e3:.1f} ms, {len(answers)} requests)")
    assert max(lateness) < 0.1 and max(answers) < 0.1


async def test_api_bad_requests(server, astronaut, noise_video):
    http, jobs = server
    bad_id = await submit(http, "../evil", png(astronaut), status=400)
    assert bad_id["code"] == 400 and "'id'" in bad_id["msg"]
    assert "'id'" in (await submit(http, None, png(astronaut), status=400))["msg"]
    assert "'file'" in (await submit(http, "x", None, status=400))["msg"]
    undecodable = await submit(http, "junk", b"not a picture, not a video" * 100, status=400)
    assert "'file' is neither an image nor a video" in undecodable["msg"]
    body = form("twice", png(astronaut))
    body.add_field("file", b"again", filename="b.bin")
    async with http.post("/avatars", data=body) as response:
        assert response.status == 400 and "twice" in (await response.json())["msg"]
    async with http.get("/avatars/0123456789abcdef") as response:
        assert response.status == 404 and "unknown avatar job" in (await response.json())["msg"]
    async with http.post("/avatars", json={"id": "x"}) as response:
        assert response.status == 400
    jobs.max_upload_bytes = 1000
    too_large = await submit(http, "big", png(astronaut), status=413)
    assert too_large["code"] == 413 and "'file'" in too_large["msg"]
    jobs.max_upload_bytes = 50 << 20
    # Decodable, but no face: the job fails with the builder's message. The picture is larger
    # than the app's body limit: uploads stream to disk instead.
    big_noise = png(noise(1024, 1024))
    assert len(big_noise) > APP_BODY_LIMIT
    failed = [await wait_for(http, (await submit(http, name, content))["data"]["job"])
              for name, content in (("noisy", big_noise), ("static", noise_video.read_bytes()))]
    assert [job["state"] for job in failed] == ["failed", "failed"]
    assert failed[0]["error"].startswith("no face found")
    assert failed[1]["error"].startswith("no face found in 20 of 20 frames")
    assert not any(jobs.upload_dir.iterdir()) and not list(jobs.store.directory.glob("*"))
    await submit(http, "noisy", png(astronaut))  # a failed id is free again
