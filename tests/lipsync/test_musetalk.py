"""MuseTalk 1.5: export (Whisper encoder, UNet step, VAE decoder and encoder), checkpoints, ONNX
parity, MuseTalk's audio features, Triton batching, and an avatar speaking with it end to end.

No MuseTalk weights can be downloaded here: the networks are the real classes (diffusers'
UNet2DConditionModel and AutoencoderKL, transformers' WhisperEncoder) built from the published
configs (export/musetalk_configs.py) with random weights; reduced configs of the same classes
keep the tests fast, and the full-size export runs under LIVEHUMAN_SLOW=1.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="the export tests need PyTorch (the export extra)")
try:  # pytest puts tests/ on sys.path: tests/triton/ would pass for the `triton` compiler that
    import triton as _triton  # torch._dynamo (imported by diffusers) probes for. Hide it.

    if not hasattr(_triton, "language"):
        sys.modules["triton"] = None
except ImportError:
    pass
pytest.importorskip("diffusers", reason="the MuseTalk export needs diffusers (the export extra)")
pytest.importorskip("transformers", reason="the MuseTalk export needs transformers")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from export import musetalk_configs as configs  # noqa: E402
from export.__main__ import main as export_main  # noqa: E402
from export.musetalk_export import (  # noqa: E402
    CheckpointError,
    build_models,
    load_models,
    positional_encoding,
    wrappers,
)
from orchestrator.lipsync.musetalk import (  # noqa: E402
    MuseTalkClient,
    WhisperWindows,
    frame_windows,
    whisper_log_mel,
)
from orchestrator.triton.client import TensorModelClient  # noqa: E402
from orchestrator.triton.server import EmbeddedTriton  # noqa: E402

NAME = "musetalk"
MAX_BATCH = 16
SLOW = os.environ.get("LIVEHUMAN_SLOW") == "1"


def tiny_models(seed: int = 0):
    return build_models(configs.TINY_UNET, configs.TINY_VAE, configs.TINY_WHISPER, seed)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A repository with the tiny export (random weights, seed 0): <repo>/musetalk* folders,
    and eSpeak and the default lip-sync model for a session."""
    from orchestrator.settings import PROJECT_ROOT

    repo = tmp_path_factory.mktemp("musetalk_repo")
    export_main(["musetalk", "--tiny", "--out", str(repo / NAME), "--max-batch", str(MAX_BATCH),
                 "--no-tensorrt"])
    for name in ("tts_espeak", "lipsync_default"):
        shutil.copytree(PROJECT_ROOT / "model_repository" / name, repo / name)
    return repo


@pytest.fixture(scope="module")
async def musetalk_triton(exported):
    """One embedded Triton on that repository for the module."""
    models = ["tts_espeak", "lipsync_default", NAME, f"{NAME}_audio", f"{NAME}_unet",
              f"{NAME}_vae_decoder"]
    async with EmbeddedTriton(exported, models) as server:
        yield server


def _load_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


# --- MuseTalk's own algorithms, as published, for reference --------------------------------------
def musetalk_whisper_chunk(hidden: torch.Tensor, librosa_length: int, fps: int = 25,
                           left: int = 2, right: int = 2) -> torch.Tensor:
    """MuseTalk's AudioProcessor.get_whisper_chunk after the encoder: hidden [1, T, L, 384]."""
    per_frame = 2 * (left + right + 1)
    multiplier = 50 / fps
    num_frames = math.floor((librosa_length / 16000) * fps)
    actual_length = math.floor((librosa_length / 16000) * 50)
    hidden = hidden[:, :actual_length]
    pad = math.ceil(multiplier)
    hidden = torch.cat([torch.zeros_like(hidden[:, : pad * left]), hidden,
                        torch.zeros_like(hidden[:, : pad * 3 * right])], 1)
    prompts = []
    for frame in range(num_frames):
        index = math.floor(frame * multiplier)
        prompts.append(hidden[:, index : index + per_frame])
    prompts = torch.cat(prompts, dim=0)  # T, 10, L, 384
    return prompts.reshape(prompts.shape[0], -1, prompts.shape[-1])


