"""Lip-sync slower than real time (MuseTalk's full UNet on a CPU): the session's speech waits for
its frames instead of dropping them or drifting from its audio.

The player takes each lip-synced frame with its own 40 ms of audio (speech/items.SpeechFrame);
a frame that is not ready yet is an idle tick with silence, so the speech pauses and resumes
where it was. Checked with a deliberately slow model on the real server: a python-backend
Triton model with the default model's tensors that takes 80 ms per frame (half real time) and
brightens the lower face by the loudness of the frame's own audio.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import av
import numpy as np
from server_fixtures import running_server, server_settings
from skimage import data

from avatars.package import build_from_image
from orchestrator.client import (
    AvatarClient,
    lagged_correlations,
    mean_window,
    mouth_motion,
    mouth_window,
)
from orchestrator.settings import PROJECT_ROOT
from orchestrator.triton.server import EmbeddedTriton

SLOW_MODEL = "slow_lipsync"
SECONDS_PER_FRAME = 0.08  # 12.5 frames/s: half of real time
TEXT = "One, two, three, four."
SAMPLES_PER_VIDEO_FRAME_48K = 1920

SLOW_MODEL_PY = f'''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mel = pb_utils.get_input_tensor_by_name(request, "mel").as_numpy()
            face = pb_utils.get_input_tensor_by_name(request, "face").as_numpy()
            time.sleep({SECONDS_PER_FRAME} * len(face))
            # the loudness of the frame's own 50 ms (its window's first 4 of 16 columns)
            loud = np.clip((mel[..., :4].mean(axis=(1, 2, 3)) + 4.0) / 4.0, 0.0, 1.0)
            out = face.copy()
            rows = face.shape[2]
            out[:, :, rows // 2:] = np.clip(face[:, :, rows // 2:]
                                            + 0.8 * loud[:, None, None, None], 0.0, 1.0)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("face_out", out.astype(np.float32))]))
        return responses
'''

SLOW_CONFIG = f'''name: "{SLOW_MODEL}"
backend: "python"
max_batch_size: 8
input [
  {{ name: "mel", data_type: TYPE_FP32, dims: [ 1, 80, 16 ] }},
  {{ name: "face", data_type: TYPE_FP32, dims: [ 3, -1, -1 ] }},
  {{ name: "mouth", data_type: TYPE_FP32, dims: [ 4 ] }}
]
output [
  {{ name: "face_out", data_type: TYPE_FP32, dims: [ 3, -1, -1 ] }}
]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
'''


def _slow_repository(root):
    repo = root / "repository"
    (repo / SLOW_MODEL / "1").mkdir(parents=True)
    (repo / SLOW_MODEL / "1" / "model.py").write_text(SLOW_MODEL_PY)
    (repo / SLOW_MODEL / "config.pbtxt").write_text(SLOW_CONFIG)
    for name in ("tts_espeak", "lipsync_default"):
        shutil.copytree(PROJECT_ROOT / "model_repository" / name, repo / name)
    return repo


async def _speak(base_url: str, services, avatar_id: str, record: bool) -> tuple[dict, dict, str]:
    """(start event, end event, recording path or "") of one echo."""
    client = AvatarClient(base_url)
    try:
        await client.connect(avatar=avatar_id)
        await client.wait_for_video(15)
        sessionid = client.sessionid
        if record:
            status, answer = await client.post("/record", type="start_record")
            assert status == 200, answer
        status, answer = await client.post("/human", type="echo", text=TEXT)
        assert status == 200, answer
        session = services.registry.get(sessionid)
        end = None
        for _ in range(600):
            end = next((e for e in session.events.history if e["event"] in ("end", "error")),
                       None)
            if end is not None:
                break
            await asyncio.sleep(0.05)
        assert end is not None and end["event"] == "end", end
        start = next(e for e in session.events.history if e["event"] == "start")
        path = ""
        if record:
            await asyncio.sleep(0.3)
            status, answer = await client.post("/record", type="end_record")
            assert status == 200, answer
            path = answer["data"]["path"]
        return start, end, path
    finally:
        await client.close()


async def test_slow_lipsync_delays_speech_without_dropping_or_drifting(tmp_path):
    repo = _slow_repository(tmp_path)
    avatar_dir = tmp_path / "avatars"
    for avatar_id, model in (("fast", "lipsync_default"), ("slow", SLOW_MODEL)):
        package = build_from_image(data.astronaut(), avatar_id, avatar_dir, seconds=0.8)
        manifest = json.loads((package / "manifest.json").read_text())
        manifest["lipsync_model"] = model
        (package / "manifest.json").write_text(json.dumps(manifest))

    async with EmbeddedTriton(repo, ["tts_espeak", "lipsync_default", SLOW_MODEL]) as server:
        settings = server_settings(server, avatar_dir=avatar_dir, data_dir=tmp_path,
                                   avatar_id="fast", tts="espeak", voice_input=False)
        async with running_server(settings) as (base_url, services):
            _, fast_end, _ = await _speak(base_url, services, "fast", record=False)
            start, end, path = await _speak(base_url, services, "slow", record=True)
            avatar = services.avatars.load("slow")

    # Nothing dropped: the same speech, frame for frame, as on a model faster than real time.
    assert end["played_s"] > 0.8
    assert abs(end["played_s"] - fast_end["played_s"]) <= 0.04 + 1e-6, (end, fast_end)
    # It was slower than real time: the speech was spread out, not cut short.
    assert end["time"] - start["time"] > 1.3 * end["played_s"], (start, end)

    # Not drifting: in what the session sent, each picture goes with its own audio (the lower
    # face brightens with the loudness of the frame's audio, at lag 0).
    with av.open(str(tmp_path / path)) as container:
        heard = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])
        container.seek(0)
        video = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    region = mouth_window(avatar)
    motion = mouth_motion(video, region, mean_window(video[:5], region))
    whole = heard.size // SAMPLES_PER_VIDEO_FRAME_48K * SAMPLES_PER_VIDEO_FRAME_48K
    per_frame = heard[:whole].reshape(-1, SAMPLES_PER_VIDEO_FRAME_48K)
    loudness = 20 * np.log10(np.sqrt((per_frame ** 2).mean(axis=1)) + 1e-3)
    n = min(len(motion), len(loudness))
    correlations = lagged_correlations(motion, loudness, 5, n - 5, range(-3, 4))
    best = max(correlations, key=correlations.get)
    assert best == 0 and correlations[0] > 0.6, correlations
