"""The embedded Triton, the model repository's models and the typed clients, over real gRPC."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc.aio as grpcclient
from conftest import LIPSYNC_MODEL, LIPSYNC_ONNX, MODEL_REPOSITORY, TTS_MODEL
from onnx import TensorProto, helper

from orchestrator.lipsync.default import DefaultLipSyncClient as LipSyncClient
from orchestrator.triton.client import TritonServerClient
from orchestrator.triton.server import EmbeddedTriton, TritonStartError, wait_models_ready
from orchestrator.tts import UnknownVoice
from orchestrator.tts.espeak import ESpeakEngine, SpeechAudio

PROJECT_ROOT = MODEL_REPOSITORY.parent
SAMPLE_RATE_HZ = 16000
SPEECH_RMS_MIN = 0.02  # eSpeak speaks at about 0.08-0.1 RMS; silence is 0
TINY_MODEL = "tiny_lipsync"
TINY_CROP_PX = 8
CONCURRENT_REQUESTS = 16
PROCESS_GONE_TIMEOUT_S = 10.0
TEN_WORDS = "The quick brown fox jumps over the lazy sleeping dog."


# --- helpers ------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _wait_gone(pids: list[int], timeout_s: float = PROCESS_GONE_TIMEOUT_S) -> list[int]:
    """The pids still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _tiny_lipsync_onnx() -> onnx.ModelProto:
    """face_out = face * 0.5 + mean(mel) + mean(mouth), per batch item; lipsync_default's I/O."""
    b = "batch"
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["face", "half"], ["scaled"]),
            helper.make_node("ReduceMean", ["mel"], ["mel_mean"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("ReduceMean", ["mouth"], ["mouth_mean2"], axes=[1], keepdims=1),
            helper.make_node("Unsqueeze", ["mouth_mean2", "axes23"], ["mouth_mean"]),
            helper.make_node("Add", ["scaled", "mel_mean"], ["with_mel"]),
            helper.make_node("Add", ["with_mel", "mouth_mean"], ["face_out"]),
        ],
        "tiny_lipsync",
        [
            helper.make_tensor_value_info("mel", TensorProto.FLOAT, [b, 1, 80, 16]),
            helper.make_tensor_value_info("face", TensorProto.FLOAT, [b, 3, "size", "size"]),
            helper.make_tensor_value_info("mouth", TensorProto.FLOAT, [b, 4]),
        ],
        [helper.make_tensor_value_info("face_out", TensorProto.FLOAT, [b, 3, "size", "size"])],
        initializer=[
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("axes23", TensorProto.INT64, [2], [2, 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _tiny_expected(mel: np.ndarray, face: np.ndarray, mouth: np.ndarray) -> np.ndarray:
    return (face * 0.5 + mel.mean(axis=(1, 2, 3))[:, None, None, None]
            + mouth.mean(axis=1)[:, None, None, None]).astype(np.float32)


def _tiny_inputs(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, ...]:
    return (rng.uniform(-4, 4, (batch, 1, 80, 16)).astype(np.float32),
            rng.uniform(0, 1, (batch, 3, TINY_CROP_PX, TINY_CROP_PX)).astype(np.float32),
            rng.uniform(0, 1, (batch, 4)).astype(np.float32))


def _with_name(config: str, name: str, size: int) -> str:
    """lipsync_default's config text for the tiny model: its name, its crop size."""
    return (config.replace(f'name: "{LIPSYNC_MODEL}"', f'name: "{name}"')
            .replace("128, 128", f"{size}, {size}"))


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


# --- the server -----------------------------------------------------------------------------------
async def test_server_ready_and_models_listed(triton):
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        index = await client.get_model_repository_index(as_json=True)
        states = {m["name"]: m.get("state") for m in index["models"]}
        assert states[TTS_MODEL] == "READY"
        assert LIPSYNC_MODEL in states
        for model in triton.models:
            assert await client.is_model_ready(model)
        # tts_espeak has only config.pbtxt: --model-config-name=local falls back to it
        tts_config = (await client.get_model_config(TTS_MODEL, as_json=True))["config"]
        assert tts_config["backend"] == "python" and tts_config.get("max_batch_size", 0) == 0
    finally:
        await client.close()
    with urllib.request.urlopen(f"{triton.http_url}/v2/health/ready", timeout=5) as response:
        assert response.status == 200
    assert triton.url.startswith("127.0.0.1:")


async def test_local_config_selected_over_container_config(tiny_triton):
    """config.pbtxt says onnxruntime_onnx; the embedded server reads configs/local.pbtxt."""
    client = grpcclient.InferenceServerClient(tiny_triton.url)
    try:
        config = (await client.get_model_config(TINY_MODEL, as_json=True))["config"]
    finally:
        await client.close()
    assert config["backend"] == "python" and config.get("platform", "") == ""
    assert config["max_batch_size"] == 64 and "dynamic_batching" in config
    assert [i["name"] for i in config["input"]] == ["mel", "face", "mouth"]


async def test_server_status_and_shared_channel(triton):
    server, lipsync = TritonServerClient(triton.url), LipSyncClient(triton.url)
    try:
        assert server._client is lipsync._client  # one gRPC channel per Triton URL
        status = await server.server_status([TTS_MODEL, "no_such_model"])
        assert status["live"] and not status["ready"]
        assert status["models"] == {TTS_MODEL: True, "no_such_model": False}
        assert (await server.server_status(triton.models))["ready"]
    finally:
        await server.close()
        await lipsync.close()
    tts = ESpeakEngine(triton.url)
    await tts.close()
    with pytest.raises(RuntimeError, match="closed"):
        await tts.speech("hello", "")


async def test_wait_models_ready_reports_missing_model(triton):
    with pytest.raises(TritonStartError, match="not in the model repository: nope"):
        await wait_models_ready(triton.url, [TTS_MODEL, "nope"], timeout_s=10)
    await wait_models_ready(triton.url, [TTS_MODEL], timeout_s=10)


# --- tts_espeak -----------------------------------------------------------------------------------
def _assert_timings_cover(times: np.ndarray, duration_s: float, what: str) -> None:
    assert times.ndim == 2 and times.shape[1] == 2 and len(times) > 0, what
    assert times.dtype == np.float32
    assert np.all(np.diff(times[:, 0]) >= 0), f"{what} starts not monotonic"
    assert np.all(times[:, 1] >= times[:, 0]), f"{what} end before start"
    assert np.all(times[1:, 0] >= times[:-1, 1] - 1e-3), f"{what} intervals overlap"
    assert times[0, 0] < 0.15, f"first {what} starts late: {times[0, 0]}"
    assert times[-1, 1] <= duration_s + 1e-3
    assert times[-1, 1] >= 0.85 * duration_s, f"{what} end at {times[-1, 1]} of {duration_s}"
    covered = float(np.sum(times[:, 1] - times[:, 0]))
    assert covered >= 0.6 * duration_s, f"{what} cover {covered:.2f} s of {duration_s:.2f} s"


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


@pytest.mark.parametrize(
    ("text", "voice", "expected_words"),
    [
        (TEN_WORDS, "en-us", ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy",
                              "sleeping", "dog"]),
        (TEN_WORDS, "", None),
        ("你好，我是数字人。今天天气很好。", "", None),
        ("你好，我是数字人。", "cmn", None),
    ],
    ids=["english", "english-auto", "chinese-auto", "chinese-cmn"],
)
async def test_tts_speech_and_timings(triton, text, voice, expected_words):
    tts = ESpeakEngine(triton.url)
    try:
        speech = await tts.speech(text, voice)
    finally:
        await tts.close()
    assert isinstance(speech, SpeechAudio)
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    duration_s = speech.duration_s
    assert 0.5 < duration_s < 10
    assert _rms(speech.audio) > SPEECH_RMS_MIN
    assert np.max(np.abs(speech.audio)) <= 1.0
    assert len(speech.phonemes) == len(speech.phoneme_times) > 5
    assert len(speech.words) == len(speech.word_times) > 1
    _assert_timings_cover(speech.phoneme_times, duration_s, "phoneme")
    _assert_timings_cover(speech.word_times, duration_s, "word")
    if expected_words is not None:
        assert speech.words == expected_words
    if any("\u4e00" <= ch <= "\u9fff" for ch in text):
        assert speech.words[0] == "你好"  # one dictionary word, text cut at the comma
        assert all(w and w in text for w in speech.words)
    # the words hold the sound: more energy inside the word intervals than between them
    inside = np.zeros(speech.audio.size, bool)
    for start, end in speech.word_times:
        inside[int(start * SAMPLE_RATE_HZ) : int(end * SAMPLE_RATE_HZ)] = True
    assert _rms(speech.audio[inside]) > 2 * _rms(speech.audio[~inside])


async def test_tts_unknown_voice(triton):
    tts = ESpeakEngine(triton.url)
    try:
        with pytest.raises(UnknownVoice) as caught:
            await tts.speech("hello", "no-such-voice")
        assert caught.value.voice == "no-such-voice"
        speech = await tts.speech("hello", "en-us")  # the model still serves afterwards
        assert _rms(speech.audio) > SPEECH_RMS_MIN
    finally:
        await tts.close()


async def test_tts_concurrent_requests_get_their_own_audio(triton):
    tts = ESpeakEngine(triton.url)
    texts = ["one", "two three four five six seven", "eight nine"]
    try:
        results = await asyncio.gather(*(tts.speech(t, "en-us") for t in texts))
    finally:
        await tts.close()
    assert [r.words for r in results] == [t.split() for t in texts]


# --- lip-sync adapter -----------------------------------------------------------------------------
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


# --- process lifetime -----------------------------------------------------------------------------
async def test_stop_ends_server_and_stubs(tiny_repository):
    server = EmbeddedTriton(tiny_repository, [TINY_MODEL])
    await server.start()
    pid = server.pid
    stubs = _children(pid)
    assert stubs, "the python backend runs each model instance in a stub process"
    await server.stop()
    assert not server.running and server.pid is None
    assert _wait_gone([pid, *stubs], timeout_s=2) == []


async def test_start_failure_reports_log_tail(tmp_path):
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n'
                                                  'input [ { name: "x" } ]\n')
    (repo / "broken" / "1" / "model.py").write_text("raise RuntimeError('boom')\n")
    server = EmbeddedTriton(repo, ["broken"], timeout_s=60)
    with pytest.raises(TritonStartError, match="broken") as caught:
        await server.start()
    assert "tritonserver.log (tail)" in str(caught.value)
    assert not server.running


ORPHAN_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from orchestrator.triton.server import EmbeddedTriton

    async def main():
        server = EmbeddedTriton(sys.argv[1], [sys.argv[2]], workdir=sys.argv[3])
        await server.start()
        print(server.pid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
""")


@pytest.mark.timeout(120)
def test_killed_parent_leaves_no_orphan(tiny_repository, tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(tiny_repository), TINY_MODEL,
         str(tmp_path / "work")],
        stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT,
    )
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the child did not start a server: {line!r}"
        server_pid = int(line)
        stubs = _children(server_pid)
        assert _alive(server_pid) and stubs
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        survivors = _wait_gone([server_pid, *stubs])
        assert survivors == [], f"still running after the parent was killed: {survivors}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    log = (tmp_path / "work" / "tritonserver.log").read_text()
    assert TINY_MODEL in log


async def test_lipsync_through_shared_memory_matches_grpc(triton):
    """Triton on this host: frame tensors go through registered system shared memory."""
    from orchestrator.triton.shm import on_this_host

    assert on_this_host(triton.url)
    rng = np.random.default_rng(5)
    mel = rng.uniform(-4, 4, (3, 1, 80, 16)).astype(np.float32)
    face = rng.uniform(0, 1, (3, 3, 128, 128)).astype(np.float32)
    mouth = np.tile(np.array([[0.5, 0.62, 0.3, 0.08]], np.float32), (3, 1))
    plain = LipSyncClient(triton.url)
    shared = LipSyncClient(triton.url, shared_memory=True)
    status = await plain._client.get_system_shared_memory_status(as_json=True)
    before = {r["name"] for r in status.get("regions", {}).values()}
    try:
        expected = await plain.infer(mel, face, mouth)
        outputs = await asyncio.gather(*(shared.infer(mel, face, mouth) for _ in range(4)))
        status = await shared._client.get_system_shared_memory_status(as_json=True)
        ours = {r["name"] for r in status.get("regions", {}).values()} - before
        assert shared.shared_memory and ours, "regions registered with Triton"
        for out in outputs:
            np.testing.assert_array_equal(out, expected)
    finally:
        await shared.close()
        await plain.close()
    client = LipSyncClient(triton.url)
    try:
        status = await client._client.get_system_shared_memory_status(as_json=True)
        left = {r["name"] for r in status.get("regions", {}).values()}
        assert not ours & left, "unregistered on close"
        assert not [n for n in ours if (Path("/dev/shm") / n).exists()], "unlinked on close"
    finally:
        await client.close()


FORK_UNDER_BLAS = """
import subprocess, threading
import numpy as np
from orchestrator.triton.server import single_threaded_blas
single_threaded_blas()
stop = threading.Event()
def work():
    a, b = np.ones((80, 513), np.float32), np.ones((513, 400), np.float32)
    while not stop.is_set():
        a @ b  # a session's mel features, in an executor thread
threading.Thread(target=work, daemon=True).start()
for _ in range(200):  # each one a fork with a preexec_fn, as tritonserver is started
    subprocess.run(["true"], preexec_fn=lambda: None, check=True)
stop.set()
"""


def test_forking_the_server_while_another_thread_does_blas_work_does_not_hang():
    """A Triton restart under talking sessions forked while an executor thread was inside a
    multi-threaded OpenBLAS call: OpenBLAS's fork handler waited for its workers for ever and the
    whole orchestrator hung. Run in a fresh interpreter (numpy's default threads)."""
    result = subprocess.run([sys.executable, "-c", FORK_UNDER_BLAS], timeout=120,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "2"})
    assert result.returncode == 0
