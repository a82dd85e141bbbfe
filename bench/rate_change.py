"""What a bit rate change costs in picture quality: a new encoder at the new rate (what a REMB
change did before issue 20) against the running encoder following it (x264 reconfigured between
frames) and against a keyframe forced in the running encoder (what a speech start costs anyway).

Each case encodes every third frame of the default avatar's idle loop at 512x512 (more motion
than the loop itself, less than speech) at the codec's default rate, changes at `--change-at`,
and decodes everything; reported: mean PSNR of the 10 frames before the change, min and mean of
the 30 from it, and the bit rate of the frames after those. One process, no server.
Writes bench/results/rate_change.json and prints the table rows for bench/README.md.

    .venv/bin/python bench/rate_change.py [--frames 120] [--change-at 40]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import av
import numpy as np

from orchestrator.avatar.store import AvatarStore
from orchestrator.media.clock import VIDEO_FPS
from orchestrator.media.video_encoders import encoder_class, open_encoder
from orchestrator.settings import Settings

RESULTS = Path(__file__).parent / "results"
DECODERS = {"video/VP8": "libvpx", "video/H264": "h264"}
LOOP_STEP_FRAMES = 3
BEFORE_FRAMES, AFTER_FRAMES = 10, 30


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-6))


def run_case(avatar, mime_type: str, mode: str, rate_bps: int, frames: int, at: int) -> dict:
    """mode: "new encoder" (switch to a fresh one at the new rate), "running encoder" (our
    encoder's target set: what the server does now), "keyframe" (no change, a forced keyframe)."""
    encoder = open_encoder(mime_type, avatar.width, avatar.height)
    decoder = av.CodecContext.create(DECODERS[mime_type], "r")
    quality, sizes = [], []
    for k in range(frames):
        picture = avatar.frames[avatar.frame_index(k * LOOP_STEP_FRAMES)]
        keyframe = k == 0
        if k == at:
            if mode == "new encoder":
                encoder = open_encoder(mime_type, avatar.width, avatar.height, rate_bps)
            elif mode == "running encoder":
                encoder.target_bitrate_bps = rate_bps
            else:
                keyframe = True
        encoded = encoder.encode(picture, keyframe)
        sizes.append(len(encoded.data))
        for frame in decoder.decode(av.Packet(encoded.data)):
            quality.append(psnr(frame.to_ndarray(format="rgb24"), picture))
    after = quality[at : at + AFTER_FRAMES]
    return {"codec": mime_type, "mode": mode, "rate_bps": rate_bps,
            "psnr_before_db": float(np.mean(quality[at - BEFORE_FRAMES : at])),
            "psnr_after_min_db": float(min(after)), "psnr_after_mean_db": float(np.mean(after)),
            "kbps_later": float(np.mean(sizes[at + AFTER_FRAMES :]) * 8 * VIDEO_FPS / 1000),
            "new_encoders": encoder.opened}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--change-at", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS / "rate_change.json")
    args = parser.parse_args()
    if not BEFORE_FRAMES <= args.change_at <= args.frames - AFTER_FRAMES - 10:
        parser.error("--change-at must leave 10 frames before it and 40 after it")
    avatar = AvatarStore(Settings().avatar_dir).load("default")
    cases = []
    for mime_type in ("video/VP8", "video/H264"):
        cls = encoder_class(mime_type)
        fall = int(cls.default_bitrate_bps * 0.88)  # a browser's first estimate, ~440k for VP8
        for mode, rate in (("new encoder", fall), ("new encoder", cls.min_bitrate_bps),
                           ("running encoder", fall), ("running encoder", cls.min_bitrate_bps),
                           ("keyframe", cls.default_bitrate_bps)):
            cases.append(run_case(avatar, mime_type, mode, rate, args.frames, args.change_at))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"frames": args.frames, "change_at": args.change_at,
                                    "cases": cases}, indent=2) + "\n")
    for c in cases:
        print(f"| {c['codec'].split('/')[1]} {c['mode']}, {c['rate_bps'] // 1000} kbit/s "
              f"| {c['psnr_after_min_db']:.1f} / {c['psnr_after_mean_db']:.1f} dB "
              f"| {c['psnr_before_db']:.1f} dB | {c['kbps_later']:.0f} |")


if __name__ == "__main__":
    main()
