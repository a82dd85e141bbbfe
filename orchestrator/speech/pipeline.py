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

Bounds (limits.py): each sentence's TTS must keep its deadlines, or the utterance ends with an
error and the queue moves on; a streamed answer stops taking sentences after `max_answer_s` of
audio (its UtteranceEnded says `cut`). An expected failure of an outside server
(errors.ExternalServiceError, or a failed Triton call) is one rate-limited log line; anything
else is a bug of ours and logged with its traceback.

Triton going away: an utterance that failed on a Triton call before anything of it was played
is tried once more when Triton is ready again (within TRITON_BACK_WITHIN_S), else it ends with
an error naming Triton. A streamed answer is not asked again (its LLM stream is spent).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from ..avatar.store import Avatar
from ..errors import ExternalServiceError
from ..lipsync.base import AudioFeatures
from ..lipsync.models import LipSyncModels
from ..media import stage_timing
from ..media.clock import AUDIO_SAMPLE_RATE_HZ, AUDIO_SAMPLES_PER_TICK
from ..rate_limited_log import RateLimitedLog
from ..triton.client import triton_failure
from ..tts import TTSEngine, TTSOptionError, TTSRouter, Voice
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
from .limits import DEFAULT_SPEECH_LIMITS, SpeechLimits, paced_audio
from .spoken_text import SpokenText
from .streamed_audio import StreamedAudio

log = logging.getLogger(__name__)
FAILURES = RateLimitedLog(log)  # expected failures of outside servers: one line each

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
# Streamed audio (/audio_stream) is cut in pieces of this length too (each is analysed again as
# it grows: bounded work), analysed every STREAMED_TAKE_EVERY_S of new audio (a fixed cadence:
# audio arriving at real time must turn into frames at real time), and its first frames wait
# for STREAMED_START_S of audio: the lip-sync features of a frame read 200 ms ahead of it, and
# the rest is a playout margin so frames of audio fed at real time are ready when their tick
# comes (the cadence plus one lip-sync request).
STREAMED_PIECE_S = 5.0
STREAMED_TAKE_EVERY_S = 0.06
STREAMED_START_S = 0.32
# TTS engines begin a sentence with silence (Piper: 40-60 ms). At the start of an utterance it
# only delays the answer, so it is cut to LEAD_SILENCE_KEPT_S before the first audible sample
# (a peak of LEAD_SILENCE_LEVEL, full scale 1.0: about -40 dBFS). Later sentences keep theirs:
# there it is the pause between sentences.
LEAD_SILENCE_LEVEL = 0.01
LEAD_SILENCE_KEPT_S = 0.02
# A piece's text in the DEBUG line that names its engine, at most this long.
MAX_LOGGED_TEXT_CHARS = 200
# The session's speech task is named SPEECH_TASK_PREFIX + sessionid (metrics count them).
SPEECH_TASK_PREFIX = "speech-"
# An utterance that failed because Triton went away is tried again if Triton is back this soon.
TRITON_BACK_WITHIN_S = 15.0


class TritonFailed(ExternalServiceError):
    """An utterance could not be spoken because a call to Triton failed (its message names
    Triton and the cause)."""


@dataclass(frozen=True)
class SentenceAudio:
    utterance: Utterance
    text: str | None  # None for uploaded audio and the later pieces of a streamed sentence
    audio: np.ndarray  # float32, padded to whole video frames
    windows: np.ndarray  # float32 [frames, *window_shape]: the model's audio features
    silent: np.ndarray  # bool [frames]: the features' `silent`
    whole: bool = False  # the sentence's whole audio (its first piece is also its last)


@dataclass
class _Progress:
    """The current utterance so far: seconds of audio produced (16 kHz), and whether it was cut
    at `max_answer_s`."""

    produced_s: float = 0.0
    cut: bool = False
    started: bool = False  # its UtteranceStarted was queued (a retry would repeat it)


