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
`dropped` then says why: "short", "no_speech" or "hallucination"), then the usual
`question`/`start`/`sentence`/`end` of the
answer. Echo cancellation is the browser's (getUserMedia `echoCancellation: true`): the avatar's
own voice must not come back up the uplink, or it would interrupt itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

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
from ..vad.base import VAD, VAD_FRAME_S, VAD_SAMPLE_RATE_HZ
from .microphone import uplink_frames

log = logging.getLogger(__name__)
FAILURES = RateLimitedLog(log)  # expected failures of the ASR server: one line each

VOICE_MODES = ("chat", "echo", "off")


class Events(Protocol):
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

    mode: str = "chat"  # what a transcript becomes: a question, an echo, or nothing ("off")
    barge_in: bool = True


@dataclass
class VoiceInput:
    """What every session's listener shares: the VAD and ASR engines and their settings."""

    vad: VAD
    asr: ASREngine
    vad_settings: VADSettings = VADSettings()
    barge_in_min_s: float = DEFAULT_BARGE_IN_MIN_S

    async def close(self) -> None:
        await self.vad.close()
        await self.asr.close()


class Listener:
    """Runs while the session lives; `close` ends it and every turn it started."""

    def __init__(self, session: Conversation, track: MediaStreamTrack, voice: VoiceInput,
                 options: VoiceOptions) -> None:
        self.session = session
        self.voice = voice
        self.options = options
        self.activity = VoiceActivity(voice.vad, voice.vad_settings)
        self._turns: set[asyncio.Task] = set()
        self._barged = False
        # (pause_s, transcription) started at the current pause, if any
        self._speculation: tuple[float, asyncio.Task] | None = None
        # (transcription, sender) of a stale speculation becoming a partial
        self._partial: tuple[asyncio.Task, asyncio.Task] | None = None
        self._utterance = 0  # counts utterances: a partial of an ended one is not sent
        self.speech_ended_at: float | None = None  # monotonic time of the last detected end
        self._task = asyncio.create_task(self._listen(track),
                                         name=f"listener-{session.sessionid}")

    async def _listen(self, track: MediaStreamTrack) -> None:
        try:
            async for frame in uplink_frames(track):
                event = await self.activity.feed(frame)
                if event is not None:
                    await self._on(event)
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

    async def _on(self, event) -> None:
        session = self.session
        if isinstance(event, SpeechOnset):
            # Not yet a turn, but barge-in may act on it: every frame it waits for is heard
            # over the avatar. A run of one frame is a new run: it may barge in again.
            if event.duration_s <= VAD_FRAME_S + 1e-9:
                self._barged = False
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
            if self.options.mode != "off" and not self._too_little(event.speech_s):
                self._speculation = (event.pause_s, self._start(
                    self._transcribe(event.audio), f"asr-{session.sessionid}"))
        elif isinstance(event, SpeechEnded):
            self._barged = False
            self._utterance += 1  # partials still running belong to the ended utterance
            self.speech_ended_at = time.monotonic()
            if self._too_short(event):
                return
            speculation, self._speculation = self._speculation, None
            if speculation is not None and speculation[0] != event.end_s:
                self._speculation = speculation  # stale (cut at max_utterance_s): dropped
                self._drop_speculation()
                speculation = None
            transcription = (speculation[1] if speculation is not None
                             else self._start(self._transcribe(event.audio),
                                              f"asr-{session.sessionid}"))
            self._start(self._turn(event, transcription, speculation is not None),
                        f"turn-{session.sessionid}")

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

    async def _maybe_barge_in(self, speech_s: float) -> None:
        session = self.session
        if (self.options.barge_in and not self._barged and session.speaking
                and speech_s >= self.voice.barge_in_min_s):
            self._barged = True
            session.events.emit("barge_in", after_s=round(speech_s, 3))
            await session.interrupt()

    def end_turn(self) -> bool:
        """Push-to-talk released: the utterance under way ends at its next non-speech frame and
        becomes a turn now, not after the end-of-turn silence (`--vad-min-silence`). False when
        the user is not speaking."""
        return self.activity.end_turn()

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
        if utterance == self._utterance and text and not self.session.closed:
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
                    speculative: bool) -> None:
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
        turn = has_speakable(text) and self.options.mode != "off" and not session.closed
        extra = {"dropped": dropped} if dropped and dropped != "empty" else {}
        session.events.emit("transcript", text=text, final=True, turn=turn, asr_ms=asr_ms,
                            speculative=speculative, wait_ms=wait_ms,
                            seconds=round(event.audio.size / VAD_SAMPLE_RATE_HZ, 2), **extra)
        if not turn:
            return
        try:
            if self.options.mode == "chat":
                session.ask(text)
            else:
                session.say(text)
        except ApiError as exc:  # queue full: the turn is dropped, said so
            session.events.emit("error", msg=exc.msg)

    async def close(self) -> None:
        self._speculation = self._partial = None
        tasks = [self._task, *self._turns]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._turns.clear()
