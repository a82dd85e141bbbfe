"""Per-session speech path: utterances → sentences → TTS → audio features (those the avatar's
lip-sync model declares: speech/features.py) → lip-sync → SpeechItems.

Two stages run concurrently so the next sentence is synthesized while the current one is being
lip-synced. Frames whose audio is silent (the features' `silent`) skip a lip-sync model whose
closed mouth is its input (LipSyncModels.render). Interruption cancels both stages (in-flight Triton calls included) and drops every
queued item: the player then shows the idle (mouth closed) frame on its next tick.

One speech task per session, always: a lock owns cancel-and-restart, so concurrent interrupts
run one after another (each cuts what was there when it ran), and close wins over any interrupt
waiting behind it. Every utterance taken from the queue ends with an UtteranceEnded item, also
when nothing in it was speakable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from ..avatar.store import Avatar
from ..lipsync.base import AudioFeatures
from ..lipsync.models import LipSyncModels
from ..media import stage_timing
from ..media.clock import AUDIO_SAMPLE_RATE_HZ, AUDIO_SAMPLES_PER_TICK
from ..tts import TTSRouter, Voice
from .features import DEFAULT_FEATURES, SentenceFeatures
from .items import (
    SentenceStarted,
    SpeechFrame,
    SpeechItem,
    Utterance,
    UtteranceEnded,
    UtteranceStarted,
    split_sentences,
)
from .spoken_text import SpokenText

log = logging.getLogger(__name__)

# Small first chunk: the first frame (and with it the first audio) leaves sooner.
FIRST_CHUNK_FRAMES = 2
CHUNK_FRAMES = 8
# How far speech may be rendered ahead of the player (frames): bounds memory and interrupt waste.
MAX_LEAD_FRAMES = 50
# Ticks between planning a frame and the player showing it (Triton round trip + queueing).
PLANNING_LEAD_TICKS = 2
SENTENCE_QUEUE_SIZE = 2
# Uploaded audio is cut in pieces like sentences so its first frames leave early.
UPLOADED_PIECE_SAMPLES = 5 * AUDIO_SAMPLE_RATE_HZ  # 5 s
# TTS engines begin a sentence with silence (Piper: 40-60 ms). At the start of an utterance it
# only delays the answer, so it is cut to LEAD_SILENCE_KEPT_S before the first audible sample
# (a peak of LEAD_SILENCE_LEVEL, full scale 1.0: about -40 dBFS). Later sentences keep theirs:
# there it is the pause between sentences.
LEAD_SILENCE_LEVEL = 0.01
LEAD_SILENCE_KEPT_S = 0.02
# The session's speech task is named SPEECH_TASK_PREFIX + sessionid (metrics count them).
SPEECH_TASK_PREFIX = "speech-"


@dataclass(frozen=True)
class SentenceAudio:
    utterance: Utterance
    text: str | None  # None for uploaded audio and the later pieces of a streamed sentence
    audio: np.ndarray  # float32, padded to whole video frames
    windows: np.ndarray  # float32 [frames, *window_shape]: the model's audio features
    silent: np.ndarray  # bool [frames]: the features' `silent`
    whole: bool = False  # the sentence's whole audio (its first piece is also its last)


class SpeechPipeline:
    def __init__(
        self,
        tts: TTSRouter,
        lipsync: LipSyncModels,
        avatar_cursor: Callable[[], int],
        sessionid: int,
    ) -> None:
        self._tts = tts
        self._lipsync = lipsync
        self._avatar_cursor = avatar_cursor  # must not hold the session (it would keep it alive)
        self._sessionid = sessionid
        self._waiting: collections.deque[Utterance] = collections.deque()
        self._waiting_s = 0.0  # estimated seconds of the waiting utterances
        self._arrived = asyncio.Event()
        self._items: collections.deque[SpeechItem] = collections.deque()
        self._frames_ahead = 0
        self._drained = asyncio.Event()
        self._current: Utterance | None = None
        self._next_avatar_tick = 0
        self._task: asyncio.Task | None = None
        self._restart = asyncio.Lock()  # owns cancel-and-restart of _task
        self._closed = False

    def start(self) -> None:
        assert self._task is None and not self._closed
        self._task = asyncio.create_task(self._run(), name=f"{SPEECH_TASK_PREFIX}{self._sessionid}")

    async def close(self) -> list[Utterance]:
        """Stop for good; return the utterances that were cut short or never started."""
        self._closed = True  # interrupts waiting for the lock now do nothing
        async with self._restart:
            dropped = self._take_all()
            await self._stop_task()
            return dropped

    def say(self, utterance: Utterance) -> None:
        self._waiting.append(utterance)
        self._waiting_s += utterance.estimated_seconds
        self._arrived.set()

    @property
    def queued_utterances(self) -> int:
        """Utterances waiting or being rendered (not counting frames already rendered)."""
        return len(self._waiting) + (self._current is not None)

    @property
    def queued_seconds(self) -> float:
        """Estimated seconds of speech waiting or being rendered."""
        current = self._current.estimated_seconds if self._current is not None else 0.0
        return max(self._waiting_s, 0.0) + current

    @property
    def busy(self) -> bool:
        """True while anything is queued, being rendered or waiting to be played."""
        return self._current is not None or bool(self._waiting) or bool(self._items)

    def pop(self) -> SpeechItem | None:
        """Next item for the player (called once per tick, plus markers)."""
        if not self._items or self._restart.locked():  # nothing of speech being cut plays
            return None
        item = self._items.popleft()
        if isinstance(item, SpeechFrame):
            self._frames_ahead -= 1
            if self._frames_ahead < MAX_LEAD_FRAMES:
                self._drained.set()
        return item

    async def interrupt(self) -> list[Utterance]:
        """Drop all speech now; return the utterances that were cut short or never started.

        Idempotent: a second interrupt right after the first finds nothing to drop. After close,
        nothing happens (and nothing is restarted).
        """
        async with self._restart:
            if self._closed:
                return []
            dropped = self._take_all()
            await self._stop_task()
            self._items.clear()
            self._frames_ahead = 0
            self._drained.set()
            self.start()
            return dropped

    def _take_all(self) -> list[Utterance]:
        """Every utterance not played to its end, in order: those with items still queued for
        the player (read ahead: rendered whole, or the one playing), the one being rendered,
        those waiting."""
        dropped = list(dict.fromkeys(item.utterance for item in self._items))
        if self._current is not None and self._current not in dropped:
            dropped.append(self._current)
        dropped += self._waiting
        self._waiting.clear()
        self._waiting_s = 0.0
        return dropped

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._current = None

    async def _next_utterance(self) -> Utterance:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        utterance = self._waiting.popleft()
        self._waiting_s -= utterance.estimated_seconds
        return utterance

    async def _run(self) -> None:
        while True:
            utterance = await self._next_utterance()
            self._current = utterance
            try:
                await self._speak(utterance)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad utterance must not end the session's speech
                log.exception("speech failed sessionid=%s utterance=%s", self._sessionid, utterance.id)
                self._items.append(UtteranceEnded(utterance, error=str(exc)))
            finally:
                self._current = None

    async def _speak(self, utterance: Utterance) -> None:
        sentences: asyncio.Queue[SentenceAudio | None] = asyncio.Queue(SENTENCE_QUEUE_SIZE)
        producer = asyncio.create_task(self._synthesize(utterance, sentences))
        try:
            started = False
            while (sentence := await sentences.get()) is not None:
                if not started:
                    self._items.append(UtteranceStarted(utterance))
                    self._next_avatar_tick = self._avatar_cursor() + PLANNING_LEAD_TICKS
                    started = True
                await self._lipsync_sentence(sentence)
            await producer  # re-raises a TTS failure
            # Also when nothing was speakable (an answer of emoji, TTS audio of length 0): every
            # utterance taken gets its end, never silence.
            self._items.append(UtteranceEnded(utterance))
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    async def _synthesize(self, utterance: Utterance, out: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        try:
            # What the avatar's model reads (known since the session opened: no Triton call).
            model = await self._lipsync.get(utterance.avatar.lipsync_model)
            # aclosing: when this task is cancelled while waiting on the queue, the pieces'
            # generator (and a streamed answer or TTS response behind it) is closed now, not at
            # garbage collection.
            async with contextlib.aclosing(
                    self._sentence_audio(utterance, model.features)) as pieces:
                async for text, features, final in pieces:
                    if not (final or features.ready()):
                        continue
                    padded, windows, silent = await loop.run_in_executor(
                        None, _timed_take, features, final)
                    if padded.size == 0:
                        continue
                    # The sentence's text goes with its first piece only (SentenceStarted).
                    await out.put(SentenceAudio(utterance, text if features.first else None,
                                                padded, windows, silent,
                                                whole=features.first and final))
                    features.first = False
        finally:
            # End marker for the consumer, which then awaits this task (re-raising a failure).
            # Not when cancelled: nobody reads any more and a full queue would block forever.
            if not asyncio.current_task().cancelling():
                await out.put(None)

    async def _sentence_audio(
        self, utterance: Utterance, kind: AudioFeatures = DEFAULT_FEATURES,
    ) -> AsyncIterator[tuple[str | None, SentenceFeatures, bool]]:
        """(text, the piece's features so far, whether the piece is complete) each time audio
        arrives; the text as written (subtitles, events); `kind`: the features the lip-sync
        model reads. A streaming TTS engine's chunks arrive one by one, so the first frames
        leave before the sentence is synthesised."""
        if utterance.audio is not None:
            for start in range(0, utterance.audio.size, UPLOADED_PIECE_SAMPLES):
                features = SentenceFeatures(AUDIO_SAMPLE_RATE_HZ, kind)
                features.add(utterance.audio[start : start + UPLOADED_PIECE_SAMPLES])
                features.first = False
                yield None, features, True
            return
        said = SpokenText()  # what TTS reads: no Markdown, code, URLs or emoji
        lead = True  # the utterance's first audio: its leading silence is cut
        if utterance.source is None:
            for text in split_sentences(utterance.text):
                async for features, final in self._tts_audio(said.piece(text), utterance.voice,
                                                             kind, lead):
                    lead = False
                    yield text, features, final
            return
        # A streamed answer: closing it (interrupt, failure) closes the LLM stream behind it.
        async with contextlib.aclosing(utterance.source) as sentences:
            async for text in sentences:
                async for features, final in self._tts_audio(said.piece(text), utterance.voice,
                                                             kind, lead):
                    lead = False
                    yield text, features, final

    async def _tts_audio(self, text: str, voice: Voice, kind: AudioFeatures = DEFAULT_FEATURES,
                         trim_lead: bool = False,
                         ) -> AsyncIterator[tuple[SentenceFeatures, bool]]:
        """One piece through the engine that speaks it: its features as each chunk arrives
        (at the engine's rate, read once the first chunk is there: HTTP engines learn it from
        the answer), then once more with `final` set. `trim_lead`: leading silence is cut to
        LEAD_SILENCE_KEPT_S (a piece that is silent throughout is kept whole)."""
        if not text:
            return
        engine, voice = await self._tts.route(text, voice)
        features: SentenceFeatures | None = None
        silent: list[np.ndarray] = []  # chunks before the first audible sample (trim_lead)
        started = time.perf_counter()
        async with contextlib.aclosing(engine.synthesize(text, voice)) as chunks:
            async for chunk in chunks:
                if trim_lead:
                    silent.append(np.asarray(chunk, np.float32))
                    chunk = without_lead_silence(np.concatenate(silent), engine.sample_rate_hz)
                    if chunk is None:
                        continue
                    trim_lead, silent = False, []
                if features is None:
                    features = SentenceFeatures(engine.sample_rate_hz, kind)
                features.add(chunk)
                yield features, False
        # From the request to its last audio (a streaming engine's: with what the consumer did
        # between its chunks).
        stage_timing.observe(stage_timing.TTS_SENTENCE, time.perf_counter() - started)
        if silent:  # silent throughout: kept as it was
            features = SentenceFeatures(engine.sample_rate_hz, kind)
            features.add(np.concatenate(silent))
        if features is not None:
            yield features, True

    async def _lipsync_sentence(self, sentence: SentenceAudio) -> None:
        total = len(sentence.windows)
        start = 0
        size = FIRST_CHUNK_FRAMES
        if sentence.text is not None:
            self._items.append(SentenceStarted(sentence.utterance, sentence.text,
                                               total if sentence.whole else None))
        while start < total:
            while self._frames_ahead >= MAX_LEAD_FRAMES:
                self._drained.clear()
                await self._drained.wait()
            stop = min(start + size, total)
            # Never plan behind the player: after a stall it has moved on.
            first_tick = max(self._next_avatar_tick, self._avatar_cursor() + 1)
            ticks = list(range(first_tick, first_tick + (stop - start)))
            avatar = sentence.utterance.avatar
            model = await self._lipsync.get(avatar.lipsync_model)
            faces, mouths = _crops(avatar, ticks, model.crop_size)
            with stage_timing.timed(stage_timing.LIPSYNC_REQUEST):
                crops = await self._lipsync.render(model, sentence.windows[start:stop],
                                                   sentence.silent[start:stop], faces, mouths)
            for k, tick in enumerate(ticks):
                i = start + k
                audio = sentence.audio[i * AUDIO_SAMPLES_PER_TICK : (i + 1) * AUDIO_SAMPLES_PER_TICK]
                self._items.append(SpeechFrame(sentence.utterance, tick, crops[k], audio))
                self._frames_ahead += 1
            self._next_avatar_tick = ticks[-1] + 1
            start = stop
            size = CHUNK_FRAMES


def _timed_take(features: SentenceFeatures, final: bool,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`features.take(final)`, its time recorded as FEATURES (in the executor's thread)."""
    with stage_timing.timed(stage_timing.FEATURES):
        return features.take(final)


def without_lead_silence(audio: np.ndarray, rate_hz: int) -> np.ndarray | None:
    """`audio` (float32, full scale 1.0, `rate_hz`) from LEAD_SILENCE_KEPT_S before its first
    sample of at least LEAD_SILENCE_LEVEL; None while nothing in it is that loud."""
    loud = np.flatnonzero(np.abs(audio) >= LEAD_SILENCE_LEVEL)
    if loud.size == 0:
        return None
    return audio[max(int(loud[0]) - round(LEAD_SILENCE_KEPT_S * rate_hz), 0):]


def _crops(avatar: Avatar, ticks: list[int], size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for the avatar frames these ticks will show: RGB face crops and mouth geometry."""
    indices = [avatar.frame_index(t) for t in ticks]
    faces = np.stack([avatar.crop_rgb(i, size) for i in indices])
    return faces, avatar.mouth[indices]
