"""python -m avatars build (--image face.jpg | --video me.mp4) --id NAME [--model ultralight] |
build-default |
import-livetalking FOLDER --id NAME"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .face_detection import FaceError
from .livetalking import import_folder
from .model_crops import MODEL_CROPS, model_crop
from .package import build_from_image, read_image
from .video import MAX_LONG_SIDE_PX, MAX_SECONDS, build_from_video

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "data" / "avatars"


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
    elif done == total or done % max(1, total // 4) == 0:
        # Logs (CI, docker build) get a few lines instead of carriage-return noise.
        sys.stderr.write(f"{done}/{total}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avatars", description="Build avatar packages.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build an avatar from a photo or a video")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="a frontal photo of one person")
    source.add_argument("--video", type=Path, help=f"a video of one person facing the camera, "
                        f"idle or silent (at most {MAX_SECONDS:.0f} s; larger frames than "
                        f"{MAX_LONG_SIDE_PX} px are scaled down)")
    build.add_argument("--id", required=True, help="avatar id (letters, digits, _ and -)")
    build.add_argument("--model", choices=sorted(MODEL_CROPS), default="default",
                       help="the lip-sync model the avatar is cropped for (ultralight: "
                       "LiveTalking's crop; speak with a UNet trained on this person)")
    default = sub.add_parser("build-default", help="build 'default' from the public-domain "
                             "NASA portrait shipped with scikit-image")
    for p in (build, default):
        p.add_argument("--seconds", type=float, default=4.0,
                       help="length of the idle loop made from a photo")
    imported = sub.add_parser("import-livetalking", help="convert a LiveTalking avatar folder "
                              "(full_imgs/, face_imgs/, coords.pkl; wav2lip or ultralight, told "
                              "by its files), keeping its face boxes")
    imported.add_argument("folder", type=Path, help="e.g. LiveTalking/data/avatars/wav2lip256_avatar1")
    imported.add_argument("--id", required=True, help="avatar id (letters, digits, _ and -)")
    imported.add_argument("--lipsync-model", help="the Triton model the avatar speaks with "
                          "(default lipsync_default, ultralight for an Ultralight folder; e.g. "
                          "wav2lip256 once exported)")
    for p in (build, default, imported):
        p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)
    try:
        path = _build(args)
    except (FaceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"avatar '{path.name}' written to {path}")
    return 0


def _build(args: argparse.Namespace) -> Path:
    if args.command == "import-livetalking":
        return import_folder(args.folder, args.id, args.out_dir, args.lipsync_model, _progress)
    crop = model_crop(args.model) if args.command == "build" else None
    if args.command == "build" and args.video:
        return build_from_video(args.video, args.id, args.out_dir, _progress, crop=crop)
    if args.command == "build":
        rgb, avatar_id, source = read_image(args.image), args.id, str(args.image)
    else:
        from skimage import data

        rgb, avatar_id, source = data.astronaut(), "default", "skimage.data.astronaut (NASA, public domain)"
    return build_from_image(rgb, avatar_id, args.out_dir, args.seconds, source, _progress, crop)


if __name__ == "__main__":
    sys.exit(main())