class SpeechPipeline:
    def __init__(
        self,
        tts: TTSRouter,
        lipsync: LipSyncModels,
        avatar_cursor: Callable[[], int],
        sessionid: int,
        limits: SpeechLimits = DEFAULT_SPEECH_LIMITS,
        triton_back: Callable[[float], Awaitable[bool]] | None = None,
    ) -> None:
        self._tts = tts
        self._limits = limits
        # After a failed Triton call: True when Triton is ready again within the seconds given
        # (TritonSupervisor.wait_ready); None: no retry.
        self._triton_back = triton_back
        self._progress = _Progress()
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
        """Estimated seconds of speech waiting or being rendered; the current utterance counts
        at least the audio it has produced so far (a chat answer's real length, as it grows)."""
        current = 0.0
        if self._current is not None:
            current = max(self._current.estimated_seconds, self._progress.produced_s)
        return max(self._waiting_s, 0.0) + current

    @property
    def current_utterance(self) -> Utterance | None:
        """The utterance being rendered (None between utterances)."""
        return self._current

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
            self._progress = _Progress()
            try:
                await self._speak_or_retry(utterance)
            except asyncio.CancelledError:
                raise
            except ExternalServiceError as exc:  # expected: one line with the cause
                FAILURES.log(type(exc).__name__, logging.WARNING,
                             "speech failed sessionid=%s utterance=%s: %s", self._sessionid,
                             utterance.id, exc)
                self._items.append(UtteranceEnded(utterance, error=str(exc)))
            except TTSOptionError as exc:  # the client's `tts` value: its error event says so
                log.info("speech refused sessionid=%s utterance=%s: %s", self._sessionid,
                         utterance.id, exc)
                self._items.append(UtteranceEnded(utterance, error=str(exc)))
            except Exception as exc:  # one bad utterance must not end the session's speech
                log.exception("speech failed sessionid=%s utterance=%s", self._sessionid, utterance.id)
                self._items.append(UtteranceEnded(utterance, error=str(exc)))
            finally:
                self._current = None

    async def _speak_or_retry(self, utterance: Utterance) -> None:
        """`_speak`, once more when a Triton call failed before anything was played and Triton
        is back within TRITON_BACK_WITHIN_S; TritonFailed otherwise."""
        try:
            await self._speak(utterance)
            return
        except Exception as exc:
            cause = triton_failure(exc)
            if cause is None:
                raise
        retry = (self._triton_back is not None and not self._progress.started
                 and utterance.source is None)
        FAILURES.log("triton", logging.WARNING, "Triton call failed sessionid=%s utterance=%s: "
                     "%s%s", self._sessionid, utterance.id, cause,
                     "; trying again when it is back" if retry else "")
        if not retry:
            raise TritonFailed(f"Triton failed ({cause}): the utterance was not spoken")
        if not await self._triton_back(TRITON_BACK_WITHIN_S):
            raise TritonFailed(f"Triton failed ({cause}) and was not back within "
                               f"{TRITON_BACK_WITHIN_S:g} s: the utterance was not spoken")
        self._progress = _Progress()
        try:
            await self._speak(utterance)
        except Exception as exc:
            cause = triton_failure(exc)
            if cause is None:
                raise
            raise TritonFailed(f"Triton failed again ({cause}): the utterance was not "
                               "spoken") from None

    async def _speak(self, utterance: Utterance) -> None:
        sentences: asyncio.Queue[SentenceAudio | None] = asyncio.Queue(SENTENCE_QUEUE_SIZE)
        producer = asyncio.create_task(self._synthesize(utterance, sentences))
        try:
            started = False
            while (sentence := await sentences.get()) is not None:
                if not started:
                    self._progress.started = True
                    self._items.append(UtteranceStarted(utterance))
                    self._next_avatar_tick = self._avatar_cursor() + PLANNING_LEAD_TICKS
                    started = True
                await self._lipsync_sentence(sentence)
            await producer  # re-raises a TTS failure
            # Also when nothing was speakable (an answer of emoji, TTS audio of length 0): every
            # utterance taken gets its end, never silence.
            self._items.append(UtteranceEnded(utterance, cut=self._progress.cut))
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
                    self._progress.produced_s += padded.size / AUDIO_SAMPLE_RATE_HZ
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
        if utterance.stream is not None:
            async for features, final in _streamed_pieces(utterance.stream, kind):
                yield None, features, final
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
        # A streamed answer: closing it (interrupt, failure, its length bound) closes the LLM
        # stream behind it.
        async with contextlib.aclosing(utterance.source) as sentences:
            async for text in sentences:
                if self._progress.produced_s >= self._limits.max_answer_s:
                    self._progress.cut = True
                    log.info("answer cut sessionid=%s utterance=%s after %.1f s of speech "
                             "(--max-answer-seconds)", self._sessionid, utterance.id,
                             self._progress.produced_s)
                    return
                async for features, final in self._tts_audio(said.piece(text), utterance.voice,
                                                             kind, lead):
                    lead = False
                    yield text, features, final

    async def _tts_audio(self, text: str, voice: Voice, kind: AudioFeatures = DEFAULT_FEATURES,
                         trim_lead: bool = False,
                         ) -> AsyncIterator[tuple[SentenceFeatures, bool]]:
        """One piece through the engines that speak it (one, or one per script of a mixed
        sentence: TTSRouter.plan), each part as `_engine_audio` yields it. The parts after the
        first that was heard carry no text (SentenceStarted goes with the first)."""
        if not text:
            return
        heard = False  # an earlier part yielded audio (and with it the text)
        for engine, part_voice, part in await self._tts.plan(text, voice):
            log.debug("tts sessionid=%s engine=%s voice=%s text=%r", self._sessionid,
                      engine.name, part_voice.name or "auto", part[:MAX_LOGGED_TEXT_CHARS])
            yielded = False
            async for features, final in self._engine_audio(engine, part, part_voice, kind,
                                                            trim_lead and not heard):
                if heard:
                    features.first = False
                yielded = True
                yield features, final
            heard = heard or yielded

    async def _engine_audio(self, engine: TTSEngine, text: str, voice: Voice,
                            kind: AudioFeatures = DEFAULT_FEATURES, trim_lead: bool = False,
                            ) -> AsyncIterator[tuple[SentenceFeatures, bool]]:
        """One part through its engine: its features as each chunk arrives (at the engine's
        rate, read once the first chunk is there: HTTP engines learn it from the answer), then
        once more with `final` set. `trim_lead`: leading silence is cut to LEAD_SILENCE_KEPT_S
        (a part that is silent throughout is kept whole)."""
        features: SentenceFeatures | None = None
        silent: list[np.ndarray] = []  # chunks before the first audible sample (trim_lead)
        started = time.perf_counter()
        # The deadlines (limits.py): a hung or trickling engine fails the sentence, and its
        # request is closed with it, so none of its late audio is played.
        async with (contextlib.aclosing(engine.synthesize(text, voice)) as raw,
                    contextlib.aclosing(paced_audio(engine.name, raw,
                                                    lambda: engine.sample_rate_hz,
                                                    self._limits)) as chunks):
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
            faces, mouths, extra = _crops(avatar, ticks, model.crop_size, model.avatar_inputs)
            with stage_timing.timed(stage_timing.LIPSYNC_REQUEST):
                crops = await self._lipsync.render(model, sentence.windows[start:stop],
                                                   sentence.silent[start:stop], faces, mouths,
                                                   extra)
            for k, tick in enumerate(ticks):
                i = start + k
                audio = sentence.audio[i * AUDIO_SAMPLES_PER_TICK : (i + 1) * AUDIO_SAMPLES_PER_TICK]
                self._items.append(SpeechFrame(sentence.utterance, tick, crops[k], audio,
                                               model.paste_top_fraction))
                self._frames_ahead += 1
            self._next_avatar_tick = ticks[-1] + 1
            start = stop
            size = CHUNK_FRAMES


