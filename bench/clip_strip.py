"""A frame strip of clip → speech → clip, as an aiortc client receives it (docs/clip_speech_clip.png).

Makes an action clip from the default avatar (a slow lean-in: the picture zooms in and back),
starts `python -m orchestrator` with it in a scratch data directory, plays it with
/set_audiotype, interrupts it with an echo utterance and lets it resume.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from server_process import start_server  # bench/ is the script's directory

from orchestrator.avatar.store import AvatarStore
from orchestrator.client import AvatarClient, mean_window, mouth_motion, mouth_window
from orchestrator.settings import Settings

CLIP_FRAMES = 50
THUMB = 192


def write_lean_in_clip(frame: np.ndarray, path: Path) -> None:
    h, w = frame.shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for k in range(CLIP_FRAMES):
            zoom = 1.0 + 0.12 * np.sin(np.pi * k / (CLIP_FRAMES - 1))
            matrix = cv2.getRotationMatrix2D((w / 2, h * 0.35), 0.0, zoom)
            image = cv2.warpAffine(frame, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)
            video = av.VideoFrame.from_ndarray(image, format="rgb24")
            video.pts, video.time_base = k, Fraction(1, 25)
            for packet in stream.encode(video):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def labelled(image: np.ndarray, label: str) -> np.ndarray:
    thumb = cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    cv2.rectangle(thumb, (0, 0), (THUMB, 22), (0, 0, 0), -1)
    cv2.putText(thumb, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return thumb


async def run(out: Path) -> None:
    settings = Settings()
    avatar = AvatarStore(settings.avatar_dir).load(settings.avatar_id)
    region = mouth_window(avatar)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch)
        (data_dir / "customvideo").mkdir()
        write_lean_in_clip(avatar.frames[0], data_dir / "customvideo" / "lean_in.mp4")
        server = await start_server("--data-dir", str(data_dir), "--avatar-dir", str(settings.avatar_dir))
        client = AvatarClient(server.base_url)
        try:
            await client.connect(custom_config=json.dumps([{"audiotype": 1, "video": "customvideo/lean_in.mp4"}]))
            await client.wait_for_video(25)
            reference = mean_window(client.received.video[-10:], region)
            await client.post("/set_audiotype", audiotype=1, reinit=True)
            t_clip = time.monotonic()
            await asyncio.sleep(1.6)
            t_speech = time.monotonic()
            await client.post("/human", type="echo", text="Hello! Let me tell you about today's offers.")
            first = await client.wait_for_speech(t_speech)
            while (await client.post("/is_speaking"))[1]["data"]:
                await asyncio.sleep(0.05)
            t_end = time.monotonic()
            await asyncio.sleep(1.6)
        finally:
            await client.close()
            server.stop()
    r = client.received
    times = np.array(r.video_times)

    def at(t: float) -> np.ndarray:
        return r.video[int(np.searchsorted(times, t))]

    speaking = [i for i, t in enumerate(times) if first + 0.2 < t < t_end - 0.3]
    motion = mouth_motion([r.video[i] for i in speaking], region, reference)
    open_mouth = [speaking[i] for i in np.argsort(motion)[-2:]]
    tiles = [labelled(at(t_clip + 0.4), "clip"), labelled(at(t_clip + 1.0), "clip"),
             labelled(at(t_clip + 1.5), "clip"),
             *[labelled(r.video[i], "speech") for i in sorted(open_mouth)],
             labelled(at(t_end + 0.6), "clip resumes"), labelled(at(t_end + 1.3), "clip")]
    strip = np.concatenate(tiles, axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/clip_speech_clip.png"))
    asyncio.run(run(parser.parse_args().out))


if __name__ == "__main__":
    main()
