"""Ultralight export: the UNet's architecture and LiveTalking's checkpoint names, checkpoint
formats, HuBERT folders, ONNX parity with a dynamic batch, the model folders and their configs,
and the ensemble on Triton (batching, the family's render).

No Ultralight or HuBERT weights can be downloaded here: random weights of the real UNet (its
real size), and HuBERT of the real class and hidden size with one layer (`tiny`); the real
HuBERT large is exported in the slow test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="the export tests need PyTorch (the export extra)")
pytest.importorskip("transformers", reason="HuBERT needs transformers (the export extra)")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402
from ultralight_fixtures import MAX_BATCH, ULTRALIGHT_MODEL  # noqa: E402

from export import ultralight_configs as configs  # noqa: E402
from export.ultralight_export import (  # noqa: E402
    AUDIO_TOLERANCE,
    UNET_TOLERANCE,
    ExportError,
    export_repository,
    random_audio,
    random_face,
    random_features,
)
from export.ultralight_model import (  # noqa: E402
    UltralightAudio,
    UltralightUNet,
    check_window,
    load_hubert,
    load_unet,
    random_hubert,
    random_unet,
)
from export.wav2lip_export import tensorrt_unavailable  # noqa: E402
from export.wav2lip_model import CheckpointError  # noqa: E402
from orchestrator.lipsync.models import LipSyncModels  # noqa: E402
from orchestrator.lipsync.ultralight import (  # noqa: E402
    CROP_PX,
    UltralightClient,
    UltralightSync,
    prepare,
)
from orchestrator.triton.server import EmbeddedTriton  # noqa: E402

MODEL = ULTRALIGHT_MODEL
CONCURRENT_REQUESTS = 12
NO_TENSORRT = tensorrt_unavailable()
SLOW = os.environ.get("LIVEHUMAN_SLOW") == "1"


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def unet(ultralight_export) -> UltralightUNet:
    return ultralight_export.unet


@pytest.fixture(scope="module")
def hubert(ultralight_export):
    return ultralight_export.hubert


@pytest.fixture(scope="module")
def exported(ultralight_export) -> tuple[Path, str]:
    """The CLI's three model folders, from LiveTalking's files: the UNet as the avatar folder's
    `ultralight.pth`, HuBERT as a Hugging Face folder (tests/support/ultralight_fixtures.py)."""
    return ultralight_export.repository, ultralight_export.stdout


# --- architecture and checkpoints -------------------------------------------------------------
def test_unet_has_livetalkings_names_and_shapes(unet):
    state = unet.state_dict()
    for key in ["inc.inconv.0.conv.0.weight", "inc.inconv.0.conv.1.running_var",
                "down1.maxpool_conv.0.double_conv.0.conv.3.weight",
                "down4.maxpool_conv.0.double_conv.1.conv.7.bias",
                "audio_model.conv1.conv.0.weight", "audio_model.conv3.weight",
                "audio_model.bn3.running_mean", "audio_model.conv5.bias",
                "audio_model.conv7.conv.7.weight", "fuse_conv.0.double_conv.0.conv.0.weight",
                "fuse_conv.1.double_conv.1.conv.6.weight", "up1.conv.double_conv.0.conv.0.weight",
                "up4.conv.double_conv.1.conv.7.running_var", "outc.conv.weight", "outc.conv.bias"]:
        assert key in state, key
    assert state["inc.inconv.0.conv.0.weight"].shape == (12, 6, 1, 1)  # 6 channels, expand 2
    assert state["fuse_conv.0.double_conv.0.conv.0.weight"].shape == (2048, 1024, 1, 1)
    assert state["audio_model.conv5.weight"].shape == (512, 256, 3, 3)
    assert state["up1.conv.double_conv.0.conv.0.weight"].shape == (1024, 512, 1, 1)
    assert state["outc.conv.weight"].shape == (3, 32, 1, 1)
    assert len(state) == 484
    assert sum(p.numel() for p in unet.parameters()) == 12_159_591
    with torch.no_grad():
        out = unet(torch.from_numpy(random_face(2)), torch.from_numpy(random_features(2)))
    assert out.shape == (2, 3, 160, 160) and 0.0 <= float(out.min()) <= float(out.max()) <= 1.0
    assert float(out.std()) > 0.01, "calibrated: the sigmoid does not saturate"


@pytest.mark.parametrize("name", ["ultralight.pth", "pytorch_model.bin", "model.safetensors"])
def test_unet_checkpoints_load_in_every_format(unet, tmp_path, name):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    elif name == "pytorch_model.bin":  # DataParallel-trained: module. prefixes
        torch.save({f"module.{k}": v for k, v in unet.state_dict().items()}, path)
    else:
        torch.save(unet.state_dict(), path)  # what LiveTalking loads (torch.save(state_dict))
    loaded = load_unet(path)
    face, feats = torch.from_numpy(random_face(1, 5)), torch.from_numpy(random_features(1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(face, feats), unet(face, feats), rtol=0, atol=0)


def test_a_wrong_checkpoint_names_its_keys(unet, tmp_path):
    state = unet.state_dict()
    del state["outc.conv.bias"]
    state["audio_model.conv1.conv.0.weight"] = torch.zeros(64, 16, 1, 1)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): outc.conv.bias.*1 unexpected"
                       r" key\(s\): extra.weight.*audio_model.conv1.conv.0.weight \[64, 16, 1, 1\]"):
        load_unet(tmp_path / "bad.pth")
    (tmp_path / "text.safetensors").write_text("not a tensor file")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_unet(tmp_path / "text.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_unet(tmp_path / "missing.pth")


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_hubert_loads_from_a_hugging_face_folder(hubert, tmp_path, safe):
    folder = tmp_path / "hubert"
    if safe:
        hubert.save_pretrained(folder)
        assert (folder / "model.safetensors").is_file()
    else:  # hubert-large-ls960-ft's own file: HubertForCTC's keys (hubert., lm_head.)
        hubert.config.save_pretrained(folder)
        state = {f"hubert.{k}": v for k, v in hubert.state_dict().items()}
        state |= {"lm_head.weight": torch.zeros(32, 1024), "lm_head.bias": torch.zeros(32)}
        torch.save(state, folder / "pytorch_model.bin")
    (tmp_path / "hubert" / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": False, "feature_extractor_type": "Wav2Vec2FeatureExtractor",
         "sampling_rate": 16000}))
    loaded, normalize = load_hubert(tmp_path / "hubert")
    assert normalize is False
    audio = torch.from_numpy(random_audio(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio).last_hidden_state,
                                   hubert(audio).last_hidden_state)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hubert(tmp_path)


def test_audio_model_takes_the_middle_frames_of_normalised_audio(hubert):
    check_window(hubert)
    audio = torch.from_numpy(random_audio(2)) * 3 + 0.1
    with torch.no_grad():
        got = UltralightAudio(hubert).eval()(audio)
        normalised = [(a - a.mean()) / torch.sqrt(a.var(unbiased=False) + 1e-7) for a in audio]
        hidden = hubert(torch.stack(normalised)).last_hidden_state
    assert got.shape == (2, 16, 32, 32)
    torch.testing.assert_close(got, hidden[:, 8:24].reshape(2, 16, 32, 32), rtol=1e-4,
                               atol=1e-4)


# --- the model folders ------------------------------------------------------------------------
def test_cli_writes_the_three_models(exported):
    repo, stdout = exported
    parity = dict(line.rsplit(" max abs error ", 1) for line in stdout.splitlines()
                  if "max abs error" in line)
    [unet_error, audio_error] = (float(v) for v in parity.values())
    assert unet_error <= UNET_TOLERANCE and audio_error <= AUDIO_TOLERANCE
    for folder in (MODEL + "_unet", configs.AUDIO_MODEL):
        assert (repo / folder / "1" / "model.onnx").is_file()
        assert (repo / folder / "1" / "model.py").is_file()
        container = _config(repo / folder / "config.pbtxt")
        local = _config(repo / folder / "configs" / "local.pbtxt")
        assert container.name == local.name == folder
        assert container.max_batch_size == local.max_batch_size == MAX_BATCH
        assert [i.name for i in container.input] == [i.name for i in local.input]
        assert local.backend == "python" and container.platform == "onnxruntime_onnx"
        assert local.dynamic_batching.max_queue_delay_microseconds > 0
        assert container.dynamic_batching.preferred_batch_size == [8, 16]
        assert [w.batch_size for w in container.model_warmup] == [1, 16]
    ensemble = _config(repo / MODEL / "config.pbtxt")
    assert ensemble.platform == "ensemble" and (repo / MODEL / "1").is_dir()
    assert [i.name for i in ensemble.input] == ["audio", "face"]
    assert list(ensemble.input[0].dims) == [configs.AUDIO_WINDOW_SAMPLES]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [configs.AUDIO_MODEL, MODEL + "_unet"]
    if NO_TENSORRT:
        assert f"TensorRT plan skipped: {NO_TENSORRT}" in stdout
        assert not (repo / f"{MODEL}_unet" / "configs" / "tensorrt.pbtxt").exists()


def test_onnx_matches_pytorch_at_other_batch_sizes(exported, unet, hubert):
    """Traced at batch 1, run at 3: the batch dimension is dynamic; both graphs match PyTorch."""
    repo, _ = exported
    face, feats, audio = random_face(3, 7), random_features(3, 7), random_audio(3, 7)
    session = ort.InferenceSession(str(repo / f"{MODEL}_unet" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(["face_out"], {"face": face, "features": feats})[0]
    with torch.no_grad():
        expected = unet(torch.from_numpy(face), torch.from_numpy(feats)).numpy()
        expected_feats = UltralightAudio(hubert)(torch.from_numpy(audio)).numpy()
    np.testing.assert_allclose(got, expected, atol=UNET_TOLERANCE)
    session = ort.InferenceSession(str(repo / configs.AUDIO_MODEL / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["features"], {"audio": audio})[0], expected_feats,
                               atol=AUDIO_TOLERANCE)


def test_a_second_avatar_reuses_the_audio_model(exported, unet, tmp_path):
    with pytest.raises(ExportError, match="give --hubert"):
        export_repository(tmp_path / "other", unet, None, tensorrt=False)
    shutil.copytree(exported[0] / configs.AUDIO_MODEL, tmp_path / configs.AUDIO_MODEL)
    report = export_repository(tmp_path / "anna", unet, None, max_batch=8, tensorrt=False)
    assert report.parity_unet <= UNET_TOLERANCE
    assert report.parity_audio is None and "ultralight_audio kept as it was" in report.notes
    assert (tmp_path / "anna_unet" / "1" / "model.onnx").is_file()
    with pytest.raises(ExportError, match="taken"):
        export_repository(tmp_path / "x_unet", unet, None, tensorrt=False)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="HuBERT large (1.3 GB of ONNX): LIVEHUMAN_SLOW=1")
def test_full_size_hubert_large_exports(tmp_path):
    """The real HuBERT large (24 layers) exports and matches PyTorch."""
    report = export_repository(tmp_path / MODEL, random_unet(), UltralightAudio(random_hubert()),
                               max_batch=8, tensorrt=False)
    assert report.parity_audio <= AUDIO_TOLERANCE


# --- Triton -----------------------------------------------------------------------------------
async def test_ensemble_batches_concurrent_sessions_frames(exported):
    repo, _ = exported
    rng = np.random.default_rng(0)
    requests = [((0.1 * rng.standard_normal((1, configs.AUDIO_WINDOW_SAMPLES))).astype(np.float32),
                 prepare(rng.integers(0, 256, (1, CROP_PX, CROP_PX, 3), dtype=np.uint8)))
                for _ in range(CONCURRENT_REQUESTS)]
    unet_session = ort.InferenceSession(str(repo / f"{MODEL}_unet" / "1" / "model.onnx"),
                                        providers=["CPUExecutionProvider"])
    audio_session = ort.InferenceSession(str(repo / configs.AUDIO_MODEL / "1" / "model.onnx"),
                                         providers=["CPUExecutionProvider"])
    async with EmbeddedTriton(repo, [MODEL]) as server:  # (eSpeak and the default load too)
        client = UltralightClient(server.url, model=MODEL)
        try:
            results = await asyncio.gather(*(client.infer_face(*r) for r in requests))
            stats = {}
            for name in (f"{MODEL}_unet", configs.AUDIO_MODEL):
                for _ in range(100):  # an execution is counted after its responses are out
                    found = await client._client.get_inference_statistics(name, as_json=True)
                    stats[name] = found["model_stats"][0]
                    if int(stats[name].get("inference_count", 0)) >= CONCURRENT_REQUESTS:
                        break
                    await asyncio.sleep(0.02)
            with pytest.raises(ValueError, match="audio must be"):
                await client.infer_face(requests[0][0][:, :100], requests[0][1])

            models = LipSyncModels(server.url)
            try:
                model = await models.get(MODEL)
                assert isinstance(model, UltralightSync) and model.crop_size == CROP_PX
                assert not model.silence_returns_face
                crops = rng.integers(0, 256, (3, CROP_PX, CROP_PX, 3), dtype=np.uint8)
                windows = np.zeros((3, configs.AUDIO_WINDOW_SAMPLES), np.float32)
                out = await models.render(model, windows, np.ones(3, bool), crops,
                                          np.zeros((3, 4), np.float32))
                assert out.shape == crops.shape and out.dtype == np.uint8
                assert (out[:, :4] == crops[:, :4]).all(), "the 4 px border is theirs"
            finally:
                await models.close()
        finally:
            await client.close()
    for (audio, face), result in zip(requests, results):
        feats = audio_session.run(["features"], {"audio": audio})[0]
        expected = unet_session.run(["face_out"], {"face": face, "features": feats})[0]
        assert result.shape == (1, 3, 160, 160)
        np.testing.assert_allclose(result, expected, atol=1e-4)  # batched kernels differ
    for name, model_stats in stats.items():
        assert int(model_stats["inference_count"]) >= CONCURRENT_REQUESTS, name
        assert int(model_stats["execution_count"]) < int(model_stats["inference_count"]), name
