"""The lip-sync models on Triton (model_repository's adapter and configs, lipsync/default.py's
client): dynamic batching, shape checks, the default model against onnxruntime."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import LIPSYNC_MODEL, LIPSYNC_ONNX, MODEL_REPOSITORY, TTS_MODEL
from tiny_lipsync import TINY_CROP_PX, TINY_MODEL, _tiny_expected, _tiny_inputs

from orchestrator.lipsync.default import DefaultLipSyncClient as LipSyncClient

CONCURRENT_REQUESTS = 16


async def test_adapter_batches_concurrent_requests(tiny_triton):
    rng = np.random.default_rng(0)
    requests = [_tiny_inputs(rng, 1) for _ in range(CONCURRENT_REQUESTS)]
    client = LipSyncClient(tiny_triton.url, model=TINY_MODEL)
    try:
        results = await asyncio.gather(*(client.infer(*r) for r in requests))
        # Triton counts an execution after its responses are out: poll until all are counted.
        for _ in range(100):
            stats = await client._client.get_inference_statistics(TINY_MODEL, as_json=True)
            if int(stats["model_stats"][0].get("inference_count", 0)) >= CONCURRENT_REQUESTS:
                break
            await asyncio.sleep(0.02)
    finally:
        await client.close()
    for request, result in zip(requests, results):
        assert result.dtype == np.float32 and result.shape == (1, 3, TINY_CROP_PX, TINY_CROP_PX)
        np.testing.assert_allclose(result, _tiny_expected(*request), rtol=1e-5, atol=1e-5)
    model_stats = stats["model_stats"][0]
    assert int(model_stats["inference_count"]) >= CONCURRENT_REQUESTS
    assert int(model_stats["execution_count"]) < int(model_stats["inference_count"])
    batch_sizes = [int(b["batch_size"]) for b in model_stats["batch_stats"]]
    assert max(batch_sizes) > 1, f"no batched execution: {model_stats['batch_stats']}"


async def test_adapter_splits_mixed_batch_sizes(tiny_triton):
    rng = np.random.default_rng(1)
    requests = [_tiny_inputs(rng, b) for b in (1, 3, 2, 5, 1, 4)]
    client = LipSyncClient(tiny_triton.url, model=TINY_MODEL)
    try:
        results = await asyncio.gather(*(client.infer(*r) for r in requests))
    finally:
        await client.close()
    for request, result in zip(requests, results):
        np.testing.assert_allclose(result, _tiny_expected(*request), rtol=1e-5, atol=1e-5)


async def test_lipsync_client_checks_shapes(tiny_triton):
    client = LipSyncClient(tiny_triton.url, model=TINY_MODEL)
    mel, face, mouth = _tiny_inputs(np.random.default_rng(2), 2)
    try:
        with pytest.raises(ValueError, match="mel"):
            await client.infer(mel[:, 0], face, mouth)
        with pytest.raises(ValueError, match="batch sizes differ"):
            await client.infer(mel, face[:1], mouth)
    finally:
        await client.close()


async def test_lipsync_default_shapes(triton):
    if not LIPSYNC_ONNX.exists():
        pytest.skip(f"{LIPSYNC_ONNX} missing and export.default_lipsync not importable")
    rng = np.random.default_rng(3)
    batch = 3
    mel = rng.uniform(-4, 2, (batch, 1, 80, 16)).astype(np.float32)
    face = rng.uniform(0, 1, (batch, 3, 128, 128)).astype(np.float32)
    mouth = np.tile(np.array([0.5, 0.6, 0.4, 0.1], np.float32), (batch, 1))  # lips at 60 %
    client = LipSyncClient(triton.url)
    try:
        out = await client.infer(mel, face, mouth)
    finally:
        await client.close()
    assert out.dtype == np.float32 and out.shape == (batch, 3, 128, 128)
    assert np.all(np.isfinite(out))
    session = ort.InferenceSession(str(LIPSYNC_ONNX), providers=["CPUExecutionProvider"])
    direct = session.run(["face_out"], {"mel": mel, "face": face, "mouth": mouth})[0]
    np.testing.assert_allclose(out, direct, rtol=1e-4, atol=1e-4)


def test_configs_declare_the_same_tensors():
    """config.pbtxt (container) and configs/local.pbtxt (embedded) must not drift apart."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def load(path: Path):
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())

    container = load(MODEL_REPOSITORY / LIPSYNC_MODEL / "config.pbtxt")
    local = load(MODEL_REPOSITORY / LIPSYNC_MODEL / "configs" / "local.pbtxt")
    assert container.platform == "onnxruntime_onnx" and local.backend == "python"
    assert container.max_batch_size == local.max_batch_size == 64
    assert list(container.input) == list(local.input)
    assert list(container.output) == list(local.output)
    assert container.HasField("dynamic_batching") and local.HasField("dynamic_batching")
    tts = load(MODEL_REPOSITORY / TTS_MODEL / "config.pbtxt")
    assert tts.backend == "python" and tts.max_batch_size == 0
    assert [i.name for i in tts.input] == ["text", "voice"]
    assert [o.name for o in tts.output] == ["audio", "phonemes", "phoneme_times", "words",
                                           "word_times"]
