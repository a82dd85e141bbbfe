"""Custom clips (`custom_config`, `/set_audiotype`) and several avatars per session
(`multiavatar_config`): the stage on its own, then over a real aiortc peer."""

from __future__ import annotations

import asyncio
import json
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from server_fixtures import refused_offer, running_server, server_settings
from skimage import data

from avatars.package import build_from_image
from orchestrator.avatar.clips import ClipSource, load_clip, parse_custom_config
from orchestrator.avatar.store import AvatarStore
from orchestrator.client import AvatarClient
from orchestrator.errors import ApiError
from orchestrator.session.stage import TRANSITION_FRAMES, Stage
from orchestrator.settings import Settings
from orchestrator.speech.items import SpeechFrame, Utterance
from orchestrator.tts import Voice

SPEECH_RMS = 0.01
CLIP_FRAMES = 10
# Clip frame k is one flat colour: distinct enough to be told apart after VP8.
COLOURS = np.array([[(37 * k) % 256, (97 * k + 60) % 256, (151 * k + 120) % 256]
                    for k in range(CLIP_FRAMES)], np.uint8)


def write_clip_video(path, fps: int = 25, frames: int = CLIP_FRAMES, size=(160, 120), tone_hz=440.0):
    """A clip made with PyAV: flat colour frames and a tone."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "mono"
        for k in range(frames):
            image = np.empty((size[1], size[0], 3), np.uint8)
            image[:] = COLOURS[k % CLIP_FRAMES]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        seconds = frames / fps
        t = np.arange(int(48000 * seconds)) / 48000
        tone = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32).reshape(1, -1)
        sound = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        sound.sample_rate, sound.pts = 48000, 0
        for packet in audio.encode(sound):
            container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                container.mux(packet)


def colour_index(image: np.ndarray) -> int:
    """Which clip frame this picture shows (nearest flat colour), or -1 if none is close."""
    mean = image.reshape(-1, 3).astype(np.float32).mean(axis=0)
    distances = np.abs(COLOURS.astype(np.float32) - mean).sum(axis=1)
    best = int(distances.argmin())
    return best if distances[best] < 25 else -1


# --- parsing and decoding -------------------------------------------------------------------

@pytest.mark.parametrize(("config", "named"), [
    ([{"audiotype": 1, "imgpath": "frames", "extra": 1}], "unknown keys ['extra']"),
    ([{"audiotype": 0, "imgpath": "frames"}], "audiotype must be an integer >= 1"),
    ([{"audiotype": "2", "imgpath": "frames"}], "audiotype must be an integer"),
    ([{"audiotype": 1, "imgpath": "frames"}, {"audiotype": 1, "video": "clip.mp4"}], "appears twice"),
    ([{"audiotype": 1}], "exactly one of 'imgpath' or 'video'"),
    ([{"audiotype": 1, "imgpath": "frames", "video": "clip.mp4"}], "exactly one"),
    ([{"audiotype": 1, "imgpath": "../outside"}], "inside the data directory"),
    ([{"audiotype": 1, "imgpath": "/etc"}], "inside the data directory"),
    ([{"audiotype": 1, "video": "missing.mp4"}], "'missing.mp4' not found"),
    ([{"audiotype": 1, "video": "frames"}], "video must be a file"),
    ([{"audiotype": 1, "imgpath": "clip.mp4"}], "imgpath must be a folder"),
    (["clip.mp4"], "entry 0 must be an object"),
])
def test_custom_config_errors_name_the_problem(tmp_path, config, named):
    (tmp_path / "frames").mkdir()
    write_clip_video(tmp_path / "clip.mp4")
    with pytest.raises(ApiError) as error:
        parse_custom_config(config, tmp_path)
    assert error.value.status == 400 and named in error.value.msg and "custom_config" in error.value.msg


def test_a_symlink_out_of_the_data_directory_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "clips").symlink_to(outside)
    with pytest.raises(ApiError, match="leaves the data directory"):
        parse_custom_config([{"audiotype": 1, "imgpath": "clips"}], data_dir)


def test_livetalking_paths_with_a_data_prefix_are_accepted(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "customvideo" / "image").mkdir(parents=True)
    sources = parse_custom_config([{"audiotype": 2, "imgpath": "data/customvideo/image"}], data_dir)
    assert sources[0].frames == (data_dir / "customvideo" / "image").resolve()


@pytest.mark.parametrize(("fps", "expected"), [(25, 10), (50, 10), (10, 25)])
def test_video_clips_are_resampled_to_25_fps_with_their_sound(tmp_path, fps, expected):
    # 10 frames at 25 fps = 0.4 s; at 50 fps 20 frames are 0.4 s; at 10 fps 10 frames are 1 s.
    frames = {25: 10, 50: 20, 10: 10}[fps]
    write_clip_video(tmp_path / "clip.mp4", fps=fps, frames=frames)
    clip = load_clip(ClipSource(1, tmp_path / "clip.mp4", None), 320, 240)
    assert clip.frames.shape == (expected, 240, 320, 3)
    assert clip.audio is not None and clip.audio.size == expected * 640
    assert np.sqrt(np.mean(clip.audio[640:-640] ** 2)) > 0.1, "the tone came along"


def test_image_folder_clip_fits_the_session_frame(tmp_path):
    folder = tmp_path / "wave"
    folder.mkdir()
    import cv2

    for k in range(3):
        cv2.imwrite(str(folder / f"{k:03d}.png"), np.full((100, 200, 3), COLOURS[k][::-1], np.uint8))
    clip = load_clip(ClipSource(1, folder, None), 200, 200)
    assert clip.frames.shape == (3, 200, 200, 3) and clip.audio is None
    # 200x100 fitted into 200x200: letterboxed, colours in order
    assert [colour_index(f[60:140]) for f in clip.frames] == [0, 1, 2]
    assert clip.frames[0, :40].max() == 0


# --- the stage ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_avatar():
    return AvatarStore(Settings().avatar_dir).load("default")


def flat_clip(avatar, audiotype=1):
    frames = np.stack([np.full((avatar.height, avatar.width, 3), c, np.uint8) for c in COLOURS])
    from orchestrator.avatar.clips import Clip

    return Clip(audiotype, frames, None)


def shown_indices(stage, ticks, speech=None):
    return [colour_index(stage.next_shot(speech).image) for _ in range(ticks)]


def test_clip_plays_in_order_loops_and_reinit_decides_where_it_resumes(default_avatar):
    stage = Stage(default_avatar, {1: flat_clip(default_avatar)})
    with pytest.raises(ApiError) as error:
        stage.set_audiotype(7, True)
    assert error.value.status == 404 and "audiotype 7" in error.value.msg
    shown_indices(stage, 3)  # idle
    stage.set_audiotype(1, True)
    seen = shown_indices(stage, 14)
    # a cross-fade from the idle picture first, then the clip frames in order, looping
    assert seen[TRANSITION_FRAMES:] == [k % CLIP_FRAMES for k in range(TRANSITION_FRAMES, 14)]
    stage.set_audiotype(0, False)
    shown_indices(stage, 8)
    stage.set_audiotype(1, False)  # continue where it stopped
    seen = shown_indices(stage, 8)
    assert seen[TRANSITION_FRAMES:] == [k % CLIP_FRAMES for k in range(14 + TRANSITION_FRAMES, 14 + 8)]
    stage.set_audiotype(1, True)  # from the start
    seen = shown_indices(stage, 3)
    assert seen == [0, 1, 2], "same source: no fade, just back to frame 0"


def test_speech_takes_over_and_the_clip_resumes_after(default_avatar):
    stage = Stage(default_avatar, {1: flat_clip(default_avatar)})
    stage.set_audiotype(1, True)
    assert shown_indices(stage, 4) == [0, 1, 2, 3]
    utterance = Utterance("1-1", "hi", Voice(), default_avatar)
    crop = np.zeros((default_avatar.crop_size,) * 2 + (3,), np.uint8)
    speech = [SpeechFrame(utterance, stage.avatar_tick + k, crop, np.full(640, 0.1, np.float32))
              for k in range(8)]
    shots = [stage.next_shot(s) for s in speech]
    assert all(colour_index(s.image) == -1 for s in shots[TRANSITION_FRAMES:]), "the avatar speaks"
    assert all(np.allclose(s.audio, 0.1) for s in shots)
    seen = shown_indices(stage, 8)
    assert seen[TRANSITION_FRAMES:] == [(4 + k) % CLIP_FRAMES for k in range(TRANSITION_FRAMES, 8)], "resumed"


# --- over WebRTC ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
async def clip_server(triton, tmp_path_factory):
    """A server with its own data directory: a clip, and two avatars (the photo and its mirror)."""
    data_dir = tmp_path_factory.mktemp("data")
    avatar_dir = data_dir / "avatars"
    photo = data.astronaut()
    build_from_image(photo, "default", avatar_dir, seconds=1.2)
    build_from_image(np.ascontiguousarray(photo[:, ::-1]), "mirror", avatar_dir, seconds=1.2)
    (data_dir / "customvideo").mkdir()
    write_clip_video(data_dir / "customvideo" / "wave.mp4", frames=CLIP_FRAMES, size=(128, 128))
    settings = server_settings(triton, data_dir=data_dir, avatar_dir=avatar_dir)
    async with running_server(settings) as server:
        yield server


async def frames_between(client, start: float, stop: float) -> list[np.ndarray]:
    r = client.received
    return [f for t, f in zip(r.video_times, r.video) if start <= t < stop]


async def test_clip_arrives_at_the_peer_and_speech_interrupts_it(clip_server):
    base_url, services = clip_server
    client = AvatarClient(base_url)
    try:
        await client.connect(custom_config=json.dumps([{"audiotype": 2, "video": "customvideo/wave.mp4"}]))
        await client.wait_for_video(10)
        status, answer = await client.post("/set_audiotype", audiotype=2, reinit=True)
        assert status == 200, answer
        t0 = time.monotonic()
        await asyncio.sleep(1.5)
        indices = [colour_index(f) for f in await frames_between(client, t0 + 0.5, t0 + 1.5)]
        assert -1 not in indices, indices
        steps = {(b - a) % CLIP_FRAMES for a, b in zip(indices, indices[1:])}
        assert steps <= {1, 2}, f"the clip plays in order: {indices}"  # 2: a frame lost on the wire
        assert max(client.received.audio_rms[-20:]) > 0.05, "the clip's tone plays"

        sent = time.monotonic()
        await client.post("/human", type="echo", text="Sorry to interrupt the clip.")
        first = await client.wait_for_speech(sent, SPEECH_RMS)
        await asyncio.sleep(0.9)
        # From 0.6 s after the first speech audio: the 200 ms cross-fade is long over, with room
        # for the client's video decoding to lag its audio on a loaded machine.
        during = [colour_index(f) for f in await frames_between(client, first + 0.6, first + 0.9)]
        assert during and all(i == -1 for i in during), "the avatar, not the clip, while speaking"
        while (await client.post("/is_speaking"))[1]["data"]:
            await asyncio.sleep(0.05)
        t1 = time.monotonic()
        await asyncio.sleep(1.0)
        after = [colour_index(f) for f in await frames_between(client, t1 + 0.4, t1 + 1.0)]
        assert after and -1 not in after, "the clip resumes after speech"

        for body, status, named in [({"audiotype": 9, "reinit": True}, 404, "audiotype 9"),
                                    ({"audiotype": 2, "reinit": "yes"}, 400, "reinit"),
                                    ({"audiotype": "2", "reinit": True}, 400, "audiotype")]:
            got, answer = await client.post("/set_audiotype", **body)
            assert got == status and named in answer["msg"], answer
    finally:
        await client.close()


async def test_bad_custom_config_is_refused_at_offer(clip_server):
    for config, named in [("[{", "not valid JSON"),
                          (json.dumps([{"audiotype": 1, "video": "../../etc/passwd"}]), "inside the data"),
                          (json.dumps([{"audiotype": 1, "video": "customvideo/none.mp4"}]), "not found")]:
        assert named in await refused_offer(clip_server[0], custom_config=config)


async def test_each_utterance_is_spoken_by_the_avatar_it_names(clip_server):
    base_url, services = clip_server
    store = services.avatars
    default, mirror = store.load("default").frames[0], store.load("mirror").frames[0]

    def looks_like(frame):
        d = np.abs(frame.astype(np.float32) - default).mean()
        m = np.abs(frame.astype(np.float32) - mirror).mean()
        return "default" if d < m else "mirror"

    client = AvatarClient(base_url)
    try:
        await client.connect(multiavatar_config=json.dumps({"presenter": {"avatar": "mirror",
                                                                           "voice": "en-us"}}))
        await client.wait_for_video(5)
        assert looks_like(client.received.video[-1]) == "default"
        for avatarid, expected in [("presenter", "mirror"), ("main", "default")]:
            sent = time.monotonic()
            status, answer = await client.post("/human", type="echo", text="Who is talking now?",
                                               avatarid=avatarid)
            assert status == 200, answer
            first = await client.wait_for_speech(sent, SPEECH_RMS)
            await asyncio.sleep(0.6)
            during = await frames_between(client, first + 0.3, first + 0.6)
            assert during and {looks_like(f) for f in during} == {expected}, avatarid
            while (await client.post("/is_speaking"))[1]["data"]:
                await asyncio.sleep(0.05)
            # Its last audio is still on its way (track queue, network, jitter buffer): taken
            # for the next utterance's first, it made the window below too early.
            await asyncio.sleep(0.5)
        got, answer = await client.post("/human", type="echo", text="x", avatarid="nobody")
        assert got == 404 and "presenter" in answer["msg"]
    finally:
        await client.close()

    for config, status in [(json.dumps({"x": "no-such-avatar"}), "404"),
                           (json.dumps({"x": {"avatar": "mirror", "voice": "zz-none"}}), "404"),
                           (json.dumps({"x": {"avatar": "mirror", "mood": "happy"}}), "400"),
                           (json.dumps({"../x": "mirror"}), "400")]:
        assert status in await refused_offer(base_url, multiavatar_config=config)