async def _streamed_pieces(stream: StreamedAudio, kind: AudioFeatures,
                           ) -> AsyncIterator[tuple[SentenceFeatures, bool]]:
    """A streamed segment as pieces of STREAMED_PIECE_S: (the piece's features so far, whether
    it is complete) each time audio arrives, the last piece complete at the stream's end."""
    piece_samples = max(1, int(STREAMED_PIECE_S * stream.rate_hz))
    features: SentenceFeatures | None = None
    first = True
    async for chunk in stream.chunks():
        while chunk.size:
            if features is None:
                features = SentenceFeatures(stream.rate_hz, kind,
                                            min_new_s=STREAMED_TAKE_EVERY_S, growth=0.0,
                                            min_first_s=STREAMED_START_S if first else 0.0)
                features.first = first = False
            room = piece_samples - features.samples
            part, chunk = chunk[:room], chunk[room:]
            features.add(part)
            complete = features.samples >= piece_samples
            yield features, complete
            if complete:
                features = None
    if features is not None:
        yield features, True


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


def _crops(avatar: Avatar, ticks: list[int], size: int | None, inputs: tuple[str, ...] = (),
           ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Model inputs for the avatar frames these ticks will show: RGB face crops, mouth geometry
    and the avatar's arrays named in `inputs` (the model's avatar_inputs; ValueError naming the
    one the avatar lacks)."""
    indices = [avatar.frame_index(t) for t in ticks]
    faces = np.stack([avatar.crop_rgb(i, size) for i in indices])
    extra = {}
    for name in inputs:
        if name not in avatar.model_inputs:
            raise ValueError(f"avatar {avatar.id!r} has no {name!r} for lip-sync model "
                             f"{avatar.lipsync_model!r}")
        extra[name] = avatar.model_inputs[name][indices]
    return faces, avatar.mouth[indices], extra
