"""eSpeak on Triton (`tts_espeak`, tts/espeak.py) over real gRPC: speech with phoneme and word
timings, unknown voices, concurrent requests."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from orchestrator.tts import UnknownVoice
from orchestrator.tts.espeak import ESpeakEngine, SpeechAudio

SAMPLE_RATE_HZ = 16000


SPEECH_RMS_MIN = 0.02  # eSpeak speaks at about 0.08-0.1 RMS; silence is 0


TEN_WORDS = "The quick brown fox jumps over the lazy sleeping dog."


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
