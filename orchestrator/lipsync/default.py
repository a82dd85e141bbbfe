"""The project's default lip-sync model (`lipsync_default`, built by `python -m export
default-lipsync`)."""

from __future__ import annotations

from ..triton.artifacts import ModelExport

DEFAULT_LIPSYNC_MODEL = "lipsync_default"
DEFAULT_LIPSYNC_EXPORT = ModelExport(DEFAULT_LIPSYNC_MODEL, "export", ("default-lipsync",))
