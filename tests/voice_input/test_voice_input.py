"""Voice input with real parts: Piper speech (through Triton) on an aiortc microphone track ->
Silero VAD on Triton -> Whisper tiny.en on Triton -> chat answers from the shipped FAQ, spoken
back; silence and noise make no turn; user speech while the avatar talks interrupts it."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace

import av
import numpy as np
import pytest
from aiohttp import web
from piper_speech import TEST_VOICE
from server_fixtures import running_server, server_settings
from session_events import history, wait_event

from orchestrator.asr import ASREngine, OpenAITranscription, WhisperOnTriton
from orchestrator.client import AvatarClient, Microphone
from orchestrator.tts import PiperEngine, synthesize_all
from orchestrator.vad.activity import (
    SpeechContinues,
    SpeechEnded,
    SpeechOnset,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    VADSettings,
    VoiceActivity,
)
from orchestrator.vad.base import VAD, VAD_FRAME_SAMPLES, VADStream
from orchestrator.vad.silero import SileroVAD
from orchestrator.voice_input.echo import ECHO_SETTLE_S
from orchestrator.voice_input.microphone import UplinkFrames
from orchestrator.voice_input.turn_taking import (
    BARGE_IN_LEAD_S,
    Listener,
    VoiceInput,
    VoiceOptions,
)

QUESTION = "How many sessions can run at once?"
ANSWER_START = "Eight by default"
LONG_ECHO = ("This is a long sentence that the avatar speaks for a good while, so that the user "
             "can cut in while it talks. It goes on and on, about nothing in particular, and "
             "then it goes on some more until someone interrupts it.")
RATE_16K = 16000


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.fixture(scope="module")
async def speech(triton) -> dict[str, tuple[np.ndarray, int]]:
    """Questions synthesised by the project's own Piper voice (through Triton)."""
    piper = await PiperEngine.open(triton.url)
    try:
        return {text: (await synthesize_all(piper, text, TEST_VOICE), piper.sample_rate_hz)
                for text in (QUESTION, "Hello there.")}
    finally:
        await piper.close()


def at_16k(audio: np.ndarray, rate_hz: int) -> np.ndarray:
    import scipy.signal

    g = np.gcd(rate_hz, RATE_16K)
    return scipy.signal.resample_poly(audio, RATE_16K // g, rate_hz // g).astype(np.float32)


def frames_of(audio: np.ndarray) -> list[np.ndarray]:
    n = audio.size // VAD_FRAME_SAMPLES
    return [audio[k * VAD_FRAME_SAMPLES:(k + 1) * VAD_FRAME_SAMPLES] for k in range(n)]


def test_uplink_resamples_48k_stereo_to_16k_frames():
    frames = UplinkFrames()
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)).astype(np.float32)
    out = []
    for k in range(50):  # 20 ms stereo s16 frames, as aiortc's Opus decoder gives them
        chunk = (tone[k * 960:(k + 1) * 960] * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(chunk, 2).reshape(1, -1), format="s16",
                                           layout="stereo")
        frame.sample_rate = 48000
        out += frames.push(frame)
    assert all(f.size == VAD_FRAME_SAMPLES and f.dtype == np.float32 for f in out)
    audio = np.concatenate(out)
    assert 15000 <= audio.size <= 16000
    spectrum = np.abs(np.fft.rfft(audio[2000:10000]))
    assert abs(np.argmax(spectrum) * RATE_16K / 8000 - 440) < 5
    assert 0.3 < np.sqrt(np.mean(audio[2000:] ** 2)) < 0.4  # 0.5 / sqrt(2): no downmix gain


async def _events(activity: VoiceActivity, audio: np.ndarray) -> list:
    return [e for f in frames_of(audio) if isinstance(e := await activity.feed(f),
                                                       SpeechStarted | SpeechEnded)]


async def test_vad_finds_speech_and_ignores_silence_and_noise(triton, speech):
    vad = SileroVAD(triton.url)
    try:
        question = at_16k(*speech[QUESTION])
        padded = np.concatenate([np.zeros(RATE_16K, np.float32), question,
                                 np.zeros(RATE_16K, np.float32)])
        events = await _events(VoiceActivity(vad), padded)
        assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
        assert 0.8 <= events[0].onset_s <= 1.2
        speech_end_s = 1.0 + question.size / RATE_16K
        assert speech_end_s - 0.4 <= events[1].end_s <= speech_end_s + 0.2
        assert events[1].audio.size >= question.size * 0.8
        rng = np.random.default_rng(0)
        noise = (0.05 * rng.standard_normal(3 * RATE_16K)).astype(np.float32)
        assert await _events(VoiceActivity(vad), np.zeros(3 * RATE_16K, np.float32)) == []
        assert await _events(VoiceActivity(vad), noise) == []
    finally:
        await vad.close()


