"""Turn-taking: one session's listener over the user's microphone track.

uplink frames -> VoiceActivity (a VAD engine: Silero on Triton) -> at the end of an utterance,
ASR -> the transcript goes to `chat` (or `echo`) like a typed /human. While the avatar talks, user
speech that lasts at least `barge_in_min_s` interrupts it through the session's `interrupt` (a
`Conversation`), the mechanism
/interrupt_talk uses (the default, three VAD frames, fires before the VAD confirms a turn).

Speculative transcription: ASR starts at the first silent frame after speech (SpeechPaused),
while the end-of-turn silence is still being confirmed; the turn uses that transcript when the
silence lasts (SpeechEnded at the same pause) and drops it when speech resumes (the longer
utterance is transcribed at its own end). Only the SpeechEnded handler starts a turn, so a turn
is answered once whichever transcript it uses.

Partial transcripts: Whisper does not stream, but a speculative transcript made stale by
resumed speech is the utterance so far: it is let finish and sent as a partial `transcript`
(`final: false`, no turn), unless a newer pause's transcript or the utterance's end came first.
So a user who pauses mid-sentence sees what was heard so far at no extra ASR cost (the request
is already in Triton by then).

Noise: speech is what the VAD engine and the level gate both pass (vad/activity.py: a margin
above the room's noise floor), an utterance holding less than `min_turn_speech_s` of it is no
turn (not even transcribed), and a transcript that is what Whisper invents on noise (its own
scores weak, or one of its known phrases on silence: asr/hallucinations.py) is nothing said.

Events (SSE): `listening` when the user starts speaking, `barge_in` when that speech interrupts
the avatar (followed by the usual `interrupted`), `transcript` (partial with `final: false`,
then final with `final: true`; `text` "" when nothing intelligible was said: no turn, and
`dropped` then says why: "short", "background", "no_speech" or "hallucination"), then the usual
`question`/`start`/`sentence`/`end` of the answer.

The avatar must not hear itself (voice_input/echo.py): the uplink is echo-cancelled against what
the session plays (`--no-echo-cancellation` turns that off; the browser's own getUserMedia
`echoCancellation` comes first); while the avatar speaks, barge-in needs speech clearly louder
than the echo estimate (`barge_in {by: "level"}`), and until the echo path has settled (the
first seconds of played sound: a late echo may not have come back yet) it waits for the words
instead (`by: "words"`: the first transcript of the utterance that is not the avatar's own); and
a transcript that repeats what the avatar said in the last seconds is echo (`transcript` with
`echo: true`, no turn). `voice_mode` "half-duplex" goes further: no barge-in, and no turn from
an utterance heard while the avatar spoke, except one ended by push-to-talk (`end_turn`), which
interrupts the avatar and is answered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from ..asr import ASREngine, ASRError
from ..asr.hallucinations import nothing_said
from ..errors import ApiError
from ..rate_limited_log import RateLimitedLog
from ..settings import DEFAULT_BARGE_IN_MIN_S
from ..speech.items import has_speakable
from ..triton.client import triton_failure
from ..vad.activity import (
    SpeechContinues,
    SpeechEnded,
    SpeechOnset,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    VADSettings,
    VoiceActivity,
)
from ..vad.base import VAD, VAD_FRAME_S, VAD_FRAME_SAMPLES, VAD_SAMPLE_RATE_HZ
from .echo import (
    CLEAR_OF_ECHO_FRAMES,
    ECHO_MAX_DELAY_S,
    SAID_LOOKBACK_S,
    EchoGuard,
    PlayedAudio,
    open_canceller,
    said_by_avatar,
)
from .microphone import uplink_frames

log = logging.getLogger(__name__)
FAILURES = RateLimitedLog(log)  # expected failures of the ASR server: one line each

VOICE_MODES = ("chat", "echo", "off", "half-duplex")
HALF_DUPLEX = "half-duplex"  # a chat question, but nothing the user says over the avatar counts
# Push-to-talk released (/end_turn): the audio sent just before the release may still be on the
# wire or in the receiver's jitter buffer (one 20 ms packet held, microphone.py), so the frames
# received this long after the request are heard as part of the utterance.
END_TURN_IN_FLIGHT_S = 0.06
# ... and a listener this far behind (a Triton that stopped answering) is not waited for: the
# utterance ends at what it has judged.
END_TURN_CATCH_UP_S = 3.0
# An utterance that barges in over the avatar's echo is transcribed from this long before the
# run of frames clearly over the echo that barged in: before it, the VAD may have heard the
# echo itself (the avatar's words, then the user's in one utterance, were taken for echo as a
# whole); the lead keeps a first word the user said under the echo's margin.
BARGE_IN_LEAD_S = 0.5


class Events(Protocol):
    # The latest events (each with its wall-clock `time`): the avatar's `sentence`s are read back
    # from it to tell its echo from the user's words.
    history: list[dict]

    def emit(self, event: str, **fields) -> None:
        """One event (SSE `event` and its fields) to the session's subscribers."""


