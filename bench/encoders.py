"""Per-frame cost of encoding one 512x512 picture: aiortc's encoders (what the server used before
issue 14) against ours (orchestrator/video_encoders), with quality and bit rate beside.

Each encoder gets the default avatar's idle loop (RGB frames, as the player renders them) for
`--frames` frames. The "before" path is what a session paid per frame: `VideoFrame.from_ndarray`
(rgb24) in the player, then aiortc's `encode` (it converts to yuv420p itself). Ours takes the RGB
array (OpenCV converts it to I420). Reported per frame: wall milliseconds (median, p90) and CPU
milliseconds (the process's CPU time during the call: x264's threads count too), the mean PSNR
of the decoded frames against the source and the bit rate, both after the first second. One process, nothing else
encoding; run it with `nice` on a quiet machine.
Writes bench/results/encoders.json and prints the table rows for bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from aiortc.codecs import depayload
from aiortc.codecs.h264 import H264Encoder as AiortcH264
from aiortc.codecs.vpx import Vp8Encoder as AiortcVp8
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from orchestrator.avatar.store import AvatarStore
from orchestrator.media.clock import VIDEO_FPS, VIDEO_PTS_PER_TICK, VIDEO_TIME_BASE
from orchestrator.media.video_encoders import open_encoder
from orchestrator.media.video_encoders.base import yuv_frame
from orchestrator.settings import Settings

RESULTS = Path(__file__).parent / "results"
DECODERS = {"VP8": "libvpx", "H264": "h264"}
# One compressed frame: our encoders return the bitstream, aiortc's its RTP payloads.
Encode = Callable[[np.ndarray, int], "bytes | list[bytes]"]


def aiortc_encoder(codec: str) -> Encode:
    encoder = AiortcVp8() if codec == "VP8" else AiortcH264()

    def encode(image: np.ndarray, index: int) -> list[bytes]:
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")  # the player's share
        frame.pts = index * VIDEO_PTS_PER_TICK
        frame.time_base = VIDEO_TIME_BASE
        return encoder.encode(frame)[0]
    return encode


def our_encoder(codec: str, width: int, height: int) -> Encode:
    encoder = open_encoder(f"video/{codec}", width, height)

    def encode(image: np.ndarray, index: int) -> bytes:
        return encoder.encode(image).data
    return encode


def conversions(frames: np.ndarray) -> dict[str, float]:
    """ms per frame for RGB → yuv420p by swscale (aiortc's path) and by OpenCV (ours)."""

    def timed(convert) -> float:
        samples = []
        for image in frames:
            start = time.perf_counter()
            convert(image)
            samples.append((time.perf_counter() - start) * 1000)
        return statistics.median(samples)

    return {
        "swscale_ms": timed(lambda im: av.VideoFrame.from_ndarray(im, format="rgb24").reformat(
            format="yuv420p")),
        "opencv_ms": timed(yuv_frame),
    }


def measure(name: str, codec: str, encode: Encode, frames: np.ndarray, count: int) -> dict:
    parameters = RTCRtpCodecParameters(mimeType=f"video/{codec}", clockRate=90000, payloadType=96)
    decoder = av.CodecContext.create(DECODERS[codec], "r")
    wall, cpu, sizes, quality = [], [], [], []
    for index in range(count):
        image = frames[index % len(frames)]
        start, start_cpu = time.perf_counter(), time.process_time()
        output = encode(image, index)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
        if isinstance(output, list):  # RTP payloads: strip the payload descriptors
            output = b"".join(depayload(parameters, payload) for payload in output)
        sizes.append(len(output))
        for frame in decoder.decode(av.Packet(output)):
            diff = frame.to_ndarray(format="rgb24").astype(np.float32) - image
            quality.append(10 * np.log10(255.0**2 / max(float(np.mean(diff**2)), 1e-6)))
    settled = slice(VIDEO_FPS, None)  # past the first second (rate control settles)
    return {"encoder": name, "codec": codec, "frames": count,
            "wall_ms_p50": statistics.median(wall),
            "wall_ms_p90": float(np.percentile(wall, 90)),
            "cpu_ms_per_frame": float(np.mean(cpu)),
            "psnr_db": float(np.mean(quality[settled])),
            "kbps": float(np.mean(sizes[settled])) * 8 * VIDEO_FPS / 1000}


def run(count: int) -> dict:
    avatar = AvatarStore(Settings().avatar_dir).load("default")
    loop = np.stack([avatar.frames[avatar.frame_index(k)] for k in range(2 * len(avatar.frames))])
    width, height = avatar.width, avatar.height
    candidates = [
        ("aiortc Vp8Encoder", "VP8", lambda: aiortc_encoder("VP8")),
        ("aiortc H264Encoder", "H264", lambda: aiortc_encoder("H264")),
        ("ours VP8 (libvpx realtime, cpu-used -12)", "VP8", lambda: our_encoder("VP8", width, height)),
        ("ours H.264 (x264 ultrafast, zerolatency)", "H264",
         lambda: our_encoder("H264", width, height)),
    ]
    rows = []
    for name, codec, make in candidates:
        rows.append(measure(name, codec, make(), loop, count))
        print(json.dumps(rows[-1]), flush=True)
    return {"benchmark": "encoders", "machine": {"cpus": os.cpu_count(),
                                                 "platform": platform.platform()},
            "size": [width, height], "source": "default avatar idle loop",
            "conversion": conversions(loop[:100]), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=500)
    args = parser.parse_args()
    result = run(args.frames)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "encoders.json").write_text(json.dumps(result, indent=2))
    conv = result["conversion"]
    print(f"RGB→yuv420p: swscale {conv['swscale_ms']:.2f} ms, OpenCV {conv['opencv_ms']:.2f} ms")
    for r in result["rows"]:
        print(f"| {r['encoder']} | {r['wall_ms_p50']:.2f} / {r['wall_ms_p90']:.2f} | "
              f"{r['cpu_ms_per_frame']:.2f} | {r['psnr_db']:.1f} | {r['kbps']:.0f} |")


if __name__ == "__main__":
    main()