async def test_vad_pause_comes_before_the_end_with_the_same_words(triton, speech):
    """SpeechPaused at the first silent frame (a transcript may start there); a short pause
    is followed by SpeechResumed; the lasting one by SpeechEnded at the same pause."""
    vad = SileroVAD(triton.url)
    try:
        question = at_16k(*speech[QUESTION])
        # Piper's VITS samples its noise: the silence it leaves after the question varies, so the
        # gap plus that silence must stay well under min_silence_s, and the tail well over it.
        gap = np.zeros(int(0.2 * RATE_16K), np.float32)
        audio = np.concatenate([np.zeros(RATE_16K // 2, np.float32), question, gap, question,
                                np.zeros(2 * RATE_16K, np.float32)])
        activity = VoiceActivity(vad, VADSettings(min_silence_s=0.8))
        events = []
        for f in frames_of(audio):
            e = await activity.feed(f)
            if e is not None and type(e) not in (SpeechContinues, SpeechOnset):
                events.append(e)
        kinds = [type(e) for e in events]
        assert kinds[0] is SpeechStarted and kinds[-1] is SpeechEnded, kinds
        assert SpeechResumed in kinds  # the 0.2 s gap (and any pause inside a sentence)
        last_pause = [e for e in events if isinstance(e, SpeechPaused)][-1]
        assert kinds[-2] is SpeechPaused and last_pause.pause_s == events[-1].end_s
        ended = events[-1].audio
        assert ended[:last_pause.audio.size].tobytes() == last_pause.audio.tobytes()
    finally:
        await vad.close()


class _CountingASR(ASREngine):
    """Counts transcriptions; each takes `seconds` and returns the audio's length."""

    def __init__(self, seconds: float = 0.1) -> None:
        self.seconds, self.calls, self.cancelled = seconds, [], 0

    async def transcribe(self, audio: np.ndarray) -> str:
        self.calls.append(audio.size)
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return f"heard {audio.size} samples"


class _FakeSession:
    sessionid, speaking, closed = 7, False, False

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.emitted: list[tuple[str, dict]] = []
        self.history: list[dict] = []  # Events.history: no sentences said
        self.events = self

    def emit(self, name: str, **fields) -> None:
        self.emitted.append((name, fields))

    def ask(self, text: str) -> None:
        self.asked.append(text)


class _SilentTrack:
    kind = "audio"

    async def recv(self):
        await asyncio.Event().wait()


def _listener(asr: _CountingASR) -> tuple[Listener, _FakeSession]:
    session = _FakeSession()
    voice = VoiceInput(vad=None, asr=asr)  # type: ignore[arg-type]
    return Listener(session, _SilentTrack(), voice, VoiceOptions()), session  # type: ignore[arg-type]


async def test_speculative_transcript_is_used_once_or_dropped():
    audio = np.ones(1000, np.float32)
    longer = np.ones(3000, np.float32)
    # The pause lasts: the transcript started at it is the turn's (one ASR call, one answer).
    asr = _CountingASR()
    listener, session = _listener(asr)
    await listener._on(SpeechPaused(audio, 1.0))
    await asyncio.sleep(0.05)
    await listener._on(SpeechEnded(np.ones(1500, np.float32), 1.0, 1.35))
    await asyncio.sleep(0.2)
    assert asr.calls == [1000] and session.asked == ["heard 1000 samples"]
    transcript = next(f for name, f in session.emitted if name == "transcript")
    assert transcript["speculative"] and transcript["wait_ms"] < 100
    await listener.close()
    # Speech resumes: that transcript becomes a partial (no turn); the longer utterance is the
    # one answered, with its own final transcript.
    asr = _CountingASR()
    listener, session = _listener(asr)
    await listener._on(SpeechPaused(audio, 1.0))
    await asyncio.sleep(0.02)
    await listener._on(SpeechResumed(1.2))
    await asyncio.sleep(0.15)
    await listener._on(SpeechPaused(longer, 2.0))
    await listener._on(SpeechEnded(longer, 2.0, 2.35))
    await asyncio.sleep(0.2)
    assert asr.calls == [1000, 3000] and asr.cancelled == 0
    assert session.asked == ["heard 3000 samples"]
    transcripts = [(f["text"], f["final"], f["turn"]) for name, f in session.emitted
                   if name == "transcript"]
    assert transcripts == [("heard 1000 samples", False, False), ("heard 3000 samples", True, True)]
    # A partial still running when its utterance ends is not sent (the final says more), and a
    # newer pause's partial supersedes an older one.
    session.emitted.clear()
    for event in (SpeechPaused(audio, 3.0), SpeechResumed(3.1), SpeechPaused(audio, 3.2),
                  SpeechResumed(3.3), SpeechPaused(longer, 4.0), SpeechEnded(longer, 4.0, 4.35)):
        await listener._on(event)
        await asyncio.sleep(0.02)  # frames are 32 ms apart: each transcription has started
    await asyncio.sleep(0.2)
    assert asr.cancelled == 1  # the superseded partial's transcription
    assert [f["final"] for name, f in session.emitted if name == "transcript"] == [True]
    # The session closes while a transcript is in flight: every listener task ends, no turn.
    await listener._on(SpeechPaused(audio, 5.0))
    await asyncio.sleep(0.02)
    await listener.close()
    assert asr.cancelled == 2 and session.asked == ["heard 3000 samples"] * 2
    assert not listener._turns and listener._task.done()


class _LoudnessVAD(VAD):
    """Speech wherever a frame is loud; each frame takes `seconds` (a loaded Triton)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def stream(self) -> VADStream:
        vad = self

        class Stream(VADStream):
            async def probability(self, frame: np.ndarray) -> float:
                await asyncio.sleep(vad.seconds)
                return 0.95 if np.sqrt(np.mean(frame ** 2)) > 0.01 else 0.0

        return Stream()

    async def close(self) -> None:
        pass


class _BurstTrack:
    """A microphone whose whole audio (48 kHz mono, 20 ms frames) has arrived at once; then
    it stays connected without sending (no audio for UPLINK_STALL_S is silence)."""

    kind = "audio"

    def __init__(self, audio: np.ndarray) -> None:
        pcm = (audio * 32767).astype(np.int16)
        self.frames = []
        for k in range(0, pcm.size - 959, 960):
            frame = av.AudioFrame.from_ndarray(pcm[k:k + 960].reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate = 48000
            self.frames.append(frame)

    async def recv(self):
        if self.frames:
            return self.frames.pop(0)
        await asyncio.Event().wait()


async def test_push_to_talk_release_hears_the_frames_received_before_it():
    """/end_turn while the listener is behind (a slow VAD: the uplink's frames are received
    but not yet judged) ends the utterance after what had arrived, not at the first pause the
    listener reaches: the second word, received before the release, is part of the turn."""
    rate = 48000

    def tone(seconds: float) -> np.ndarray:
        return (0.25 * np.sin(2 * np.pi * 300 * np.arange(round(seconds * rate)) / rate)
                ).astype(np.float32)

    def silence(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * rate), np.float32)

    # word, a pause inside the sentence, word: 1.45 s of the utterance at 16 kHz
    audio = np.concatenate([silence(0.5), tone(0.6), silence(0.25), tone(0.6), silence(0.4)])
    asr = _CountingASR(seconds=0.01)
    session = _FakeSession()
    settings = VADSettings(min_silence_s=20.0, level_margin_db=0.0)  # only the release ends it
    voice = VoiceInput(vad=_LoudnessVAD(seconds=0.02), asr=asr, vad_settings=settings)
    listener = Listener(session, _BurstTrack(audio), voice, VoiceOptions())  # type: ignore[arg-type]
    try:
        while not any(name == "listening" for name, _ in session.emitted):
            await asyncio.sleep(0.005)
        # every frame has been received; the listener has judged only the first word's
        assert listener._received.qsize() > 20
        assert await listener.end_turn() is True
        while not session.asked:
            await asyncio.sleep(0.01)
        heard = int(session.asked[0].split()[1])
        assert heard >= 1.45 * RATE_16K, session.emitted  # both words, not the first alone
    finally:
        await listener.close()
    # a closed listener (the session gone, or deaf after a Triton failure) answers at once
    assert await asyncio.wait_for(listener.end_turn(), 1.0) is False


async def test_a_barge_in_over_the_echo_is_transcribed_from_the_users_voice():
    """An utterance the VAD began on the avatar's echo (what the canceller left of it), carried
    on by the user's voice clearly over the echo until it barged in: the turn is transcribed
    from the user's voice (BARGE_IN_LEAD_S before the loud run), without the echo's words before
    it, which made the whole transcript read as the avatar's own ("Our studio opens every
    morning sessions can run at once.": taken for echo, no turn)."""
    interrupts = []

    class Speaking(_FakeSession):
        speaking = True

        async def interrupt(self) -> None:
            interrupts.append(len(self.emitted))

    asr = _CountingASR(seconds=0.01)
    session = Speaking()
    listener = Listener(session, _SilentTrack(), VoiceInput(vad=None, asr=asr),  # type: ignore[arg-type]
                        VoiceOptions())
    listener.echo = object()  # type: ignore[assignment]  # an echo guard: the loud run is read
    frame_s = VAD_FRAME_SAMPLES / RATE_16K
    echo_frames, user_frames = 60, 40
    try:
        await listener._on(SpeechStarted(0.0))
        for k in range(echo_frames + user_frames):
            listener.activity._frames.append(np.zeros(VAD_FRAME_SAMPLES, np.float32))
            # the echo is speech to the VAD but never over the echo; the user's voice is (the
            # path settled)
            listener._loud_run = 0 if k < echo_frames else listener._loud_run + 1
            listener._settled_run = listener._loud_run
            await listener._on(SpeechContinues((k + 1) * frame_s))
        assert len(interrupts) == 1
        await listener._on(SpeechEnded(np.concatenate(listener.activity._frames), 3.2, 3.5))
        while not session.asked:
            await asyncio.sleep(0.01)
    finally:
        await listener.close()
    lead = round(BARGE_IN_LEAD_S / frame_s)
    assert asr.calls == [(user_frames + lead) * VAD_FRAME_SAMPLES], asr.calls  # old: all 100
    # the next utterance is the user's from its start
    assert listener._users_from == 0


@pytest.mark.parametrize("said_by", ["user", "avatar"])
@pytest.mark.parametrize("ended_by", ["pause", "end"])
async def test_a_barge_in_over_an_unsettled_echo_waits_for_the_words(said_by, ended_by):
    """A run clearly over the echo estimate while the echo path is not settled (the first
    seconds of played sound: a late echo may not have come back yet) does not barge in by its
    level: the avatar's own voice coming back a second late did (CI, a loaded run). The words
    decide: a transcript of the user's words (the speculative one at the first pause, or the
    final one) barges in, `by: "words"`, before the turn is asked; the avatar's own words
    neither barge in nor make a turn."""
    interrupts, order = [], []

    class Speaking(_FakeSession):
        speaking = True

        async def interrupt(self) -> None:
            interrupts.append(len(self.emitted))
            order.append("interrupt")

        def ask(self, text: str) -> None:
            super().ask(text)
            order.append("ask")

    asr = _CountingASR(seconds=0.01)
    session = Speaking()
    heard = f"heard {20 * VAD_FRAME_SAMPLES} samples"  # what _CountingASR makes of the run
    if said_by == "avatar":
        session.history.append({"event": "sentence", "text": heard, "time": time.time()})
    listener = Listener(session, _SilentTrack(), VoiceInput(vad=None, asr=asr),  # type: ignore[arg-type]
                        VoiceOptions())
    listener.echo = object()  # type: ignore[assignment]  # an echo guard: the loud run is read
    frame_s = VAD_FRAME_SAMPLES / RATE_16K
    try:
        await listener._on(SpeechStarted(0.0))
        for k in range(20):
            listener.activity._frames.append(np.zeros(VAD_FRAME_SAMPLES, np.float32))
            listener._loud_run = k + 1  # over the echo, but not over a settled path
            await listener._on(SpeechContinues((k + 1) * frame_s))
        assert interrupts == [] and "barge_in" not in [n for n, _ in session.emitted]
        audio = np.zeros(20 * VAD_FRAME_SAMPLES, np.float32)
        if ended_by == "pause":
            await listener._on(SpeechPaused(audio, 0.64))
            await asyncio.sleep(0.1)
        await listener._on(SpeechEnded(audio, 0.64, 1.0))
        await asyncio.sleep(0.1)
    finally:
        await listener.close()
    barge_ins = [f for n, f in session.emitted if n == "barge_in"]
    if said_by == "user":
        assert len(interrupts) == 1 and len(barge_ins) == 1, session.emitted
        assert barge_ins[0]["by"] == "words"
        assert session.asked == [heard] and order == ["interrupt", "ask"]
    else:
        assert interrupts == [] and barge_ins == [] and session.asked == [], session.emitted


async def test_barge_in_acts_on_speech_before_it_is_a_turn():
    """Three VAD frames of speech (--barge-in-min 0.09) cut the talking avatar off, once per
    run, before --vad-min-speech (0.15 s) makes the speech a turn; a shorter blip does not."""
    interrupts = []

    class Speaking(_FakeSession):
        speaking = True

        async def interrupt(self) -> None:
            interrupts.append(len(self.emitted))

    session = Speaking()
    listener = Listener(session, _SilentTrack(), VoiceInput(vad=None, asr=_CountingASR()),  # type: ignore[arg-type]
                        VoiceOptions())
    frame = VAD_FRAME_SAMPLES / 16000
    for run in (1, 2):  # a two-frame blip (a click): nothing
        await listener._on(SpeechOnset(run * frame))
    assert interrupts == []
    for run in (1, 2, 3, 4):
        await listener._on(SpeechOnset(run * frame))
    await listener._on(SpeechStarted(0.0))
    await listener._on(SpeechContinues(0.5))
    assert len(interrupts) == 1
    assert [name for name, _ in session.emitted] == ["barge_in", "listening"]
    assert session.emitted[0][1]["after_s"] == round(3 * frame, 3)
    await listener.close()


async def test_vad_state_is_per_session(triton, speech):
    """Two detectors fed interleaved frames concurrently (batched together by Triton) give the
    probabilities each gives alone: no state leaks between sessions."""
    vad = SileroVAD(triton.url)
    try:
        question = at_16k(*speech[QUESTION])
        silence = np.zeros_like(question)
        alone = VoiceActivity(vad)
        reference = []
        for f in frames_of(question):
            await alone.feed(f)
            reference.append(alone.last_probability)
        a, b = VoiceActivity(vad), VoiceActivity(vad)
        together = []
        for fa, fb in zip(frames_of(question), frames_of(silence)):
            await asyncio.gather(a.feed(fa), b.feed(fb))
            together.append(a.last_probability)
        np.testing.assert_allclose(together, reference, atol=1e-4)
        assert b.last_probability < 0.1
    finally:
        await vad.close()


async def test_whisper_on_triton_transcribes_piper(triton, speech):
    asr = WhisperOnTriton(triton.url)
    try:
        text = await asr.transcribe(at_16k(*speech[QUESTION]))
        assert {"sessions", "once"} <= set(words(text)), text
        assert await asr.transcribe(np.zeros(RATE_16K, np.float32)) in ("", "you", "You")
    finally:
        await asr.close()


async def test_asr_url_speaks_openai_transcriptions():
    seen = {}

    async def transcriptions(request: web.Request) -> web.Response:
        form = await request.post()
        seen.update(model=form["model"], auth=request.headers.get("Authorization"),
                    wav=form["file"].file.read())
        return web.json_response({"text": " What time do you open? "})

    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    asr = OpenAITranscription(f"http://127.0.0.1:{port}", "sensevoice", api_key="k")
    try:
        assert await asr.transcribe(np.zeros(RATE_16K, np.float32)) == "What time do you open?"
        assert seen["model"] == "sensevoice" and seen["auth"] == "Bearer k"
        assert seen["wav"][:4] == b"RIFF" and len(seen["wav"]) == 44 + 2 * RATE_16K
    finally:
        await asr.close()
        await runner.cleanup()


@pytest.fixture(scope="module")
async def voice_server(triton):
    async with running_server(server_settings(triton)) as server:
        yield server


async def test_spoken_question_gets_the_faq_answer(voice_server, speech):
    base_url, services = voice_server
    mic = Microphone()
    client = AvatarClient(base_url, keep_video=False, microphone=mic)
    try:
        await client.connect()
        await client.wait_for_video(5)
        await asyncio.sleep(0.5)
        mic.play(*speech[QUESTION])
        transcript = await wait_event(services, client, "transcript", final=True)
        assert {"sessions", "once"} <= set(words(transcript["text"])) and transcript["turn"], transcript
        events = [e["event"] for e in history(services, client)]
        assert events.index("listening") < events.index("transcript")
        end = await wait_event(services, client, "end", timeout=30)
        assert end["kind"] == "chat" and end["answer"].startswith(ANSWER_START), end
        assert mic.speech_ended_at is not None
        await client.wait_for_speech(mic.speech_ended_at, timeout=1)  # the answer was heard
        session = services.registry.get(client.sessionid)
        assert session.listener is not None
        sessionid = client.sessionid
    finally:
        await client.close()
    deadline = time.monotonic() + 10
    while any(t.get_name() == f"listener-{sessionid}" for t in asyncio.all_tasks()):
        assert time.monotonic() < deadline, "listener task outlived its session"
        await asyncio.sleep(0.05)


async def test_silence_and_noise_make_no_turn(voice_server):
    base_url, services = voice_server
    mic = Microphone()
    client = AvatarClient(base_url, keep_video=False, microphone=mic)
    try:
        await client.connect()
        await client.wait_for_video(5)
        rng = np.random.default_rng(1)
        mic.play((0.03 * rng.standard_normal(2 * 48000)).astype(np.float32), 48000)
        await asyncio.sleep(3.5)  # 1 s of silence, 2 s of noise, then silence
        events = [e["event"] for e in history(services, client)]
        assert not {"listening", "transcript", "question", "start"} & set(events), events
        assert services.registry.get(client.sessionid).listener is not None
    finally:
        await client.close()


async def test_barge_in_silences_the_avatar(voice_server, speech):
    base_url, services = voice_server
    mic = Microphone()
    client = AvatarClient(base_url, keep_video=False, microphone=mic)
    try:
        await client.connect(voice_mode="echo")
        await client.wait_for_video(5)
        status, _ = await client.post("/human", type="echo", text=LONG_ECHO)
        assert status == 200
        await wait_event(services, client, "start")
        await client.wait_for_speech(time.monotonic() - 1, timeout=10)
        # past the first ECHO_SETTLE_S of played sound: before it, the words decide (by: "words")
        await asyncio.sleep(ECHO_SETTLE_S + 0.5)
        mic.play(*speech["Hello there."])
        interrupted = await wait_event(services, client, "interrupted", timeout=10)
        assert interrupted["text"] == LONG_ECHO
        barge_in = next(e for e in history(services, client) if e["event"] == "barge_in")
        assert barge_in["by"] == "level", barge_in  # the voice's level, before any words
        await asyncio.sleep(0.5)
        quiet_from = time.monotonic()
        await asyncio.sleep(0.3)
        r = client.received
        level = [rms for t, rms in zip(r.audio_times, r.audio_rms) if t >= quiet_from]
        assert level and max(level) < 0.01, max(level)
        # the interrupting words become the next turn (echo)
        transcript = await wait_event(services, client, "transcript", timeout=15, final=True)
        assert "hello" in words(transcript["text"]), transcript
    finally:
        await client.close()


async def test_offer_rejects_a_bad_voice_mode(voice_server):
    base_url, _ = voice_server
    client = AvatarClient(base_url, microphone=Microphone())
    try:
        with pytest.raises(RuntimeError, match="voice_mode"):
            await client.connect(voice_mode="shout")
    finally:
        await client.close()


async def test_push_to_talk_release_ends_the_turn_without_the_silence_wait(triton, speech):
    """POST /end_turn (push-to-talk released) makes the utterance a turn at its next non-speech
    frame: with an end-of-turn silence far longer than the test, the answer still comes."""
    settings = replace(server_settings(triton), vad_min_silence_s=20.0)
    async with running_server(settings) as (base_url, services):
        mic = Microphone()
        client = AvatarClient(base_url, keep_video=False, microphone=mic)
        try:
            await client.connect()
            await client.wait_for_video(5)
            assert await client.end_turn() is False  # nobody speaking: nothing to end
            mic.play(*speech[QUESTION])
            await wait_event(services, client, "listening")
            while mic.speech_ended_at is None:
                await asyncio.sleep(0.02)
            assert await client.end_turn() is True
            transcript = await wait_event(services, client, "transcript", timeout=10, final=True)
            assert {"sessions", "once"} <= set(words(transcript["text"])) and transcript["turn"]
            end = await wait_event(services, client, "end", timeout=30)
            assert end["answer"].startswith(ANSWER_START), end
        finally:
            await client.close()
        silent = AvatarClient(base_url, keep_video=False)  # no microphone track
        try:
            await silent.connect()
            status, answer = await silent.post("/end_turn")
            assert status == 409 and "microphone" in answer["msg"], answer
        finally:
            await silent.close()