class Conversation(Protocol):
    """What turn-taking asks of the session it listens for (session/session.py `Session`):
    its events, whether the avatar is speaking, and the same say, ask and interrupt that
    /human and /interrupt_talk use. ApiError from say/ask (a full queue) is reported, not
    raised."""

    sessionid: int
    events: Events

    @property
    def speaking(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    async def interrupt(self) -> None: ...

    def say(self, text: str) -> object: ...

    def ask(self, question: str) -> object: ...


@dataclass(frozen=True)
class VoiceOptions:
    """Per session (/offer `voice_mode`, `barge_in`)."""

    # what a transcript becomes: a question ("chat", "half-duplex"), an echo, or nothing ("off")
    mode: str = "chat"
    barge_in: bool = True


@dataclass
class VoiceInput:
    """What every session's listener shares: the VAD and ASR engines and their settings."""

    vad: VAD
    asr: ASREngine
    vad_settings: VADSettings = VADSettings()
    barge_in_min_s: float = DEFAULT_BARGE_IN_MIN_S
    echo_cancellation: bool = True  # --no-echo-cancellation: the guards alone

    async def close(self) -> None:
        await self.vad.close()
        await self.asr.close()


class Listener:
    """Runs while the session lives; `close` ends it and every turn it started."""

    def __init__(self, session: Conversation, track: MediaStreamTrack, voice: VoiceInput,
                 options: VoiceOptions, played: PlayedAudio | None = None) -> None:
        """`played`: what the session plays (a sink of its ticks), the echo reference; None:
        no echo handling (a session that plays nothing to this microphone)."""
        self.session = session
        self.voice = voice
        self.options = options
        self.activity = VoiceActivity(voice.vad, voice.vad_settings)
        self.echo = (EchoGuard(played, open_canceller() if voice.echo_cancellation else None)
                     if played is not None else None)
        self._loud_run = 0  # frames in a row clearly louder than the avatar's echo
        # ... judged over a settled echo path (echo.py: ECHO_SETTLE_S); frames over an unsettled
        # one may be the avatar's voice coming back later than any echo heard so far
        self._settled_run = 0
        # the utterance under way had CLEAR_OF_ECHO_FRAMES in a row over the echo (or no echo):
        # one that never had is the avatar's own voice, whatever its transcript says
        self._clear_of_echo = False
        self._overlapped = False  # the utterance under way was heard while the avatar spoke
        self._forced = False  # ... and push-to-talk ended it (half-duplex: a turn all the same)
        self._turns: set[asyncio.Task] = set()
        self._barged = False
        # the run that would have barged in was over an echo path not settled yet (it may be
        # the avatar's own voice coming back late): the barge-in waits for the words
        self._barge_waits = False
        # VAD frame of the utterance under way where the user's voice begins: set at a barge-in
        # over the echo (BARGE_IN_LEAD_S before its loud run); 0: the utterance is all theirs
        self._users_from = 0
        # (pause_s, transcription) started at the current pause, if any
        self._speculation: tuple[float, asyncio.Task] | None = None
        # (transcription, sender) of a stale speculation becoming a partial
        self._partial: tuple[asyncio.Task, asyncio.Task] | None = None
        self._utterance = 0  # counts utterances: a partial of an ended one is not sent
        self.speech_ended_at: float | None = None  # monotonic time of the last detected end
        # The uplink's frames as received (with their arrival times), not yet judged: the VAD
        # may fall behind the uplink (a loaded Triton), and push-to-talk ends the utterance
        # after what had been received, not at the first pause the listener reaches.
        self._received: asyncio.Queue[tuple[np.ndarray, float] | None] = asyncio.Queue()
        self._received_frames = 0
        self._judged_frames = 0
        # end_turn() requests: (frames received by then, the future told the verdict)
        self._end_requests: list[tuple[int, asyncio.Future[bool]]] = []
        self._task = asyncio.create_task(self._listen(track),
                                         name=f"listener-{session.sessionid}")

    async def _listen(self, track: MediaStreamTrack) -> None:
        reader = asyncio.create_task(self._read(track), name=f"uplink-{self.session.sessionid}")
        try:
            while (item := await self._received.get()) is not None:
                frame, arrived_s = item
                if self.echo is not None:
                    # AEC3 on 32 ms: ~0.3 ms, inline (less than an executor round trip)
                    frame = self.echo.process(frame, arrived_s)
                    over = self.echo.over_echo
                    self._loud_run = self._loud_run + 1 if over else 0
                    self._settled_run = (self._settled_run + 1
                                         if over and not self.echo.echo_unsettled else 0)
                event = await self.activity.feed(frame)
                if event is not None:
                    await self._on(event)
                self._judged_frames += 1
                self._end_if_requested()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Triton down and the like: the avatar goes on, deaf
            cause = triton_failure(exc)
            if cause is None:  # a bug of ours
                log.exception("listener stopped sessionid=%s", self.session.sessionid)
            else:  # expected: Triton went away
                FAILURES.log("triton", logging.WARNING, "listener stopped sessionid=%s: Triton "
                             "failed (%s)", self.session.sessionid, cause)
            self.session.events.emit("error", msg="voice input stopped")
        finally:
            for _, verdict in self._end_requests:  # deaf from now on: nothing more will end
                if not verdict.done():
                    verdict.set_result(False)
            self._end_requests.clear()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, track: MediaStreamTrack) -> None:
        """The uplink's frames with the time each was received, read as they come: the
        listener may fall behind (a slow VAD call) without its arrival times (the echo
        reference's clock) falling behind with it. None when the track ends."""
        try:
            async for frame in uplink_frames(track):
                self._received.put_nowait((frame, time.monotonic()))
                self._received_frames += 1
        finally:
            self._received.put_nowait(None)

    async def _on(self, event) -> None:
        session = self.session
        if isinstance(event, SpeechOnset) and event.duration_s <= VAD_FRAME_S + 1e-9:
            # A run of one frame is a new run: it may barge in again.
            self._barged = self._barge_waits = self._overlapped = self._clear_of_echo = False
            self._users_from = 0
        if session.speaking and not isinstance(event, SpeechEnded):
            self._overlapped = True
        if self.echo is None or self._loud_run >= CLEAR_OF_ECHO_FRAMES:
            self._clear_of_echo = True
        if isinstance(event, SpeechOnset):
            # Not yet a turn, but barge-in may act on it: every frame it waits for is heard
            # over the avatar.
            await self._maybe_barge_in(event.duration_s)
        elif isinstance(event, SpeechStarted):
            session.events.emit("listening", speaking=True)
            await self._maybe_barge_in(self.activity.settings.min_speech_s)
        elif isinstance(event, SpeechContinues):
            if isinstance(event, SpeechResumed):
                self._to_partial()
            await self._maybe_barge_in(event.duration_s)
        elif isinstance(event, SpeechPaused):
            self._drop_speculation()
            # too little speech yet for a turn: no transcript now (the end will not need it)
            if (self.options.mode != "off" and not self._ignored()
                    and not self._too_little(event.speech_s)):
                self._speculation = (event.pause_s, self._start(
                    self._transcribe(self._users_part(event.audio)), f"asr-{session.sessionid}"))
                if self._barge_waits:
                    self._start(self._barge_in_on_words(self._speculation[1], self._utterance,
                                                        event.audio.size),
                                f"barge-in-{session.sessionid}")
        elif isinstance(event, SpeechEnded):
            barge_waits = self._barge_waits  # (never set once barged)
            self._barged = self._barge_waits = False
            audio = self._users_part(event.audio)
            self._users_from = 0
            self._utterance += 1  # partials still running belong to the ended utterance
            self.speech_ended_at = time.monotonic()
            ignored = self._ignored()
            clear = self._clear_of_echo
            self._overlapped = self._forced = self._clear_of_echo = False
            if ignored:  # half-duplex: said over the avatar, not a turn (and not transcribed)
                self._drop_speculation()
                session.events.emit("transcript", text="", final=True, turn=False,
                                    ignored="avatar speaking")
                return
            if self._too_short(event) or self._background(event):
                return
            speculation, self._speculation = self._speculation, None
            if speculation is not None and speculation[0] != event.end_s:
                self._speculation = speculation  # stale (cut at max_utterance_s): dropped
                self._drop_speculation()
                speculation = None
            transcription = (speculation[1] if speculation is not None
                             else self._start(self._transcribe(audio),
                                              f"asr-{session.sessionid}"))
            self._start(self._turn(event, transcription, speculation is not None, clear,
                                   barge_waits),
                        f"turn-{session.sessionid}")

    def _users_part(self, audio: np.ndarray) -> np.ndarray:
        """The utterance's audio (16 kHz) from where the user's voice begins (`_users_from`)."""
        return audio[self._users_from * VAD_FRAME_SAMPLES:] if self._users_from else audio

    def _too_little(self, speech_s: float | None) -> bool:
        return speech_s is not None and speech_s < self.activity.settings.min_turn_speech_s

    def _too_short(self, event: SpeechEnded) -> bool:
        """An utterance with less speech than a turn needs (a cough, a door, a burst of the
        background): no transcript is asked for, the `listening` it caused is closed by an
        empty one."""
        if not self._too_little(event.speech_s):
            return False
        self._drop_speculation()
        self.session.events.emit("transcript", text="", final=True, turn=False, asr_ms=0,
                                 speculative=False, wait_ms=0, dropped="short",
                                 seconds=round(event.audio.size / VAD_SAMPLE_RATE_HZ, 2))
        return True

    def _background(self, event: SpeechEnded) -> bool:
        """The background rising, not a voice (SpeechEnded.background: the silence that ended it
        is nearly as loud as its speech): no transcript is asked for, the `listening` is closed
        by an empty one."""
        if event.over_silence_db is not None:
            log.debug("utterance sessionid=%s stood %.1f dB over the silence that ended it",
                      self.session.sessionid, event.over_silence_db)
        if not event.background:
            return False
        self._drop_speculation()
        self.session.events.emit("transcript", text="", final=True, turn=False, asr_ms=0,
                                 speculative=False, wait_ms=0, dropped="background",
                                 seconds=round(event.audio.size / VAD_SAMPLE_RATE_HZ, 2))
        return True

    def _ignored(self) -> bool:
        """Half-duplex: the utterance under way was heard while the avatar spoke, and push-to-talk
        did not end it."""
        return self.options.mode == HALF_DUPLEX and self._overlapped and not self._forced

    async def _maybe_barge_in(self, speech_s: float) -> None:
        session = self.session
        # Over the avatar's echo, only speech clearly louder than it counts (voice_input/echo.py)
        loud_s = self._loud_run * VAD_FRAME_S if self.echo is not None else math.inf
        if (self.options.barge_in and self.options.mode != HALF_DUPLEX and not self._barged
                and session.speaking and min(speech_s, loud_s) >= self.voice.barge_in_min_s - 1e-9):
            if self.echo is not None and not self._barge_waits:
                lead = round(BARGE_IN_LEAD_S / VAD_FRAME_S)
                self._users_from = max(0, self.activity.buffered_frames - self._loud_run - lead)
            if (self.echo is not None
                    and self._settled_run * VAD_FRAME_S < self.voice.barge_in_min_s - 1e-9):
                self._barge_waits = True  # the level cannot tell it from a late echo
                return
            self._barged, self._barge_waits = True, False
            await self._interrupt_for_user(speech_s, "level")

    async def _interrupt_for_user(self, speech_s: float, by: str) -> None:
        """Barge-in: the `barge_in` event (`by` "level" or "words"), then the interruption."""
        self.session.events.emit("barge_in", after_s=round(speech_s, 3), by=by)
        await self.session.interrupt()

    async def _barge_in_on_words(self, transcription: asyncio.Task, utterance: int,
                                 samples: int) -> None:
        """A barge-in that waited for the words (a run over an echo path not settled): made
        when the utterance's transcript so far (`transcription`, of its first `samples` at
        16 kHz) is speakable words the avatar did not just say, and the avatar still speaks."""
        await asyncio.wait([transcription])
        if transcription.cancelled() or transcription.exception() is not None:
            return  # dropped (speech resumed and a newer pause came) or failed: the end tells
        text, speech_s = transcription.result()[0], samples / VAD_SAMPLE_RATE_HZ
        session = self.session
        if (utterance != self._utterance or not self._barge_waits or not session.speaking
                or session.closed or not has_speakable(text)
                or self._echo_of_avatar(text, speech_s)):
            return
        self._barged, self._barge_waits = True, False
        await self._interrupt_for_user(speech_s, "words")

    async def end_turn(self) -> bool:
        """Push-to-talk released: the utterance under way ends at its first non-speech frame
        after the audio received by then (and END_TURN_IN_FLIGHT_S more, still on the wire) and
        becomes a turn now, not after the end-of-turn silence (`--vad-min-silence`). Returns
        once the listener has judged that audio (at most END_TURN_CATCH_UP_S): False when the
        user was not speaking. Half-duplex: the avatar, if speaking, is interrupted at once, and
        the utterance is a turn even though it was heard over the avatar."""
        if self.options.mode == HALF_DUPLEX:
            # the utterance under way, or the next (its frames may not be heard yet), is a turn
            self._forced = True
            if self.session.speaking:
                self._start(self.session.interrupt(), f"interrupt-{self.session.sessionid}")
        await asyncio.sleep(END_TURN_IN_FLIGHT_S)
        if self._task.done():
            return False
        verdict: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        request = (self._received_frames, verdict)
        self._end_requests.append(request)
        self._end_if_requested()
        try:
            async with asyncio.timeout(END_TURN_CATCH_UP_S):
                return await asyncio.shield(verdict)
        except TimeoutError:
            if verdict.done():  # judged in the same loop turn as the timeout fired
                return verdict.result()
            self._end_requests.remove(request)
            log.warning("push-to-talk: the listener is over %.0f s behind the uplink "
                        "sessionid=%s; the utterance ends at what it has heard",
                        END_TURN_CATCH_UP_S, self.session.sessionid)
            return self.activity.end_turn()

    def _end_if_requested(self) -> None:
        """Each end_turn() whose audio has all been judged ends the utterance from the next
        frame on (the requests are in order of their frame counts)."""
        while self._end_requests and self._end_requests[0][0] <= self._judged_frames:
            _, verdict = self._end_requests.pop(0)
            if not verdict.done():
                verdict.set_result(self.activity.end_turn())

    def _start(self, coro, name: str) -> asyncio.Task:
        """A task of this listener: `close` cancels it."""
        task = asyncio.create_task(coro, name=name)
        self._turns.add(task)
        task.add_done_callback(self._turns.discard)
        return task

    def _to_partial(self) -> None:
        """Speech resumed: the transcript started at the pause is now a partial."""
        if self._speculation is None:
            return
        _, task = self._speculation
        self._speculation = None
        if self._partial is not None:  # an older partial: superseded by this one
            for older in self._partial:
                older.cancel()
        self._partial = (task, self._start(self._send_partial(task, self._utterance),
                                           f"partial-{self.session.sessionid}"))

    async def _send_partial(self, transcription: asyncio.Task, utterance: int) -> None:
        try:
            text, asr_ms, _ = await transcription
        except ASRError:
            return  # a partial that failed is just not sent; the final will say
        if (utterance == self._utterance and text and not self.session.closed
                and not self._echo_of_avatar(text, None)):
            self.session.events.emit("transcript", text=text, final=False, turn=False,
                                     asr_ms=asr_ms)

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            _, task = self._speculation
            self._speculation = None
            task.cancel()
            if task.done() and not task.cancelled():
                task.exception()  # a failed, now unused transcript: retrieved, not logged

    async def _transcribe(self, audio) -> tuple[str, int, str | None]:
        """(text, ASR time in ms, why nothing was said or None): text "" when dropped."""
        started = time.monotonic()
        transcript = await self.voice.asr.transcribe_scored(audio)
        asr_ms = round((time.monotonic() - started) * 1000)
        dropped = nothing_said(transcript)
        if dropped is not None and transcript.text:
            log.info("transcript dropped sessionid=%s reason=%s text=%r scores=%s",
                     self.session.sessionid, dropped, transcript.text[:80],
                     [(round(x.no_speech_prob, 2), round(x.avg_logprob, 2))
                      for x in transcript.scores])
        return ("" if dropped else transcript.text), asr_ms, dropped

    async def _turn(self, event: SpeechEnded, transcription: asyncio.Task,
                    speculative: bool, clear_of_echo: bool = True,
                    barge_waits: bool = False) -> None:
        """The utterance's final transcript, and the turn it makes; `barge_waits`: its barge-in
        waited for the words (and none was made from a partial transcript)."""
        session = self.session
        ended_at = time.monotonic()
        try:
            text, asr_ms, dropped = await transcription
        except ASRError as exc:
            FAILURES.log("asr", logging.WARNING, "speech recognition failed sessionid=%s: %s",
                         session.sessionid, exc)
            session.events.emit("error", msg=f"speech recognition failed: {exc}")
            return
        wait_ms = round((time.monotonic() - ended_at) * 1000)
        seconds = event.audio.size / VAD_SAMPLE_RATE_HZ
        echo = bool(text) and (not clear_of_echo or self._echo_of_avatar(
            text, seconds + (time.monotonic() - ended_at)))
        turn = (has_speakable(text) and self.options.mode != "off" and not session.closed
                and not echo)
        extra = {"dropped": dropped} if dropped and dropped != "empty" else {}
        if echo:
            extra["echo"] = True
        session.events.emit("transcript", text=text, final=True, turn=turn, asr_ms=asr_ms,
                            speculative=speculative, wait_ms=wait_ms, seconds=round(seconds, 2),
                            **extra)
        if not turn:
            return
        if barge_waits and session.speaking:  # the user's words: the barge-in that waited
            await self._interrupt_for_user(seconds, "words")
        try:
            if self.options.mode in ("chat", HALF_DUPLEX):
                session.ask(text)
            else:
                session.say(text)
        except ApiError as exc:  # queue full: the turn is dropped, said so
            session.events.emit("error", msg=exc.msg)

    def _echo_of_avatar(self, text: str, utterance_s: float | None) -> bool:
        """`text` repeats what the avatar said while the utterance (`utterance_s` long, ending
        now; None: the last SAID_LOOKBACK_S) could hear it: its own voice came back."""
        now = time.time()
        since = now - (utterance_s or 0.0) - ECHO_MAX_DELAY_S - SAID_LOOKBACK_S
        said = [e["text"] for e in self.session.events.history
                if e["event"] == "sentence" and e["time"] >= since]
        return said_by_avatar(text, said)

    async def close(self) -> None:
        self._speculation = self._partial = None
        tasks = [self._task, *self._turns]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._turns.clear()
