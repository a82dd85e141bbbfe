"""Background talk is not the user (issue 21, item 2), through real parts: six Piper talkers mixed
at -35 dBFS (tests/support/babble.py) on an aiortc microphone track -> Silero VAD and the level
gate -> Whisper tiny.en on Triton -> turns. The babble makes no turn and no barge-in, idle or
while the avatar talks; a question spoken over it is still answered, and ended while it goes on;
short words still come through."""

from __future__ import annotations

import asyncio
import re
import time

import numpy as np
import pytest
from babble import BABBLE_DBFS, BABBLE_SENTENCES, QUESTION_SNR_DB, babble, over
from piper_speech import TEST_VOICE
from server_fixtures import running_server, server_settings
from session_events import history, wait_event

from orchestrator.client import AvatarClient, Microphone
from orchestrator.tts import PiperEngine, synthesize_all

pytestmark = pytest.mark.timeout(240)

QUESTION = "How many sessions can run at once?"
ANSWER_START = "Eight by default"
# each short word, and how Whisper may write it
SHORT_WORDS = {"OK.": {"ok", "okay"}, "Yes.": {"yes"}, "Stop.": {"stop"}}
TALK = ("This is a long sentence that the avatar speaks for a good while, so that the room can "
        "talk over it. It goes on and on, about nothing in particular, and then it goes on some "
        "more, while the people at the back of the shop keep talking among themselves.")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.fixture(scope="module")
async def speech(triton) -> tuple[dict[str, np.ndarray], int]:
    """Every text the tests say, by Piper's joe (through Triton), and its rate."""
    piper = await PiperEngine.open(triton.url)
    try:
        texts = (*BABBLE_SENTENCES, QUESTION, *SHORT_WORDS)
        return ({t: await synthesize_all(piper, t, TEST_VOICE) for t in texts},
                piper.sample_rate_hz)
    finally:
        await piper.close()


@pytest.fixture(scope="module")
async def babble_server(triton):
    async with running_server(server_settings(triton)) as server:
        yield server


def background(speech, seconds: float, seed: int = 0) -> np.ndarray:
    said, rate = speech
    return babble([said[t] for t in BABBLE_SENTENCES], seconds, rate, BABBLE_DBFS, seed=seed)


async def until_played(mic: Microphone, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not mic.idle:
        assert time.monotonic() < deadline, "the microphone did not finish playing"
        await asyncio.sleep(0.05)


def turns(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "transcript" and e.get("turn")]


async def test_babble_makes_no_turn_idle_or_while_the_avatar_talks(babble_server, speech):
    """14 s of six-talker babble at -35 dBFS: 5 s with the avatar idle, then the avatar talks
    over it: no turn, no barge-in, and the avatar's answer is not cut."""
    base_url, services = babble_server
    mic = Microphone()
    client = AvatarClient(base_url, keep_video=False, microphone=mic)
    try:
        await client.connect()
        await client.wait_for_video(5)
        await asyncio.sleep(0.5)
        seconds = mic.play(background(speech, 14.0), speech[1])
        await asyncio.sleep(5.0)
        since = len(history(services, client))
        status, _ = await client.post("/human", type="echo", text=TALK)
        assert status == 200
        await wait_event(services, client, "start", since=since)
        await until_played(mic, seconds + 10)
        await asyncio.sleep(1.5)  # an utterance cut by the babble's end is transcribed by now
        events = history(services, client)
        names = [e["event"] for e in events]
        assert "barge_in" not in names and "interrupted" not in names, events
        assert turns(events) == [] and "question" not in names, events
        end = await wait_event(services, client, "end", timeout=30, since=since)
        assert end["text"] == TALK, end
    finally:
        await client.close()


async def test_a_question_over_babble_is_answered_while_the_babble_goes_on(babble_server,
                                                                           speech):
    """The question at +15 dB SNR over the babble, 5 s in, with 8 s of babble after it: its
    utterance ends with the question (not when the babble stops), is transcribed and answered,
    and is the only turn."""
    base_url, services = babble_server
    said, rate = speech
    question_at_s = 5.0
    noise = background(speech, question_at_s + said[QUESTION].size / rate + 8.0, seed=1)
    mixed = over(noise, said[QUESTION], rate, QUESTION_SNR_DB, question_at_s)
    mic = Microphone()
    client = AvatarClient(base_url, keep_video=False, microphone=mic)
    try:
        await client.connect()
        await client.wait_for_video(5)
        await asyncio.sleep(0.5)
        seconds = mic.play(mixed, rate)
        transcript = await wait_event(services, client, "transcript", timeout=seconds + 20,
                                      final=True, turn=True)
        assert {"many", "sessions", "run"} <= set(words(transcript["text"])), transcript
        # the utterance ended with the question, not with the babble 8 s later
        question_s = said[QUESTION].size / rate
        assert transcript["seconds"] < question_s + 2.0, (transcript, question_s)
        end = await wait_event(services, client, "end", timeout=30)
        assert end["answer"].startswith(ANSWER_START), end
        await until_played(mic, seconds + 10)
        await asyncio.sleep(1.5)
        assert len(turns(history(services, client))) == 1, history(services, client)
    finally:
        await client.close()


async def test_short_words_come_through(babble_server, speech):
    """"OK", "yes" and "stop", each alone: each is a turn with its word (the level gate, the
    minimum speech of a turn and the hallucination filter let them through)."""
    base_url, services = babble_server
    said, rate = speech
    mic = Microphone()
    client = AvatarClient(base_url, keep_video=False, microphone=mic)
    try:
        await client.connect(voice_mode="echo")
        await client.wait_for_video(5)
        await asyncio.sleep(0.5)
        for word in SHORT_WORDS:
            since = len(history(services, client))
            seconds = mic.play(said[word], rate)
            transcript = await wait_event(services, client, "transcript", timeout=seconds + 10,
                                          since=since, final=True)
            heard = set(words(transcript["text"]))
            assert heard & SHORT_WORDS[word] and transcript["turn"], transcript
            await wait_event(services, client, "end", timeout=15, since=since)
    finally:
        await client.close()
