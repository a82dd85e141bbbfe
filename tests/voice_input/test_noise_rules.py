"""The parts that tell the user from the room (issue 21, item 2): the noise floor and level gate
beside the VAD (vad/level_gate.py; with Silero on Triton, the background rising), and what Whisper writes when nothing was said
(asr/hallucinations.py), with Whisper's own scores from the Triton model."""

from __future__ import annotations

import re

import numpy as np
import pytest
from babble import BABBLE_DBFS, BABBLE_SENTENCES, QUESTION_SNR_DB, babble, over
from piper_speech import TEST_VOICE

from orchestrator.asr import WhisperOnTriton
from orchestrator.asr.base import SegmentScores, Transcript
from orchestrator.asr.hallucinations import nothing_said
from orchestrator.tts import PiperEngine, synthesize_all
from orchestrator.vad.activity import SpeechEnded, VADSettings, VoiceActivity
from orchestrator.vad.base import VAD_FRAME_S, VAD_FRAME_SAMPLES
from orchestrator.vad.level_gate import (
    HOLD_WINDOW_S,
    NOISE_FLOOR_MIN_DBFS,
    NOISE_QUANTILE,
    NOISE_WINDOW_S,
    LevelGate,
)
from orchestrator.vad.silero import SileroVAD

RATE_16K = 16000
QUESTION = "How many sessions can run at once?"
# a question at +15 dB SNR stands this far over the babble after it, at least (of the gate's 12)
BABBLE_MIN_MARGIN_DB = 13.0


def noise_frame(rng, level_dbfs: float) -> np.ndarray:
    return (10 ** (level_dbfs / 20) * rng.standard_normal(VAD_FRAME_SAMPLES)).astype(np.float32)


def test_the_noise_floor_learns_a_background_and_speech_stands_out_of_it():
    rng = np.random.default_rng(0)
    gate = LevelGate(margin_db=10.0)
    silence = np.zeros(VAD_FRAME_SAMPLES, np.float32)
    for _ in range(10):
        reading = gate.read(silence)
    assert reading.floor_dbfs == reading.hold_floor_dbfs == NOISE_FLOOR_MIN_DBFS
    # A steady background at -35 dBFS: heard as loud at first, learnt within the windows.
    assert gate.opens(gate.read(noise_frame(rng, -35.0)))
    for _ in range(round(max(NOISE_WINDOW_S, HOLD_WINDOW_S) / VAD_FRAME_S)):
        reading = gate.read(noise_frame(rng, -35.0))
    assert abs(reading.floor_dbfs + 35.0) < 1.5 and abs(reading.hold_floor_dbfs + 35.0) < 1.5
    assert not gate.opens(reading) and not gate.holds(reading)
    # A voice 15 dB over it opens the gate; the background alone does not.
    assert gate.opens(gate.read(noise_frame(rng, -20.0)))
    assert not gate.opens(gate.read(noise_frame(rng, -33.0)))
    # Speech under way goes on a little lower (quieter words) and is cut at the background.
    quieter = gate.read(noise_frame(rng, -26.0))
    assert not gate.opens(quieter) and gate.holds(quieter)
    assert not gate.holds(gate.read(noise_frame(rng, -34.0)))
    # The background stops: the hold floor falls with it at once, the start floor once the
    # quiet is its quantile of the window.
    gate.read(silence)
    assert gate.read(silence).hold_floor_dbfs == NOISE_FLOOR_MIN_DBFS
    for _ in range(round(NOISE_QUANTILE * NOISE_WINDOW_S / VAD_FRAME_S)):
        reading = gate.read(silence)
    assert reading.floor_dbfs == NOISE_FLOOR_MIN_DBFS
    # Margin 0: the gate is open to everything.
    open_gate = LevelGate(margin_db=0.0)
    assert open_gate.opens(open_gate.read(silence)) and open_gate.holds(open_gate.last)


def scored(text: str, no_speech: float, logprob: float) -> Transcript:
    return Transcript(text, (SegmentScores(no_speech, logprob),))


def test_what_whisper_invents_on_noise_is_nothing_said():
    # Whisper's usual inventions, with the weak scores it gives them on noise
    assert nothing_said(scored("Thank you.", 0.35, -0.6)) == "hallucination"
    assert nothing_said(scored("I want to thank you very much.", 0.1, -0.7)) == "hallucination"
    assert nothing_said(scored(" you", 0.5, -0.4)) == "hallucination"
    assert nothing_said(scored("We'll be right back.", 0.25, -0.75)) == "hallucination"
    # ...and whatever it writes when its own scores say nothing was said
    assert nothing_said(scored("The best way to go.", 0.7, -0.4)) == "no_speech"
    assert nothing_said(scored("The best way to go.", 0.1, -1.3)) == "no_speech"
    # subtitle credits are never said to an avatar, scored or not
    assert nothing_said(Transcript("Thanks for watching!")) == "hallucination"
    assert nothing_said(scored("Thanks for watching!", 0.01, -0.1)) == "hallucination"
    # A user may really say "thank you": with strong scores it is kept, as are short words
    assert nothing_said(scored("Thank you.", 0.02, -0.2)) is None
    for word in ("OK.", "Yes.", "Stop.", "No."):
        assert nothing_said(scored(word, 0.3, -0.6)) is None
    assert nothing_said(scored("Yes, thank you.", 0.3, -0.6)) is None
    assert nothing_said(Transcript("Thank you.")) is None  # no scores: cannot tell
    assert nothing_said(Transcript("")) == nothing_said(Transcript(" ... ")) == "empty"


