"""Triton models the project builds itself: each engine module declares its `ModelExport` next to
its model name, and start-up builds the missing ones (triton/artifacts.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .artifacts import Artifact


@dataclass(frozen=True)
class ModelExport:
    """A Triton model the project builds itself: `python -m <module> <*args> --out <onnx>`,
    with <onnx> the model's version-1 `model.onnx` in the repository."""

    model: str  # the Triton model name (its folder in the repository)
    module: str  # the CLI module, e.g. "export"
    args: tuple[str, ...]  # its subcommand and arguments before --out

    def onnx_path(self, repository: Path) -> Path:
        return repository / self.model / "1" / "model.onnx"

    def artifact(self, repository: Path) -> Artifact:
        """What start-up builds when the model is missing from `repository`."""
        onnx = self.onnx_path(repository)
        return Artifact(onnx, self.module, (*self.args, "--out", str(onnx)))
