"""Wav2Lip export: architecture, checkpoints, ONNX parity, the model folder, Triton round trip.

No Wav2Lip weights can be downloaded here: every test uses randomly initialised networks of the
real architecture (BatchNorm statistics calibrated so the outputs are not saturated), and
checkpoint files the test saves itself in the published formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="the export tests need PyTorch (the export extra)")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from export import wav2lip_configs as configs  # noqa: E402
from export.__main__ import main as export_main  # noqa: E402
from export.wav2lip_export import (  # noqa: E402
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    build_tensorrt_plan,
    export_onnx,
    onnxruntime_max_error,
    random_inputs,
    tensorrt_unavailable,
    to_fp16,
)
from export.wav2lip_model import (  # noqa: E402
    LAYOUTS,
    VARIANTS,
    CheckpointError,
    Wav2Lip,
    load_checkpoint,
    random_model,
)
from orchestrator.lipsync.wav2lip import Wav2LipClient as LipSyncClient  # noqa: E402
from orchestrator.triton.server import EmbeddedTriton  # noqa: E402

MODEL = "wav2lip96"
MAX_BATCH = 16
NO_TENSORRT = tensorrt_unavailable()


def _ort_run(path: Path, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["face_out"], {"mel": mel, "face": face})[0]


def _load_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def model96() -> Wav2Lip:
    return random_model(96, seed=3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, str]:
    """The CLI's model folder for a random 96 model, inside a repository of its own; its stdout."""
    repo = tmp_path_factory.mktemp("wav2lip_repository")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        export_main(["wav2lip", "--random-init", "--variant", "96", "--out", str(repo / MODEL),
                     "--max-batch", str(MAX_BATCH)])
    return repo / MODEL, stdout.getvalue()


@pytest.fixture(scope="module")
def checkpoint96(model96, tmp_path_factory) -> Path:
    """A real-format checkpoint: `torch.save(model.state_dict())`."""
    path = tmp_path_factory.mktemp("checkpoints") / "wav2lip.pth"
    torch.save(model96.state_dict(), path)
    return path


# --- architecture -----------------------------------------------------------------------------
def test_variants_match_the_tensor_constants():
    assert tuple(sorted(VARIANTS)) == configs.FACE_SIZES_PX


@pytest.mark.parametrize("face_px", [96, 256])
def test_architecture_names_and_shapes(face_px):
    model = Wav2Lip(face_px).eval()
    keys = set(model.state_dict())
    for key in ["face_encoder_blocks.0.0.conv_block.0.weight",
                "face_encoder_blocks.1.1.conv_block.1.running_var",
                "audio_encoder.0.conv_block.0.weight", "audio_encoder.12.conv_block.1.bias",
                "face_decoder_blocks.0.0.conv_block.0.weight",
                "face_decoder_blocks.1.0.conv_block.0.weight",  # the ConvTranspose2d
                "output_block.0.conv_block.0.weight", "output_block.1.weight"]:
        assert key in keys, key
    stages = len(VARIANTS[face_px].encoder_stages) + 1
    assert f"face_encoder_blocks.{stages - 1}.1.conv_block.0.weight" in keys
    assert not any(k.startswith(f"face_encoder_blocks.{stages}.") for k in keys)
    mel, face = (torch.from_numpy(a) for a in random_inputs(face_px, 1))
    with torch.no_grad():
        out = model(mel, face)
    assert out.shape == (1, 3, face_px, face_px) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_layouts_match_the_names_the_cli_offers():
    assert tuple(LAYOUTS) == configs.LAYOUT_NAMES
    assert VARIANTS[256].name == "livetalking256"  # random 256 weights: LiveTalking's layout


def test_livetalking256_layout():
    """LiveTalking's wav2lip256 generator (its avatars/wav2lip/models/wav2lip_v2.py): both
    512-channel encoder stages (8x8, 4x4) and the 8x8 decoder stage have one residual block,
    the 16x16 decoder stage two; the transposed convs take 1024, 1024, 1024, 768, 512, 320, 160
    channels and the output block 80."""
    state = Wav2Lip(256, "livetalking256").state_dict()

    def convs(prefix: str) -> int:
        return sum(1 for k in state if k.startswith(prefix) and k.endswith("conv_block.0.weight"))

    assert [convs(f"face_encoder_blocks.{i}.") for i in range(8)] == [1, 3, 4, 3, 3, 2, 2, 2]
    assert [convs(f"face_decoder_blocks.{i}.") for i in range(8)] == [1, 2, 2, 3, 3, 3, 3, 3]
    assert [state[f"face_decoder_blocks.{i}.0.conv_block.0.weight"].shape[0]
            for i in range(1, 8)] == [1024, 1024, 1024, 768, 512, 320, 160]
    assert state["face_decoder_blocks.1.0.conv_block.0.weight"].shape[2:] == (4, 4)
    assert state["face_encoder_blocks.7.0.conv_block.0.weight"].shape[2:] == (4, 4)
    assert state["output_block.0.conv_block.0.weight"].shape[1] == 80
    model = Wav2Lip(256, "livetalking256")
    assert sum(p.numel() for p in model.parameters()) == 53_605_683
    assert len(state) == 380