# --- architecture and checkpoints ---------------------------------------------------------------
def test_the_published_configs_build_the_published_sizes():
    """MuseTalk's UNet is SD 1.x's with 8 input channels and 384-d context (~860 M weights); the
    VAE is sd-vae-ft-mse (~84 M); whisper-tiny's encoder has 4 layers (5 hidden states)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # shapes only: no 3.4 GB of memory
        unet = UNet2DConditionModel(**{k: v for k, v in configs.MUSETALK_UNET.items()
                                       if not k.startswith("_")})
    count = sum(p.numel() for p in unet.parameters())
    assert 800e6 < count < 900e6, count
    assert unet.config.in_channels == configs.UNET_IN_CHANNELS
    assert unet.config.cross_attention_dim == configs.WHISPER_DIM


def test_wrappers_shapes_and_musetalks_inference_steps():
    models = tiny_models()
    graphs = wrappers(models)
    sigs = configs.signatures(NAME, 4, models.hidden_layers)
    rng = np.random.default_rng(0)
    latents = torch.from_numpy(rng.normal(size=(2, 8, 32, 32)).astype(np.float32))
    window = torch.from_numpy(rng.normal(size=(2, *sigs["unet"].inputs[1][1])).astype(np.float32))
    with torch.no_grad():
        pred = graphs["unet"](latents, window)
        # MuseTalk: pe(whisper) then unet(latents, timesteps=[0], encoder_hidden_states=...)
        pe = torch.from_numpy(positional_encoding(window.shape[1]))[None]
        expected = models.unet(latents, torch.tensor([0]), encoder_hidden_states=window + pe).sample
        torch.testing.assert_close(pred, expected)
        image = graphs["decoder"](pred)
        raw = models.vae.decode(pred / configs.VAE_SCALING_FACTOR).sample
        torch.testing.assert_close(image, (raw / 2 + 0.5).clamp(0, 1))
        face = torch.rand(2, 3, 256, 256)
        encoded = graphs["encoder"](face)
        masked = face.clone()
        masked[:, :, 128:] = 0  # MuseTalk's half mask: the lower half blacked out
        mean = models.vae.encode(masked * 2 - 1).latent_dist.mean * configs.VAE_SCALING_FACTOR
        torch.testing.assert_close(encoded[:, :4], mean)
        mel = torch.rand(1, 80, 3000)
        hidden = graphs["audio"](mel)
    assert pred.shape == (2, 4, 32, 32) and image.shape == (2, 3, 256, 256)
    assert encoded.shape == (2, 8, 32, 32)
    assert hidden.shape == (1, 1500, models.hidden_layers, 384)


def test_positional_encoding_is_musetalks():
    table = positional_encoding(50)
    position, i = 7, 10
    assert table[position, 2 * i] == pytest.approx(math.sin(position / 10000 ** (2 * i / 384)),
                                                   abs=1e-5)
    assert table[position, 2 * i + 1] == pytest.approx(
        math.cos(position / 10000 ** (2 * i / 384)), abs=1e-5)


def _write_models_dir(models, folder: Path, unet_format: str, vae_format: str) -> Path:
    """MuseTalk's models/ layout with these weights in the given file formats."""
    from safetensors.torch import save_file

    (folder / "musetalkV15").mkdir(parents=True)
    (folder / "sd-vae").mkdir()
    (folder / "whisper").mkdir()
    (folder / "musetalkV15" / "musetalk.json").write_text(json.dumps(configs.TINY_UNET))
    (folder / "sd-vae" / "config.json").write_text(json.dumps(configs.TINY_VAE))
    (folder / "whisper" / "config.json").write_text(json.dumps(configs.TINY_WHISPER))
    unet_state = models.unet.state_dict()
    if unet_format == "pth":
        torch.save(unet_state, folder / "musetalkV15" / "unet.pth")
    else:
        save_file(unet_state, str(folder / "musetalkV15" / "unet.safetensors"))
    vae_state = models.vae.state_dict()
    if vae_format == "bin":
        torch.save({"state_dict": vae_state}, folder / "sd-vae" / "diffusion_pytorch_model.bin")
    else:
        save_file(vae_state, str(folder / "sd-vae" / "diffusion_pytorch_model.safetensors"))
    # Hugging Face's whisper-tiny: WhisperForConditionalGeneration's keys (model.encoder.*)
    whisper_state = {f"model.encoder.{k}": v for k, v in models.whisper.state_dict().items()}
    whisper_state["proj_out.weight"] = torch.zeros(4, 384)
    torch.save(whisper_state, folder / "whisper" / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("unet_format, vae_format", [("pth", "bin"),
                                                     ("safetensors", "safetensors")])
def test_models_dir_loads_in_every_format(tmp_path, unet_format, vae_format):
    models = tiny_models(seed=3)
    folder = _write_models_dir(models, tmp_path / "models", unet_format, vae_format)
    loaded = load_models(folder)
    for name in ("unet", "vae", "whisper"):
        for key, value in getattr(models, name).state_dict().items():
            assert torch.equal(getattr(loaded, name).state_dict()[key], value), (name, key)


def test_wrong_checkpoints_are_named(tmp_path):
    models = tiny_models()
    folder = _write_models_dir(models, tmp_path / "models", "pth", "bin")
    state = models.unet.state_dict()
    state.pop("conv_in.weight")
    torch.save(state, folder / "musetalkV15" / "unet.pth")
    with pytest.raises(CheckpointError, match=r"1 missing: conv_in.weight"):
        load_models(folder)
    (folder / "musetalkV15" / "unet.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a weights file"):
        load_models(folder)
    shutil.rmtree(folder / "sd-vae")
    with pytest.raises(CheckpointError, match="config.json does not exist"):
        load_models(folder)


# --- the export -------------------------------------------------------------------------------
def test_cli_writes_the_model_folders(exported):
    for suffix in ("_audio", "_unet", "_vae_decoder", "_vae_encoder"):
        folder = exported / f"{NAME}{suffix}"
        assert (folder / "1" / "model.onnx").is_file() and (folder / "1" / "model.py").is_file()
        local = _load_config(folder / "configs" / "local.pbtxt")
        container = _load_config(folder / "config.pbtxt")
        assert local.name == container.name == folder.name
        assert local.backend == "python" and container.platform == "onnxruntime_onnx"
        assert local.HasField("dynamic_batching") and container.HasField("dynamic_batching")
        assert [i.name for i in local.input] == [i.name for i in container.input]
        assert not (folder / "configs" / "tensorrt.pbtxt").exists()  # no TensorRT here
    ensemble = _load_config(exported / NAME / "config.pbtxt")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == MAX_BATCH
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        f"{NAME}_unet", f"{NAME}_vae_decoder"]
    assert ensemble.parameters["audio_model"].string_value == f"{NAME}_audio"


