"""The avatar must not hear itself (issue 21, item 1): an aiortc client whose microphone hears its
own speaker (the avatar's downlink audio, -10 dB, 150 ms later: a kiosk, a laptop without
headphones) while the avatar speaks Piper speech. No barge-in, no interruption, no turn from the
echo; a user speaking over the echo at a normal level still barges in and is transcribed;
`voice_mode` half-duplex takes no turn while the avatar speaks, but push-to-talk still cuts in.
With the canceller off (--no-echo-cancellation) the guards alone keep the avatar from answering
itself."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from piper_speech import TEST_VOICE
from server_fixtures import running_server, server_settings
from session_events import history, wait_event
from test_voice_input import QUESTION, at_16k, words

from orchestrator.client import AvatarClient, EchoingMicrophone, Microphone
from orchestrator.tts import PiperEngine, synthesize_all
from orchestrator.voice_input.echo import (
    CLEAR_OF_ECHO_FRAMES,
    ECHO_SETTLE_S,
    EchoGuard,
    PlayedAudio,
    UplinkClock,
    WebRtcEchoCanceller,
    said_by_avatar,
)

# ~18 s of Piper speech: what the avatar answers while it hears itself
ANSWER = ("Thank you for asking. Our studio opens every morning at nine and closes at six in the "
          "evening. On weekends we open a little later, at ten, and we close at four. If you "
          "would like to book a session, you can do it online or at the front desk. Sorry, "
          "English is the only language we speak here, but we are happy to help you.")
# its first two sentences (~6 s): what CI's runs say (the whole answer: the slow runs)
SHORT_ANSWER = ("Thank you for asking. Our studio opens every morning at nine and closes at six in "
                "the evening.")
USER = "Hello there."
# words of QUESTION that ANSWER lacks: a transcript with some of them is the user's question
QUESTION_ONLY_WORDS = set(words(QUESTION)) - set(words(ANSWER))
SHORT_SAY, QUICK_REPLY = "OK.", "Yes."  # a short answer, and the user's reply straight after it
REPLY_AFTER_S = 0.1  # the reply begins this long after the answer's last sound
ECHO_GAIN_DB = -10.0
ECHO_DELAY_S = 0.150
LATE_ECHO_DELAY_S = 1.0  # a busy client's playout


@pytest.fixture(scope="module")
async def speech(triton) -> dict[str, tuple[np.ndarray, int]]:
    piper = await PiperEngine.open(triton.url)
    try:
        return {text: (await synthesize_all(piper, text, TEST_VOICE), piper.sample_rate_hz)
                for text in (ANSWER, USER, QUESTION, SHORT_SAY, QUICK_REPLY)}
    finally:
        await piper.close()


@pytest.fixture(scope="module")
async def echo_server(triton):
    """A server with the default settings (echo cancellation on)."""
    async with running_server(server_settings(triton)) as server:
        yield server


def names(services, client, since_s: float = 0.0) -> list[str]:
    return [e["event"] for e in history(services, client) if e["time"] >= since_s]


def turns(services, client) -> list[dict]:
    return [e for e in history(services, client) if e["event"] == "transcript" and e["turn"]]


# --- the parts, on Piper speech (no WebRTC) ---------------------------------------------------

def test_transcripts_of_the_avatars_words_are_echo():
    said = [ANSWER]
    for heard in ("English.", "Sorry.", "we close at four", "Thank you for asking. Our studio",
                  "on weekends we opened a little later at 10"):  # Whisper's own spellings
        assert said_by_avatar(heard, said), heard
    for heard in ("Hello there.", "How many sessions can run at once?", "", "What time is it?"):
        assert not said_by_avatar(heard, said), heard
    assert not said_by_avatar("Sorry.", [])  # the avatar said nothing: the user's words


def test_played_audio_is_found_by_time():
    start = 100.0
    played = PlayedAudio(lambda tick: start + tick * 0.04)
    for tick in range(10):
        played.add(tick, None, np.full(640, tick + 1, np.int16))
    got = played.samples(start + 0.04 * 3 + 0.02, 640)  # half of tick 3, half of tick 4
    assert np.allclose(got[:320] * 32768, 4) and np.allclose(got[320:] * 32768, 5)
    assert not played.samples(start - 1.0, 640).any()  # before anything was played
    assert played.sound_until_s == pytest.approx(start + 0.4)
    clock = UplinkClock()
    assert clock.frame(512, 10.05) == pytest.approx(10.05 - 0.032)
    # a late arrival does not move the nominal time; an earlier one does
    assert clock.frame(512, 10.20) == pytest.approx(10.05)
    assert clock.frame(512, 10.07) == pytest.approx(10.07 - 0.032)


async def test_canceller_removes_piper_echo_and_keeps_the_user(speech):
    """WebRTC AEC3 on 16 kHz VAD frames, reference from PlayedAudio, arrival times with jitter:
    the echo (-10 dB, 150 ms) loses most of its level, the user's voice over it keeps its own,
    and the guard tells which frames are the user's."""
    far = at_16k(*speech[ANSWER])
    user = at_16k(*speech[USER])
    start = 100.0
    played = PlayedAudio(lambda tick: start + tick * 0.04)
    delay = int(ECHO_DELAY_S * 16000)
    mic = np.concatenate([np.zeros(delay, np.float32), far])[:far.size] * 10 ** (ECHO_GAIN_DB / 20)
    user_at = int(8.0 * 16000)
    mic[user_at:user_at + user.size] += user
    guard = EchoGuard(played, WebRtcEchoCanceller())
    rng = np.random.default_rng(0)
    out, over, tick = [], [], 0
    for k in range(mic.size // 512):
        arrived = start + 0.03 + (k + 1) * 512 / 16000 + abs(rng.normal(0, 0.01))
        while start + tick * 0.04 <= arrived and (tick + 1) * 640 <= far.size:
            played.add(tick, None, (far[tick * 640:(tick + 1) * 640] * 32767).astype(np.int16))
            tick += 1
        out.append(guard.process(mic[k * 512:(k + 1) * 512], arrived))
        over.append(guard.over_echo)
    out = np.concatenate(out)
    echo_only = slice(3 * 16000, user_at - 8000)
    erle_db = 10 * np.log10(np.mean(mic[echo_only] ** 2) / np.mean(out[echo_only] ** 2))
    assert erle_db > 20, erle_db
    kept = slice(user_at + 160, user_at + user.size)  # the output is 10 ms (160 samples) late
    user_db = 10 * np.log10(np.mean(out[kept] ** 2) / np.mean(user ** 2))
    assert user_db > -6, user_db
    first = user_at // 512
    # barge-in's three frames in a row, within the user's first quarter second
    assert any(all(over[k:k + 3]) for k in range(first, first + 8)), over[first:first + 10]


def guard_frames(far: np.ndarray, mic: np.ndarray, canceller=None) -> tuple[list[bool],
                                                                          list[bool]]:
    """(`over_echo`, `echo_unsettled`) of each VAD frame of `mic` (16 kHz) while the session plays
    `far` (16 kHz), both from the same instant; arrival times with a little jitter, as
    test_canceller's."""
    start = 50.0
    played = PlayedAudio(lambda tick: start + tick * 0.04)
    guard = EchoGuard(played, canceller)
    rng = np.random.default_rng(1)
    far = np.concatenate([far, np.zeros(max(0, mic.size - far.size) + 640, np.float32)])
    over, unsettled, tick = [], [], 0
    for k in range(mic.size // 512):
        arrived = start + 0.03 + (k + 1) * 512 / 16000 + abs(rng.normal(0, 0.005))
        while start + tick * 0.04 <= arrived and (tick + 1) * 640 <= far.size:
            played.add(tick, None, (far[tick * 640:(tick + 1) * 640] * 32767).astype(np.int16))
            tick += 1
        guard.process(mic[k * 512:(k + 1) * 512], arrived)
        over.append(guard.over_echo)
        unsettled.append(guard.echo_unsettled)
    return over, unsettled


def guard_over(far: np.ndarray, mic: np.ndarray, canceller=None) -> list[bool]:
    """`over_echo` of each VAD frame (guard_frames)."""
    return guard_frames(far, mic, canceller)[0]


def runs_over(over: list[bool], frames: range) -> bool:
    """CLEAR_OF_ECHO_FRAMES frames in a row over the echo, starting within `frames`."""
    n = CLEAR_OF_ECHO_FRAMES
    return any(all(over[k:k + n]) for k in frames if k + n <= len(over))


@pytest.mark.parametrize("idle_s", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
@pytest.mark.parametrize("canceller", [None, WebRtcEchoCanceller], ids=["guard", "aec3"])
async def test_a_quick_reply_to_a_short_first_answer_is_the_users(speech, canceller, idle_s):
    """The session's first answer is "OK." (under a second of sound), to a headset user who
    answers "Yes." REPLY_AFTER_S after it: the microphone heard nothing while the avatar spoke,
    so the reply is the user's, over the echo (a turn, not the avatar's echo), whatever the
    phase of the guard's measurements (`idle_s` of silence played before the answer). Its
    neighbour: with the speaker heard (-10 dB, 150 ms), the short answer's echo is never taken
    for the user."""
    said = at_16k(*speech[SHORT_SAY])
    reply = at_16k(*speech[QUICK_REPLY])
    lead = np.zeros(int(idle_s * 16000), np.float32)
    far = np.concatenate([lead, said])
    reply_at = far.size + int(REPLY_AFTER_S * 16000)
    mic = np.zeros(reply_at + reply.size + 16000, np.float32)
    mic[reply_at:reply_at + reply.size] += reply
    over = guard_over(far, mic, canceller and canceller())
    assert runs_over(over, range(reply_at // 512, (reply_at + reply.size) // 512)), over
    delay = int(ECHO_DELAY_S * 16000)
    echo = np.zeros(far.size + delay + 16000, np.float32)
    echo[lead.size + delay:lead.size + delay + said.size] = said * 10 ** (ECHO_GAIN_DB / 20)
    over = guard_over(far, echo, canceller and canceller())
    heard = [k for k in range(echo.size // 512)  # frames with the echo in them
             if np.sqrt(np.mean(echo[k * 512:(k + 1) * 512] ** 2)) > 1e-3]
    assert heard and not any(all(over[k:k + CLEAR_OF_ECHO_FRAMES]) for k in heard
                             if k + CLEAR_OF_ECHO_FRAMES - 1 in heard), over


@pytest.mark.parametrize("canceller", [None, WebRtcEchoCanceller], ids=["guard", "aec3"])
async def test_the_echo_of_an_answer_after_a_cut_one_is_not_the_user(speech, canceller):
    """Answers cut short and begun again (barge-ins, /interrupt_talk), the speaker heard (-10 dB,
    150 ms): the seconds of silence after each cut (no sound, no echo) do not lower the echo's
    measured gain, so the next answer's echo is never taken for the user (a self-barge-in)."""
    answer = at_16k(*speech[ANSWER])
    part, gap = int(1.2 * 16000), np.zeros(int(1.5 * 16000), np.float32)
    # four answers cut after 1.2 s, each followed by 1.5 s of quiet; then one that goes on
    far = np.concatenate([*[np.concatenate([answer[k * part:(k + 1) * part], gap])
                            for k in range(4)], answer[:3 * part], gap])
    delay = int(ECHO_DELAY_S * 16000)
    echo = np.concatenate([np.zeros(delay, np.float32), far])[:far.size] * 10 ** (ECHO_GAIN_DB / 20)
    over = guard_over(far, echo, canceller and canceller())
    heard = [k for k in range(echo.size // 512)
             if np.sqrt(np.mean(echo[k * 512:(k + 1) * 512] ** 2)) > 1e-3]
    runs = [k for k in heard if all(over[k:k + CLEAR_OF_ECHO_FRAMES])
            and k + CLEAR_OF_ECHO_FRAMES - 1 in heard]
    assert not runs, [round(k * 512 / 16000, 2) for k in runs]


@pytest.mark.parametrize("delay_s", [0.3, 0.6, 1.0, 1.5, pytest.param(2.0, marks=pytest.mark.xfail(
    strict=True, reason="an echo 2 s late has come back for under 0.5 s when the path settles "
    "(ECHO_SETTLE_S 2.5 s): its gain is still measured low"))])
async def test_a_late_echo_of_the_first_answer_is_not_the_user(speech, delay_s):
    """The first answer's echo (-10 dB) coming back `delay_s` late (a busy client's playout,
    as CI's loaded runs showed: 1 s): no run of it over the echo estimate would barge in by its
    level. While the echo path is unsettled (the first seconds of played sound: the echo may
    still be on its way) such a run is left to the words (`echo_unsettled`); after, the
    measured gain holds the echo under the margin. Old code: the gain measured on the first
    second, before any echo came back, stayed ~0 and the echo's syllables barged in."""
    far = at_16k(*speech[ANSWER])[:8 * 16000]
    delay = int(delay_s * 16000)
    echo = np.concatenate([np.zeros(delay, np.float32), far, np.zeros(16000, np.float32)]
                          ) * 10 ** (ECHO_GAIN_DB / 20)
    over, unsettled = guard_frames(far, echo)
    heard = [k for k in range(echo.size // 512)
             if np.sqrt(np.mean(echo[k * 512:(k + 1) * 512] ** 2)) > 1e-3]
    n = CLEAR_OF_ECHO_FRAMES
    runs = [k for k in heard if all(over[k:k + n]) and not any(unsettled[k:k + n])
            and k + n - 1 in heard]
    assert not runs, [round(k * 512 / 16000, 2) for k in runs]
    assert unsettled[heard[0]], "the echo came back before the path settled"


async def test_the_path_does_not_settle_on_runs_it_took_for_the_user(speech):
    """After ECHO_SETTLE_S of played sound the path settles when the echo's delay shows clearly
    or few runs (under ECHO_SETTLE_USER_SHARE of the frames with played sound) were taken for
    the user's. CI, a loaded run: a late echo smeared by the client never correlated clearly, its
    syllables were taken for the user's (out of the gain), the path settled at 2.5 s on a gain of
    ~0, then barged in on the echo. Here: a clean late echo and a headset that heard nothing
    settle at ECHO_SETTLE_S; a headset user who talked over the first answer's first seconds
    (the same levels as a late echo) holds it until their share of the last 8 s is small."""
    far = at_16k(*speech[ANSWER])[:10 * 16000]
    question = at_16k(*speech[QUESTION])
    early, late = (round(s * 16000 / 512) for s in (ECHO_SETTLE_S + 0.2, 9.0))
    echo = np.concatenate([np.zeros(16000, np.float32), far])[:far.size] * 10 ** (ECHO_GAIN_DB / 20)
    _, unsettled = guard_frames(far, echo)
    assert not unsettled[early]
    headset = np.zeros(far.size, np.float32)
    _, unsettled = guard_frames(far, headset)
    assert not unsettled[early]
    headset[16000:16000 + question.size] = question  # the user, at 1 s
    _, unsettled = guard_frames(far, headset)
    assert unsettled[early] and not unsettled[late]


# --- through WebRTC ---------------------------------------------------------------------------

async def answer_over_echo(base_url: str, services, speech, answer: str = ANSWER,
                           delay_s: float = ECHO_DELAY_S,
                           **offer) -> tuple[AvatarClient, EchoingMicrophone]:
    """A client whose microphone hears its speaker `delay_s` after it arrives, connected; the
    avatar says `answer`."""
    mic = EchoingMicrophone(ECHO_GAIN_DB, delay_s)
    client = AvatarClient(base_url, keep_video=False, microphone=mic)
    mic.hear(client.received)
    await client.connect(**offer)
    await client.wait_for_video(5)
    status, _ = await client.post("/human", type="echo", text=answer)
    assert status == 200
    await wait_event(services, client, "start")
    return client, mic


@pytest.mark.parametrize("answer, echoed_s, delay_s", [
    pytest.param(SHORT_ANSWER, 3, LATE_ECHO_DELAY_S, id="two-sentences-late"),
    pytest.param(ANSWER, 10, ECHO_DELAY_S, id="whole-answer", marks=pytest.mark.slow),
])
async def test_the_avatar_does_not_hear_itself(echo_server, speech, answer, echoed_s, delay_s):
    """The avatar speaking (two sentences in CI, ~18 s in the slow run) while its own voice
    comes back up the uplink: no barge-in, no interruption, no question of its own words. CI's
    echo comes back a second late (the 150 ms one: the barge-in test below), as a loaded CI run
    made the 150 ms one (a barge-in 1.2 s into the first answer, on its own voice)."""
    base_url, services = echo_server
    client, mic = await answer_over_echo(base_url, services, speech, answer, delay_s=delay_s)
    try:
        end = await wait_event(services, client, "end", timeout=60)
        assert end["text"] == answer
        await asyncio.sleep(2.5)  # a transcript of the last echo would come by now
        assert mic.echoed_s > echoed_s, mic.echoed_s  # the avatar's voice did come back
        seen = names(services, client)
        assert "barge_in" not in seen and "interrupted" not in seen, seen
        assert not turns(services, client) and "question" not in seen, history(services, client)
    finally:
        await client.close()


async def test_the_user_still_barges_in_over_the_echo(echo_server, speech):
    """Over the same echo, the user's question at a normal level cuts the avatar off (not its
    echo before it) and becomes the next turn."""
    base_url, services = echo_server
    client, mic = await answer_over_echo(base_url, services, speech, voice_mode="echo")
    try:
        await client.wait_for_speech(time.monotonic() - 1, timeout=10)
        await asyncio.sleep(3.0)
        assert "interrupted" not in names(services, client)
        said_at = time.time()
        mic.play(*speech[QUESTION])
        interrupted = await wait_event(services, client, "interrupted", timeout=10)
        assert interrupted["text"] == ANSWER
        barge = next(e for e in history(services, client) if e["event"] == "barge_in")
        assert barge["time"] >= said_at, "barged in before the user spoke"
        transcript = None
        deadline = time.monotonic() + 15
        while transcript is None and time.monotonic() < deadline:
            transcript = next((e for e in turns(services, client)), None)
            await asyncio.sleep(0.05)
        assert transcript is not None, history(services, client)
        # The question's, not the echo's (Whisper hears its first words over the avatar's last:
        # "How many sessions" has come back as "and these sections" in 1 of 4 runs).
        assert len(QUESTION_ONLY_WORDS & set(words(transcript["text"]))) >= 2, transcript
    finally:
        await client.close()


async def test_half_duplex_takes_no_turn_while_the_avatar_speaks(echo_server, speech):
    """voice_mode half-duplex: the user speaking over the avatar neither interrupts it nor makes
    a turn; push-to-talk released over the avatar (/end_turn) interrupts it and is answered."""
    base_url, services = echo_server
    mic = Microphone()
    client = AvatarClient(base_url, keep_video=False, microphone=mic)
    try:
        await client.connect(voice_mode="half-duplex")
        await client.wait_for_video(5)
        status, _ = await client.post("/human", type="echo", text=ANSWER)
        assert status == 200
        await wait_event(services, client, "start")
        await client.wait_for_speech(time.monotonic() - 1, timeout=10)
        await asyncio.sleep(1.0)
        mic.play(*speech[USER])
        ignored = await wait_event(services, client, "transcript", timeout=10, final=True)
        assert ignored["turn"] is False and ignored.get("ignored"), ignored
        seen = names(services, client)
        assert not {"barge_in", "interrupted", "question"} & set(seen), seen
        # push-to-talk over the avatar: released, it interrupts and the question is answered
        mic.play(*speech[QUESTION])
        while mic.speech_ended_at is None:
            await asyncio.sleep(0.02)
        await client.end_turn()  # (False when its frames are not heard yet: a turn all the same)
        interrupted = await wait_event(services, client, "interrupted", timeout=10)
        assert interrupted["text"] == ANSWER
        question = await wait_event(services, client, "question", timeout=15)
        assert {"sessions", "once"} <= set(words(question["text"])), question
    finally:
        await client.close()


@pytest.mark.parametrize("answer, echoed_s", [
    pytest.param(SHORT_ANSWER, 3, id="two-sentences"),
    pytest.param(ANSWER, 10, id="whole-answer", marks=pytest.mark.slow),
])
async def test_guards_alone_keep_the_avatar_from_answering_itself(triton, speech, answer,
                                                                  echoed_s):
    """--no-echo-cancellation: the level guard and the transcript match alone (a browser whose
    own canceller leaves the echo in): still no barge-in and no turn from the echo."""
    settings = server_settings(triton, echo_cancellation=False)
    async with running_server(settings) as (base_url, services):
        client, mic = await answer_over_echo(base_url, services, speech, answer)
        try:
            await wait_event(services, client, "end", timeout=60)
            await asyncio.sleep(2.5)
            assert mic.echoed_s > echoed_s, mic.echoed_s
            seen = names(services, client)
            assert "barge_in" not in seen and "interrupted" not in seen, seen
            assert not turns(services, client) and "question" not in seen, history(services,
                                                                                  client)
        finally:
            await client.close()
