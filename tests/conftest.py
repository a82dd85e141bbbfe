"""Shared fixtures: one embedded Triton for the whole test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.triton_server import EmbeddedTriton

MODEL_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
LIPSYNC_ONNX = MODEL_REPOSITORY / "lipsync_default" / "1" / "model.onnx"
TTS_MODEL = "tts_espeak"
LIPSYNC_MODEL = "lipsync_default"


def ensure_lipsync_onnx() -> bool:
    """Generate the default lip-sync ONNX when missing (as `make artifacts` does); False if the
    exporter is not available."""
    if LIPSYNC_ONNX.exists():
        return True
    try:
        from export.default_lipsync import write_model
    except ImportError:
        return False
    partial = LIPSYNC_ONNX.with_name(f".model.onnx.{os.getpid()}.tmp")
    write_model(partial)
    os.replace(partial, LIPSYNC_ONNX)  # atomic: a concurrent reader never sees half a file
    return True


@pytest.fixture(scope="session")
async def triton():
    """EmbeddedTriton on the project's model_repository, started once per test session.

    Waits for `tts_espeak`, and for `lipsync_default` when its ONNX exists (or can be built).
    """
    models = [TTS_MODEL] + ([LIPSYNC_MODEL] if ensure_lipsync_onnx() else [])
    server = EmbeddedTriton(MODEL_REPOSITORY, models)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
def no_paths_disclosed():
    """Every response of a test server (server_fixtures.disclosure_guard) is free of absolute
    server paths: error messages name fields and files, never the server's directories."""
    import server_fixtures

    del server_fixtures.DISCLOSURES[:]
    yield
    assert not server_fixtures.DISCLOSURES, server_fixtures.DISCLOSURES
