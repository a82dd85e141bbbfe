"""python -m avatars build (--image face.jpg | --video me.mp4) --id NAME [--model ultralight |
--model musetalk [--model-repository DIR]] | build-default | import-livetalking FOLDER --id NAME"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import musetalk_avatar
from .face_detection import FaceError
from .livetalking import import_folder
from .model_crops import MODEL_CROPS, model_crop
from .package import build_from_image, read_image
from .video import MAX_LONG_SIDE_PX, MAX_SECONDS, build_from_video

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "data" / "avatars"
DEFAULT_MODEL_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


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
    build.add_argument("--model", choices=sorted({*MODEL_CROPS, musetalk_avatar.MUSETALK_MODEL}),
                       default="default", help="the lip-sync model it speaks with: default; "
                       "ultralight (LiveTalking's crop; speak with a UNet trained on this person); "
                       "musetalk (each frame's latents from the exported VAE encoder)")
    build.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY,
                       help="where `python -m export musetalk` wrote the models (--model musetalk)")
    default = sub.add_parser("build-default", help="build 'default' from the public-domain "
                             "NASA portrait shipped with scikit-image")
    for p in (build, default):
        p.add_argument("--seconds", type=float, default=4.0,
                       help="length of the idle loop made from a photo")
    imported = sub.add_parser("import-livetalking", help="convert a LiveTalking avatar folder "
                              "(wav2lip or ultralight: full_imgs/, face_imgs/, coords.pkl; musetalk: full_imgs/, "
                              "mask/, latents.pt, coords.pkl, mask_coords.pkl), keeping its face "
                              "boxes; the kind is found from its files")
    imported.add_argument("folder", type=Path, help="e.g. LiveTalking/data/avatars/wav2lip256_avatar1")
    imported.add_argument("--id", required=True, help="avatar id (letters, digits, _ and -)")
    imported.add_argument("--lipsync-model", help="the Triton model the avatar speaks with "
                          "(default lipsync_default, musetalk for a MuseTalk folder, ultralight for an "
                          "Ultralight folder; e.g. "
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
        if musetalk_avatar.is_musetalk_folder(args.folder):
            return musetalk_avatar.import_folder(args.folder, args.id, args.out_dir,
                                                 args.lipsync_model, _progress)
        return import_folder(args.folder, args.id, args.out_dir, args.lipsync_model, _progress)
    crop = (model_crop(args.model)
            if args.command == "build" and args.model in MODEL_CROPS else None)
    if args.command == "build" and args.model == musetalk_avatar.MUSETALK_MODEL:
        musetalk_avatar.encoder_onnx(args.model_repository)  # before the build: fail early
    if args.command == "build" and args.video:
        path = build_from_video(args.video, args.id, args.out_dir, _progress, crop=crop)
    elif args.command == "build":
        path = build_from_image(read_image(args.image), args.id, args.out_dir, args.seconds,
                                str(args.image), _progress, crop)
    else:
        from skimage import data

        return build_from_image(data.astronaut(), "default", args.out_dir, args.seconds,
                                "skimage.data.astronaut (NASA, public domain)", _progress)
    if args.model == musetalk_avatar.MUSETALK_MODEL:
        path = musetalk_avatar.add_musetalk(path, args.model_repository, progress=_progress)
    return path


if __name__ == "__main__":
    sys.exit(main())
