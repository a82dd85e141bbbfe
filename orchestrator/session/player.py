"""The session's player: its one media clock loop, what it shows, and the events of what it plays.

On every 40 ms tick it takes the next lip-synced frame from the speech pipeline (or the stage's
idle, clip or fade frame), pushes one video picture and the two 20 ms audio packets that belong
to it into the session's tracks, and hands the tick to every sink (the recorder, outputs), so
audio, video and every output carry the same clock and cannot drift apart. Like aiortc's
`MediaPlayer` owns its worker, the player owns the loop; the session only starts and stops it.

It is also the one owner of "the current utterance": the typed items the pipeline yields
(`UtteranceStarted`, `SentenceStarted`, `UtteranceEnded`) become the session's `start`,
`sentence`, `end`/`error` events as they are played, not when they are produced, and an
interruption's dropped utterances become `interrupted` events here. And it alone knows what the
user heard (heard.py: the pipeline reads ahead): each utterance's `on_heard` is told by it, at
the utterance's end or cut; `end` and `interrupted` carry `played_s`, the seconds of it played.

While a chat answer is under way (asked, or started) and nothing of it is ready to play, the
player says so: a `thinking` event after THINKING_AFTER_S of that silence and every
THINKING_EVERY_S while it lasts, so a page can show it and no answer is silent for long without
an event (a slow LLM, a slow TTS server).
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from ..media import stage_timing
from ..media.audio_track import AudioTrack, Sound
from ..media.clock import AUDIO_PACKETS_PER_TICK, AUDIO_SAMPLES_PER_PACKET, VIDEO_FPS, MediaClock
from ..media.sinks import TickSink
from ..media.video_track import Picture, VideoTrack
from ..speech.items import (
    CUT_BY_REQUEST,
    CUT_ERROR,
    SentenceStarted,
    SpeechFrame,
    Utterance,
    UtteranceEnded,
    UtteranceStarted,
)
from ..speech.pipeline import SpeechPipeline
from .events import SessionEvents
from .heard import HeardText
from .stage import Stage

log = logging.getLogger(__name__)

# A chat answer with nothing ready to play: the first `thinking` event after this many seconds,
# then one every THINKING_EVERY_S while it lasts.
THINKING_AFTER_S = 1.0
THINKING_EVERY_S = 1.0


class Player:
    """Plays one session: `start` begins the clock (idempotent), `stop` ends the loop.

    `sessionid` labels logs and task names; the stage, pipeline, events and tracks are the
    session's (the player holds no reference back to the session).
    """

    def __init__(self, sessionid: int, stage: Stage, pipeline: SpeechPipeline,
                 events: SessionEvents, video: VideoTrack, audio: AudioTrack) -> None:
        self.sessionid = sessionid
        self.stage = stage
        self.pipeline = pipeline
        self.events = events
        self.video = video
        self.audio = audio
        self.clock = MediaClock()
        self.frames_sent = 0
        self._speaking: Utterance | None = None
        self._heard = HeardText()  # what was played of the current utterance
        self._played_frames = 0  # speech frames of the current utterance played so far
        self._sinks: list[TickSink] = []  # each gets every tick: recorder, outputs
        self._task: asyncio.Task | None = None
        self._stopped = False
        # (utterance, monotonic s its silence began, when the next `thinking` is due)
        self._waiting: tuple[Utterance, float, float] | None = None

    @property
    def speaking(self) -> bool:
        """An utterance is being played (its `start` was sent, its `end` not yet)."""
        return self._speaking is not None

    # --- sinks ------------------------------------------------------------------------------
    def add_sink(self, sink: TickSink) -> None:
        """From the next tick on, `sink` gets every tick (media/sinks.py)."""
        self._sinks.append(sink)

    def remove_sink(self, sink: TickSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    @property
    def sinks(self) -> tuple[TickSink, ...]:
        return tuple(self._sinks)

    def take_sinks(self) -> list[TickSink]:
        """Every sink, removed (the session closes them)."""
        sinks, self._sinks = self._sinks, []
        return sinks

    # --- the loop ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the clock and the loop, once (a track's first pull, or a server session)."""
        if self._task is None and not self._stopped:
            self.clock.start()
            self._task = asyncio.create_task(self._play(), name=f"player-{self.sessionid}")

    async def stop(self) -> None:
        """End the loop (for good: a stopped player does not start again)."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _play(self) -> None:
        tick = 0
        while True:
            tick = await self.clock.wait_for_tick(tick)
            try:
                self._render(tick)
            except Exception:  # a bad frame must not stop the stream
                log.exception("render failed sessionid=%s tick=%s", self.sessionid, tick)
            tick += 1

    def _render(self, tick: int) -> None:
        with stage_timing.timed(stage_timing.PLAYER_TICK):
            self._render_timed(tick)

    def _render_timed(self, tick: int) -> None:
        speech = self._next_speech_frame()
        self._note_waiting(speech)
        # Between utterances the idle loop's position is the tick on the process-wide grid: the
        # same picture as every other session showing this avatar idle, which lets them share
        # its encoding. Within one (a pause, a late frame) it goes on from the speech's.
        grid_tick = self.clock.wall_tick(tick) if self._speaking is None else None
        with stage_timing.timed(stage_timing.STAGE_SHOT):
            shot = self.stage.next_shot(speech, grid_tick)
        image, audio = shot.image, shot.audio
        self.video.push(Picture(image, self.clock.video_pts(tick), shot.idle))
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
        for packet in range(AUDIO_PACKETS_PER_TICK):
            samples = pcm[packet * AUDIO_SAMPLES_PER_PACKET : (packet + 1) * AUDIO_SAMPLES_PER_PACKET]
            self.audio.push(Sound(samples, self.clock.audio_pts(tick, packet)))
        for sink in self._sinks:
            sink.add(tick, image, pcm)
        self.frames_sent += 1

    # --- what is played, as events ----------------------------------------------------------
    def _next_speech_frame(self) -> SpeechFrame | None:
        while (item := self.pipeline.pop()) is not None:
            if isinstance(item, SpeechFrame):
                if item.utterance is self._speaking:
                    self._heard.frame()
                    self._played_frames += 1
                return item
            utterance = item.utterance
            if isinstance(item, UtteranceStarted):
                self._speaking, self._heard, self._played_frames = utterance, HeardText(), 0
                self.events.emit("start", utterance_id=utterance.id, kind=utterance.kind,
                                 text=utterance.text)
            elif isinstance(item, SentenceStarted):
                self._heard.sentence(item.text, item.frames)
                self.events.emit("sentence", utterance_id=utterance.id, kind=utterance.kind,
                                 text=item.text)
            elif isinstance(item, UtteranceEnded):
                # Ended without starting (nothing speakable, or failed first): nothing heard.
                heard = self._heard if self._speaking is utterance else HeardText()
                played_s = self._played_s() if self._speaking is utterance else 0.0
                self._speaking = None
                if item.error:
                    self.events.emit("error", utterance_id=utterance.id, msg=item.error,
                                     played_s=played_s)
                    _tell_heard(utterance, heard.heard, CUT_ERROR)
                else:
                    answer = {"answer": heard.whole} if utterance.kind == "chat" else {}
                    if item.cut:  # stopped at --max-answer-seconds
                        answer["cut"] = True
                    self.events.emit("end", utterance_id=utterance.id, kind=utterance.kind,
                                     text=utterance.text, played_s=played_s, **answer)
                    _tell_heard(utterance, heard.whole, None)
        return None

    def _note_waiting(self, speech: SpeechFrame | None) -> None:
        """`thinking` events while a chat answer has nothing ready to play (see the module)."""
        answer = self._speaking or self.pipeline.current_utterance
        if speech is not None or answer is None or answer.kind != "chat":
            self._waiting = None
            return
        now = time.monotonic()
        if self._waiting is None or self._waiting[0] is not answer:
            self._waiting = (answer, now, now + THINKING_AFTER_S)
            return
        _, since, due = self._waiting
        if now >= due:
            self.events.emit("thinking", utterance_id=answer.id,
                             started=self._speaking is answer, waiting_s=round(now - since, 1))
            self._waiting = (answer, since, now + THINKING_EVERY_S)

    def end_dropped(self, dropped: list[Utterance], cut: str = CUT_BY_REQUEST) -> None:
        """Each cut (the one playing) or never-started utterance ends with an `interrupted`
        event, `heard` saying what of it was played ("" for those never started) and
        `played_s` its seconds, and is told so (`on_heard`, with `cut`: a CUT_* reason);
        nothing is playing afterwards."""
        playing, self._speaking = self._speaking, None
        if playing is not None and playing not in dropped:
            dropped.insert(0, playing)
        for utterance in dropped:
            heard = self._heard.heard if utterance is playing else ""
            played_s = self._played_s() if utterance is playing else 0.0
            self.events.emit("interrupted", utterance_id=utterance.id, text=utterance.text,
                             heard=heard, played_s=played_s)
            _tell_heard(utterance, heard, cut)

    def _played_s(self) -> float:
        """Seconds of the current utterance's speech played so far (its frames, 40 ms each)."""
        return round(self._played_frames / VIDEO_FPS, 3)


def _tell_heard(utterance: Utterance, heard: str, cut: str | None) -> None:
    """The utterance's `on_heard`, if any; its failure is logged, never the player's."""
    if utterance.on_heard is None:
        return
    try:
        utterance.on_heard(heard, cut)
    except Exception:
        log.exception("on_heard failed utterance=%s", utterance.id)