def test_onnx_batches_match_pytorch(exported):
    """Each graph at batch 3 (traced at 1) against PyTorch with the same seeded weights."""
    models = tiny_models(seed=0)
    graphs = wrappers(models)
    sigs = configs.signatures(NAME, MAX_BATCH, models.hidden_layers)
    rng = np.random.default_rng(5)
    for part, sig in sigs.items():
        if part == "audio":
            continue  # 1500 positions: test_whisper_windows_are_musetalks runs it
        feeds = {n: rng.uniform(0, 1, (3, *d)).astype(np.float32) for n, d in sig.inputs}
        session = ort.InferenceSession(str(exported / sig.name / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        got = session.run(None, feeds)[0]
        with torch.no_grad():
            expected = graphs[part](*(torch.from_numpy(a) for a in feeds.values())).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3, err_msg=part)


def test_whisper_log_mel_is_whispers():
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    t = np.arange(16000 * 2) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.normal(size=t.size)).astype(np.float32)
    expected = WhisperFeatureExtractor()(audio, sampling_rate=16000,
                                         return_tensors="np").input_features[0]
    got = whisper_log_mel(audio)
    assert got.shape == expected.shape == (80, 3000)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3)


@pytest.mark.parametrize("samples", [16000, 16000 * 2 + 123, 5 * 16000 + 640])
def test_frame_windows_are_musetalks_whisper_chunks(samples):
    rng = np.random.default_rng(samples)
    positions = 1500
    hidden = rng.normal(size=(positions, 2, 384)).astype(np.float32)
    expected = musetalk_whisper_chunk(torch.from_numpy(hidden)[None], samples).numpy()
    got = frame_windows(hidden[: samples // 320], len(expected))
    np.testing.assert_array_equal(got, expected)
    # a later slice is the same rows
    np.testing.assert_array_equal(frame_windows(hidden[: samples // 320], len(expected), 7),
                                  expected[7:])


# --- Triton -----------------------------------------------------------------------------------
async def test_triton_batches_frames_through_the_ensemble(exported, musetalk_triton):
    """Concurrent requests (as of many sessions) meet in the members' dynamic batchers; the
    ensemble's answer is the UNet then the decoder, as onnxruntime computes them."""
    rng = np.random.default_rng(11)
    requests = [(rng.normal(size=(b, 8, 32, 32)).astype(np.float32),
                 rng.normal(size=(b, 20, 384)).astype(np.float32)) for b in (1, 1, 2, 1, 3, 1, 1, 2)]
    client = MuseTalkClient(musetalk_triton.url, NAME)
    try:
        before = await client._client.get_inference_statistics(f"{NAME}_unet", as_json=True)
        counted = int(before["model_stats"][0].get("inference_count", 0))
        outputs = await asyncio.gather(*(client.infer_face(*r) for r in requests))
        stats = None
        for _ in range(100):
            stats = await client._client.get_inference_statistics(f"{NAME}_unet", as_json=True)
            if int(stats["model_stats"][0].get("inference_count", 0)) >= counted + 12:
                break
            await asyncio.sleep(0.02)
    finally:
        await client.close()
    unet = ort.InferenceSession(str(exported / f"{NAME}_unet" / "1" / "model.onnx"))
    decoder = ort.InferenceSession(str(exported / f"{NAME}_vae_decoder" / "1" / "model.onnx"))
    for (latents, window), out in zip(requests, outputs):
        pred = unet.run(None, {"latents": latents, "whisper": window})[0]
        direct = decoder.run(None, {"pred": pred})[0]
        assert out.shape == (len(latents), 3, 256, 256)
        np.testing.assert_allclose(out, direct, rtol=0, atol=1e-4)
    batch_sizes = [int(b["batch_size"]) for b in stats["model_stats"][0]["batch_stats"]]
    assert max(batch_sizes) > 1, f"no batched execution: {batch_sizes}"


async def test_whisper_windows_are_musetalks(musetalk_triton):
    """The audio path: log-mel -> the exported encoder on Triton -> windows, against MuseTalk's
    own steps in PyTorch (feature extractor, encoder hidden states stacked, get_whisper_chunk)."""
    from transformers import WhisperFeatureExtractor

    models = tiny_models(seed=0)
    rng = np.random.default_rng(2)
    audio = (0.2 * rng.normal(size=16000 * 3 // 2)).astype(np.float32)
    loop = asyncio.get_running_loop()
    client = TensorModelClient(musetalk_triton.url, f"{NAME}_audio", 60.0)
    try:
        features = WhisperWindows(client, loop, models.hidden_layers)
        frames = 37  # 1.48 s at 25 fps
        with pytest.raises(RuntimeError, match="executor"):
            features.windows(audio, frames)
        got = await loop.run_in_executor(None, features.windows, audio, frames)
    finally:
        await client.close()
    mel = WhisperFeatureExtractor()(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        states = models.whisper(mel, output_hidden_states=True).hidden_states
    expected = musetalk_whisper_chunk(torch.stack(states, dim=2), audio.size).numpy()
    assert got.shape == expected.shape == (frames, 10 * models.hidden_layers, 384)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-2)


async def _speaks(base_url: str, services, avatar_id: str) -> float:
    """Mean mouth-window change while speaking against the idle picture (0 = nothing pasted)."""
    from orchestrator.client import AvatarClient, mean_window, mouth_motion, mouth_window

    client = AvatarClient(base_url)
    try:
        await client.connect(avatar=avatar_id)
        await client.wait_for_video(15)
        region = mouth_window(services.avatars.load(avatar_id))
        idle = client.received.video[-5:]
        sent = time.monotonic()
        status, _ = await client.post("/human", type="echo", text="Hello there.")
        assert status == 200
        first = await client.wait_for_speech(sent, 0.01, timeout=60)
        await asyncio.sleep(1.0)
        r = client.received
        speaking = [f for t, f in zip(r.video_times, r.video) if first < t < first + 1.0]
        assert speaking
        return float(mouth_motion(speaking, region, mean_window(idle, region)).mean())
    finally:
        await client.close()


async def test_avatars_speak_through_musetalk(exported, musetalk_triton, tmp_path):
    """`python -m avatars build --model musetalk` (latents from the exported VAE encoder) and a
    LiveTalking MuseTalk folder copied in as it is, each speaking in a session through a real
    server and aiortc peer. Random weights draw noise in the face; the plumbing (family from
    Triton's metadata, Whisper features on Triton, latents per frame, ensemble, paste back with
    the compositor's or the folder's own mask, A/V) is the real one."""
    import cv2
    from musetalk_folders import make_musetalk_folder
    from server_fixtures import refused_offer, running_server, server_settings
    from skimage import data

    from avatars.__main__ import main as avatars_main

    repo = exported
    avatar_dir = tmp_path / "avatars"
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert avatars_main(["build", "--image", str(photo), "--id", "mt", "--seconds", "0.4",
                         "--model", "musetalk", "--model-repository", str(repo),
                         "--out-dir", str(avatar_dir)]) == 0
    manifest = json.loads((avatar_dir / "mt" / "manifest.json").read_text())
    assert manifest["lipsync_model"] == "musetalk" and manifest["crop_size"] == 256
    assert np.load(avatar_dir / "mt" / "latents.npy").shape == (10, 8, 32, 32)
    make_musetalk_folder(avatar_dir / "ltmt")
    shutil.copytree(avatar_dir / "mt", avatar_dir / "nolatents")  # names musetalk, no latents
    manifest["id"] = "nolatents"
    del manifest["model_inputs"]
    (avatar_dir / "nolatents" / "manifest.json").write_text(json.dumps(manifest))

    settings = server_settings(musetalk_triton, avatar_dir=avatar_dir, data_dir=tmp_path,
                               avatar_id="mt", tts="espeak", voice_input=False)
    async with running_server(settings) as (base_url, services):
        for avatar_id in ("mt", "ltmt"):
            changed = await _speaks(base_url, services, avatar_id)
            print(f"{avatar_id}: mouth change {changed:.1f}")
            assert changed > 3, f"{avatar_id}: the MuseTalk output is pasted over the face"
        refused = await refused_offer(base_url, avatar="nolatents")
        assert "400" in refused and "latents" in refused and "nolatents" in refused, refused
        model = await services.lipsync_models.get(NAME)
        assert model.crop_size == 256 and model.features.window_shape == (20, 384)
        for name in (f"{NAME}_unet", f"{NAME}_audio"):
            stats = await model.client._client.get_inference_statistics(name, as_json=True)
            assert int(stats["model_stats"][0]["inference_count"]) > 0, name


# --- the full size -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="the full-size export (~850 M-weight UNet, minutes, ~10 GB "
                    "of memory): LIVEHUMAN_SLOW=1")
def test_the_full_size_export(tmp_path):
    export_main(["musetalk", "--out", str(tmp_path / NAME), "--max-batch", "8",
                 "--no-tensorrt"])
    unet = tmp_path / f"{NAME}_unet" / "1"
    assert (unet / "model.onnx").is_file() and (unet / "model.onnx.data").is_file()
    session = ort.InferenceSession(str(unet / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"latents": np.zeros((2, 8, 32, 32), np.float32),
                             "whisper": np.zeros((2, 50, 384), np.float32)})[0]
    assert out.shape == (2, 4, 32, 32)


def test_fp16_graphs_keep_fp32_tensors(exported, tmp_path):
    """--fp16 (the container's graphs): the UNet and decoder (Resize in their upsamplers, whose
    scales must stay float32) in fp16 inside, fp32 tensors in and out, close to the fp32 graph."""
    from export.musetalk_export import FP16_TOLERANCE, to_fp16

    rng = np.random.default_rng(9)
    feeds = {"unet": {"latents": rng.normal(size=(2, 8, 32, 32)).astype(np.float32),
                      "whisper": rng.normal(size=(2, 20, 384)).astype(np.float32)},
             "decoder": {"pred": rng.normal(size=(2, 4, 32, 32)).astype(np.float32)}}
    for part, folder in (("unet", f"{NAME}_unet"), ("decoder", f"{NAME}_vae_decoder")):
        fp32 = exported / folder / "1" / "model.onnx"
        fp16 = to_fp16(fp32, tmp_path / f"{part}_fp16.onnx")
        full = ort.InferenceSession(str(fp32)).run(None, feeds[part])[0]
        half = ort.InferenceSession(str(fp16)).run(None, feeds[part])[0]
        assert half.dtype == np.float32 and half.shape == full.shape
        assert np.abs(half - full).max() <= FP16_TOLERANCE[part], part