def _livetalking_checkpoint(model: Wav2Lip, path: Path) -> Path:
    """As LiveTalking's training saves it: {"state_dict": module.-prefixed, "optimizer", ...}."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "global_step": 1, "global_epoch": 1}, path)
    return path


@pytest.mark.parametrize("layout", ["livetalking256", "livehuman256"])
def test_256_layout_is_detected_from_the_keys(tmp_path, layout):
    model = Wav2Lip(256, layout).eval()
    path = _livetalking_checkpoint(model, tmp_path / "wav2lip.pth")
    loaded = load_checkpoint(path, 256)
    assert loaded.layout == layout
    mel, face = (torch.from_numpy(a) for a in random_inputs(256, 1, seed=2))
    with torch.no_grad():
        assert torch.equal(loaded(mel, face), model(mel, face))


def test_a_256_checkpoint_of_neither_layout_names_its_keys(tmp_path):
    state = dict(Wav2Lip(256, "livetalking256").state_dict())
    state["sam.sa.conv1.weight"] = torch.zeros(1, 2, 7, 7)  # an attention block we do not have
    state.pop("face_decoder_blocks.2.1.conv_block.0.bias")
    torch.save({"state_dict": state}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "other.pth", 256)
    message = str(caught.value)
    assert "layouts tried: livetalking256, livehuman256; closest: livetalking256" in message
    assert "1 missing key(s): face_decoder_blocks.2.1.conv_block.0.bias" in message
    assert "1 unexpected key(s): sam.sa.conv1.weight" in message
    with pytest.raises(CheckpointError, match=r"\(layout livehuman256\): .*missing key"):
        load_checkpoint(_livetalking_checkpoint(Wav2Lip(256, "livetalking256"),
                                                tmp_path / "lt.pth"), 256, layout="livehuman256")
    with pytest.raises(SystemExit) as exited:
        export_main(["wav2lip", "--random-init", "--variant", "96", "--layout", "livetalking256",
                     "--out", str(tmp_path / "w")])
    assert "--layout livetalking256 is not a 96 layout" in str(exited.value.code)


def test_96_has_the_published_size():
    """The original generator has 36.3 M parameters (352 state dict entries)."""
    model = Wav2Lip(96)
    assert sum(p.numel() for p in model.parameters()) == 36_298_035
    assert len(model.state_dict()) == 352


# --- ONNX ---------------------------------------------------------------------------------------
def test_cli_writes_the_model_folder(exported):
    folder, stdout = exported
    for relative in ["1/model.onnx", "1/model.py", "config.pbtxt", "configs/local.pbtxt"]:
        assert (folder / relative).is_file(), relative
    assert "max abs error" in stdout and "TensorRT plan" in stdout
    error = float(stdout.split("max abs error ")[1].split()[0])
    print(f"wav2lip96 fp32 parity: {error:.3g}")
    assert error <= FP32_TOLERANCE
    graph = onnx.load(str(folder / "1" / "model.onnx"), load_external_data=False)
    assert graph.opset_import[0].version >= 17
    assert [i.name for i in graph.graph.input] == ["mel", "face"]
    assert [o.name for o in graph.graph.output] == ["face_out"]
    for value in [*graph.graph.input, *graph.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    if NO_TENSORRT:
        assert "TensorRT plan skipped" in stdout
        assert not (folder / "configs" / "tensorrt.pbtxt").exists()


def test_configs_declare_the_same_tensors(exported):
    folder, _ = exported
    container = _load_config(folder / "config.pbtxt")
    local = _load_config(folder / "configs" / "local.pbtxt")
    trt = text_format.Parse(configs.tensorrt_config(configs.ModelSignature(MODEL, 96, MAX_BATCH)),
                            model_config_pb2.ModelConfig())
    assert container.platform == "onnxruntime_onnx" and local.backend == "python"
    assert trt.platform == "tensorrt_plan" and trt.default_model_filename == "model.plan"
    for config in (container, local, trt):
        assert config.name == MODEL and config.max_batch_size == MAX_BATCH
        assert list(config.input) == list(local.input)
        assert list(config.output) == list(local.output)
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert [(i.name, list(i.dims)) for i in local.input] == [("mel", [1, 80, 16]),
                                                            ("face", [6, 96, 96])]
    assert [(o.name, list(o.dims)) for o in local.output] == [("face_out", [3, 96, 96])]
    accelerator = container.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt"
    assert [w.batch_size for w in container.model_warmup] == [1, 16]
    assert container.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert local.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_256_onnx_parity(tmp_path):
    model = random_model(256, seed=5)
    path = export_onnx(model, tmp_path / "model.onnx")
    error = onnxruntime_max_error(model, path, batch=2)
    print(f"wav2lip256 fp32 parity: {error:.3g}")
    assert error <= FP32_TOLERANCE


def test_fp16_graph_keeps_fp32_tensors(exported, model96, tmp_path):
    folder, _ = exported
    fp16 = to_fp16(onnx.load(str(folder / "1" / "model.onnx")))
    for value in [*fp16.graph.input, *fp16.graph.output]:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(i.data_type != onnx.TensorProto.FLOAT for i in fp16.graph.initializer)
    path = tmp_path / "model_fp16.onnx"
    onnx.save(fp16, str(path))
    mel, face = random_inputs(96, 2, seed=7)
    full = _ort_run(folder / "1" / "model.onnx", mel, face)
    half = _ort_run(path, mel, face)
    error = float(np.max(np.abs(half - full)))
    print(f"wav2lip96 fp16 vs fp32: {error:.3g}")
    assert half.dtype == np.float32 and error <= FP16_TOLERANCE


@pytest.mark.skipif(NO_TENSORRT is not None,
                    reason=f"TensorRT plan not built here: {NO_TENSORRT}")
def test_tensorrt_plan(exported, tmp_path):
    folder, _ = exported
    plan = build_tensorrt_plan(folder / "1" / "model.onnx", tmp_path / "model.plan", 96,
                               MAX_BATCH, fp16=True)
    assert plan.stat().st_size > 1_000_000


# --- checkpoints --------------------------------------------------------------------------------
@pytest.mark.parametrize("wrapping", ["plain", "module-prefix", "state_dict+module-prefix"])
def test_checkpoint_formats_load(model96, tmp_path, wrapping):
    state = model96.state_dict()
    if "module" in wrapping:  # saved from a DataParallel model
        state = {f"module.{k}": v for k, v in state.items()}
    if wrapping.startswith("state_dict"):  # the training scripts' checkpoint
        state = {"state_dict": state, "global_step": 1000, "global_epoch": 3}
    path = tmp_path / "checkpoint.pth"
    torch.save(state, path)
    loaded = load_checkpoint(path, 96)
    mel, face = (torch.from_numpy(a) for a in random_inputs(96, 1, seed=9))
    with torch.no_grad():
        assert torch.equal(loaded(mel, face), model96(mel, face))


def test_checkpoint_without_batch_counters_loads(model96, tmp_path):
    state = {k: v for k, v in model96.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pth")
    load_checkpoint(tmp_path / "old.pth", 96)


def _small_state(stages: int) -> dict:
    return {f"face_encoder_blocks.{i}.0.conv_block.0.weight": torch.zeros(1) for i in range(stages)}


def test_wrong_checkpoints_are_named(tmp_path, checkpoint96, model96):
    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch weights file"):
        load_checkpoint(not_torch, 96)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pth", 96)
    with pytest.raises(CheckpointError, match=r"is a 96 model, --variant 256 given"):
        load_checkpoint(checkpoint96, 256)
    torch.save(_small_state(8), tmp_path / "w256.pth")
    with pytest.raises(CheckpointError, match=r"is a 256 model, --variant 96 given"):
        load_checkpoint(tmp_path / "w256.pth", 96)
    torch.save({"step": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"missing key\(s\): face_encoder_blocks.0.0.conv"):
        load_checkpoint(tmp_path / "other.pth", 96)
    torch.save({"model": "wav2lip"}, tmp_path / "strings.pth")
    with pytest.raises(CheckpointError, match="holds no state dict of tensors"):
        load_checkpoint(tmp_path / "strings.pth", 96)

    state = dict(model96.state_dict())
    state.pop("output_block.1.bias")
    state["extra_head.weight"] = torch.zeros(3)
    state["output_block.1.weight"] = torch.zeros(3, 16, 1, 1)
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "edited.pth", 96)
    message = str(caught.value)
    assert "1 missing key(s): output_block.1.bias" in message
    assert "1 unexpected key(s): extra_head.weight" in message
    assert "output_block.1.weight [3, 16, 1, 1] (expected [3, 32, 1, 1])" in message


def test_cli_reports_errors(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(SystemExit) as caught:
        export_main(["wav2lip", "--checkpoint", str(bad), "--variant", "96",
                     "--out", str(tmp_path / "w")])
    assert "is not a PyTorch weights file" in str(caught.value.code)
    with pytest.raises(SystemExit) as caught:
        export_main(["wav2lip", "--random-init", "--variant", "96", "--out",
                     str(tmp_path / "w"), "--name", "other"])
    assert "differs from the folder name" in str(caught.value.code)
    assert not (tmp_path / "w").exists()


# --- Triton -------------------------------------------------------------------------------------
async def test_triton_serves_the_export(exported):
    folder, _ = exported
    rng_inputs = [random_inputs(96, batch, seed=20 + batch) for batch in (1, 3, 4)]
    async with EmbeddedTriton(folder.parent, [MODEL]) as server:
        client = LipSyncClient(server.url, model=MODEL)
        try:
            outputs = await asyncio.gather(*(client.infer_face(m, f) for m, f in rng_inputs))
        finally:
            await client.close()
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    for (mel, face), out in zip(rng_inputs, outputs):
        assert out.dtype == np.float32 and out.shape == (mel.shape[0], 3, 96, 96)
        direct = session.run(["face_out"], {"mel": mel, "face": face})[0]
        np.testing.assert_allclose(out, direct, rtol=0, atol=1e-4)


async def test_an_avatar_speaks_through_the_exported_wav2lip(exported, tmp_path):
    """The orchestrator end to end on a Wav2Lip avatar: random weights draw noise in the lower
    face, but the plumbing (model family from Triton's metadata, BGR masked + reference input,
    batching, paste back, A/V) is the real one."""
    import json
    import shutil
    import time
    from dataclasses import replace

    from aiohttp import web
    from skimage import data

    from avatars.package import build_from_image
    from orchestrator.app import create_app
    from orchestrator.client import AvatarClient, mean_window, mouth_motion, mouth_window
    from orchestrator.services import start_services
    from orchestrator.settings import PROJECT_ROOT, Settings

    folder, _ = exported
    repo = folder.parent
    for name in ("tts_espeak", "lipsync_default"):
        if not (repo / name).exists():
            shutil.copytree(PROJECT_ROOT / "model_repository" / name, repo / name)
    avatar_dir = tmp_path / "avatars"
    package = build_from_image(data.astronaut(), "w2l", avatar_dir, seconds=1.2)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["lipsync_model"] = MODEL
    (package / "manifest.json").write_text(json.dumps(manifest))

    async with EmbeddedTriton(repo, ["tts_espeak", "lipsync_default", MODEL]) as server:
        # This repository holds eSpeak and the lip-sync models only: eSpeak speaks, no voice input.
        settings = replace(Settings(), triton_url=server.url, ice_hosts=("127.0.0.1",),
                           avatar_dir=avatar_dir, data_dir=tmp_path, avatar_id="w2l", tts="espeak",
                           voice_input=False)
        services = await start_services(settings)
        runner = web.AppRunner(create_app(settings, services))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        client = AvatarClient(f"http://127.0.0.1:{runner.addresses[0][1]}")
        try:
            await client.connect()
            await client.wait_for_video(10)
            region = mouth_window(services.avatars.load("w2l"))
            idle = client.received.video[-5:]
            sent = time.monotonic()
            status, _ = await client.post("/human", type="echo", text="Wav2Lip speaking here.")
            assert status == 200
            first = await client.wait_for_speech(sent, 0.01)
            await asyncio.sleep(1.0)
            r = client.received
            speaking = [f for t, f in zip(r.video_times, r.video) if first < t < first + 1.0]
            assert speaking and speaking[0].shape == (512, 512, 3)
            changed = mouth_motion(speaking, region, mean_window(idle, region))
            assert changed.mean() > 5, "the Wav2Lip output is pasted over the lower face"
            stats = await services.lipsync_models.get(MODEL)
            metadata = await stats.client._client.get_inference_statistics(MODEL, as_json=True)
            assert int(metadata["model_stats"][0]["inference_count"]) > 0
        finally:
            await client.close()
            await runner.cleanup()
            await services.close()
