"""A voice turn longer than Whisper's 30 s window is one turn with all its words: 32 s (45 s in
the slow run) of Piper speech (short pauses between sentences) on a real aiortc microphone, Silero VAD and Whisper on
Triton."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from long_speech import RATE_16K, piper_sentences, recall, utterance
from server_fixtures import running_server, server_settings

from orchestrator.client import AvatarClient, Microphone

# CI: Whisper's long-form path to 60 s through /api/asr (tests/livetalking/
# test_asr_long_utterances.py); the voice turn itself is slow
pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

MIN_RECALL = 0.85


@pytest.fixture(scope="module")
async def voice_server(triton):
    # A longer end-of-turn silence than the default 0.35 s: Piper (VITS) samples its pauses, and
    # a comma's can come out longer than 0.35 s, which would end the turn there. This test is
    # about a turn longer than Whisper's window, not about where a turn ends.
    async with running_server(server_settings(triton, vad_min_silence_s=0.8)) as server:
        yield server


@pytest.mark.parametrize("seconds", [32.0, 45.0])
async def test_a_long_voice_turn_is_one_turn_with_all_its_words(voice_server, triton, seconds):
    base_url, services = voice_server
    audio, sentences = utterance(await piper_sentences(triton.url), seconds)
    audio = np.trim_zeros(audio, "b")
    mic = Microphone()
    client = AvatarClient(base_url, keep_video=False, microphone=mic)
    try:
        await client.connect(voice_mode="echo", barge_in=False)
        await client.wait_for_video(5)
        session = services.registry.get(client.sessionid)
        mic.play(audio, RATE_16K)
        deadline = time.monotonic() + seconds + 60
        transcripts: list[dict] = []
        while not transcripts and time.monotonic() < deadline:
            transcripts = [e for e in session.events.history
                           if e["event"] == "transcript" and e["final"]]
            await asyncio.sleep(0.1)
        assert transcripts, [e["event"] for e in session.events.history]
        first = transcripts[0]
        assert first["seconds"] >= audio.size / RATE_16K - 1.0, first  # not cut at 25 or 30 s
        assert first["turn"] and recall(first["text"], sentences) >= MIN_RECALL, first
        assert recall(first["text"], sentences[-1:]) >= 0.6, first  # the end came through
    finally:
        await client.close()
