"""Generated artifacts the embedded defaults need: what the engines declare (`Artifact`s: the
lip-sync and VAD models they export, e.g. `lipsync/default.py`, a packaged Piper voice) and the
default avatar.

`make run` builds them; a server started another way builds what is missing before Triton starts.
They are built by the project's own CLIs in a child process (argument lists, no shell).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..settings import Settings

log = logging.getLogger(__name__)

DEFAULT_AVATAR_ID = "default"


@dataclass(frozen=True)
class Artifact:
    """A generated file an engine needs, and how to build it: `python -m <module> <args>`."""

    path: Path
    module: str
    args: tuple[str, ...]


async def ensure_default_artifacts(settings: Settings, with_models: bool,
                                   engine_artifacts: Sequence[Artifact] = ()) -> None:
    """Build what is missing, in order: `engine_artifacts` (the configured engines' models) only
    when this process serves the repository itself, then the default avatar. RuntimeError with
    the tail of a build's output when one fails."""
    for artifact in engine_artifacts:
        if with_models and not artifact.path.exists():
            await _run_module(artifact.module, *artifact.args)
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
