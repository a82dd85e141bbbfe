"""Turn-taking: one session's listener over the user's microphone track.

uplink frames -> VoiceActivity (Silero on Triton) -> at the end of an utterance, ASR -> the
transcript goes to `chat` (or `echo`) like a typed /human. While the avatar talks, user speech
that lasts at least `barge_in_min_s` interrupts it through `Session.interrupt`, the mechanism
/interrupt_talk uses.

Events (SSE): `listening` when the user starts speaking, `barge_in` when that speech interrupts
the avatar (followed by the usual `interrupted`), `transcript` (final; `text` "" when nothing
intelligible was said: no turn), then the usual `question`/`start`/`sentence`/`end` of the
answer. Echo cancellation is the browser's (getUserMedia `echoCancellation: true`): the avatar's
own voice must not come back up the uplink, or it would interrupt itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiortc.mediastreams import MediaStreamTrack

from .asr import ASREngine, ASRError
from .errors import ApiError
from .speech import has_speakable
from .uplink import uplink_frames
from .vad import (
    VAD_SAMPLE_RATE_HZ,
    SileroVAD,
    SpeechContinues,
    SpeechEnded,
    SpeechStarted,
    VADSettings,
    VoiceActivity,
)

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

VOICE_MODES = ("chat", "echo", "off")
DEFAULT_BARGE_IN_MIN_S = 0.2


@dataclass(frozen=True)
class VoiceOptions:
    """Per session (/offer `voice_mode`, `barge_in`)."""

    mode: str = "chat"  # what a transcript becomes: a question, an echo, or nothing ("off")
    barge_in: bool = True


@dataclass
class VoiceInput:
    """What every session's listener shares: the VAD and ASR engines and their settings."""

    vad: SileroVAD
    asr: ASREngine
    vad_settings: VADSettings = VADSettings()
    barge_in_min_s: float = DEFAULT_BARGE_IN_MIN_S

    async def close(self) -> None:
        await self.vad.close()
        await self.asr.close()


class Listener:
    """Runs while the session lives; `close` ends it and every turn it started."""

    def __init__(self, session: Session, track: MediaStreamTrack, voice: VoiceInput,
                 options: VoiceOptions) -> None:
        self.session = session
        self.voice = voice
        self.options = options
        self.activity = VoiceActivity(voice.vad, voice.vad_settings)
        self._turns: set[asyncio.Task] = set()
        self._barged = False
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
        except Exception:  # Triton down and the like: the avatar goes on, deaf
            log.exception("listener stopped sessionid=%s", self.session.sessionid)
            self.session.events.emit("error", msg="voice input stopped")

    async def _on(self, event) -> None:
        session = self.session
        if isinstance(event, SpeechStarted):
            self._barged = False
            session.events.emit("listening", speaking=True)
        elif isinstance(event, SpeechContinues):
            if (self.options.barge_in and not self._barged and session.speaking
                    and event.duration_s >= self.voice.barge_in_min_s):
                self._barged = True
                session.events.emit("barge_in", after_s=round(event.duration_s, 3))
                await session.interrupt()
        elif isinstance(event, SpeechEnded):
            self.speech_ended_at = time.monotonic()
            task = asyncio.create_task(self._turn(event), name=f"turn-{session.sessionid}")
            self._turns.add(task)
            task.add_done_callback(self._turns.discard)

    async def _turn(self, event: SpeechEnded) -> None:
        session = self.session
        started = time.monotonic()
        try:
            text = await self.voice.asr.transcribe(event.audio)
        except ASRError as exc:
            session.events.emit("error", msg=f"speech recognition failed: {exc}")
            return
        asr_ms = round((time.monotonic() - started) * 1000)
        turn = has_speakable(text) and self.options.mode != "off" and not session.closed
        session.events.emit("transcript", text=text, final=True, turn=turn, asr_ms=asr_ms,
                            seconds=round(event.audio.size / VAD_SAMPLE_RATE_HZ, 2))
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
        tasks = [self._task, *self._turns]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._turns.clear()