@pytest.fixture(scope="module")
async def said(triton) -> dict[str, np.ndarray]:
    """The question and the babble's sentences by Piper's joe, at 16 kHz."""
    import scipy.signal

    piper = await PiperEngine.open(triton.url)
    try:
        rate = piper.sample_rate_hz
        g = np.gcd(rate, RATE_16K)
        return {t: scipy.signal.resample_poly(await synthesize_all(piper, t, TEST_VOICE),
                                              RATE_16K // g, rate // g).astype(np.float32)
                for t in (*BABBLE_SENTENCES, QUESTION)}
    finally:
        await piper.close()


async def test_whisper_on_triton_scores_speech_and_babble(triton, said):
    """The Triton model answers Whisper's scores with the text: a clear question is kept; what
    it writes for stretches of babble (the length of a false start, and longer) is not."""
    asr = WhisperOnTriton(triton.url)
    try:
        question = await asr.transcribe_scored(said[QUESTION])
        assert {"sessions", "once"} <= set(re.findall(r"[a-z']+", question.text.lower())), question
        assert len(question.scores) == 1 and nothing_said(question) is None, question
        assert await asr.transcribe(said[QUESTION]) == question.text  # text alone, as before
        noise = babble([said[t] for t in BABBLE_SENTENCES], 12.0, RATE_16K, BABBLE_DBFS)
        for start_s, seconds in ((0.0, 1.0), (2.0, 2.0), (5.0, 5.0)):
            piece = noise[int(start_s * RATE_16K):int((start_s + seconds) * RATE_16K)]
            heard = await asr.transcribe_scored(piece)
            assert nothing_said(heard) is not None, (start_s, seconds, heard)
        empty = await asr.transcribe_scored(np.zeros(0, np.float32))
        assert empty.text == "" and empty.scores == ()
    finally:
        await asr.close()


async def _ended(activity: VoiceActivity, audio: np.ndarray) -> list[SpeechEnded]:
    n = audio.size // VAD_FRAME_SAMPLES
    events = [await activity.feed(audio[k * VAD_FRAME_SAMPLES:(k + 1) * VAD_FRAME_SAMPLES])
              for k in range(n)]
    return [e for e in events if isinstance(e, SpeechEnded)]


async def test_babble_that_begins_abruptly_is_the_background_not_an_utterance(triton, said):
    """Babble at -35 dBFS starting out of digital silence is heard as speech until the floors
    learn it (Silero on Triton says speech, the level is 35 dB over the silence before): the
    utterance its first seconds make ends in a "silence" nearly as loud as itself, so it is the
    background (no turn, not transcribed). Its neighbours keep their turns: a question over the
    babble at +15 dB SNR once the floors know it, and a voice in a quiet room."""
    vad = SileroVAD(triton.url)
    try:
        sentences = [said[t] for t in BABBLE_SENTENCES]
        for seed in range(4):  # four babbles, each with its own onset
            lead = np.zeros(RATE_16K // 2, np.float32)
            noise = babble(sentences, 8.0, RATE_16K, BABBLE_DBFS, seed=seed)
            ended = await _ended(VoiceActivity(vad), np.concatenate([lead, noise]))
            onset = [e for e in ended if e.end_s < 5.0]
            assert onset and all(e.background for e in onset), (seed, ended)
        noise = babble(sentences, 12.0, RATE_16K, BABBLE_DBFS, seed=1)
        mixed = over(noise, said[QUESTION], RATE_16K, QUESTION_SNR_DB, 6.0)
        ended = await _ended(VoiceActivity(vad), mixed)
        question = [e for e in ended if e.end_s > 6.0 and e.speech_s and e.speech_s > 0.5]
        assert len(question) == 1 and not question[0].background, ended
        assert question[0].over_silence_db > BABBLE_MIN_MARGIN_DB, question
        quiet = np.concatenate([np.zeros(RATE_16K, np.float32), said[QUESTION],
                                np.zeros(RATE_16K, np.float32)])
        [alone] = await _ended(VoiceActivity(vad), quiet)
        assert not alone.background and alone.over_silence_db > 30, alone
        # margin 0 (the gate off): the VAD alone decides, nothing is judged background
        [ungated] = await _ended(VoiceActivity(vad, VADSettings(level_margin_db=0.0)),
                                 np.concatenate([lead, noise[:3 * RATE_16K], np.zeros(RATE_16K,
                                                                                      np.float32)]))
        assert ungated.over_silence_db is None and not ungated.background
    finally:
        await vad.close()
