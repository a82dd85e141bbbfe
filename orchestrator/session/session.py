"""A session: one peer connection, its tracks, its speech pipeline and the player that paces them.

The session is control and lifetime: what the API asks (say, ask, interrupt, audiotype,
recording, sinks) and when everything ends. Playing is the player's (player.py): the session's
single media clock, which hands every tick to the tracks and to the sinks (media/sinks.py: the
recorder, an RTMP push, WHEP viewers), all carrying the same clock.

Lifetime: a session ends when its peer is gone (peer_watch: not connected within the setup
timeout, or failed/closed) or the server stops; `close` then frees everything and tells the
registry. A server-created session (outputs/server_session.py) has no peer (`pc` is None): its
player starts at once (`start`) and it ends with the server. Nothing the session owns holds a
strong reference back to it (tracks hold the player start weakly, the pipeline reads the stage,
the peer watch listens with an Event), so a closed session is freed by reference counting at
once, not at the next garbage collection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from aiortc import RTCPeerConnection

from ..avatar.clips import Clip
from ..avatar.multiavatar import MAIN, Member
from ..chat.agent import ChatAgent
from ..errors import ApiError
from ..lipsync.models import LipSyncModels
from ..media.audio_track import AudioTrack
from ..media.clock import (
    AUDIO_SAMPLE_RATE_HZ,
    VIDEO_FPS,
)
from ..media.idle_stream import IdleStreams
from ..media.recorder import Recorder
from ..media.recordings import RecordingFile, Recordings
from ..media.sinks import Sink, TickSink
from ..media.video_track import VideoTrack
from ..settings import (
    DEFAULT_LLM_MAX_TOKENS,
    DEFAULT_MAX_QUEUED_SPEECH_S,
    DEFAULT_MAX_QUEUED_UTTERANCES,
    DEFAULT_SETUP_TIMEOUT_S,
    Settings,
)
from ..speech.items import (
    CHAT_ANSWER_ESTIMATE_S,
    CUT_BY_REQUEST,
    CUT_BY_USER,
    CUT_CLOSED,
    Utterance,
    estimated_speech_seconds,
)
from ..speech.limits import DEFAULT_SPEECH_LIMITS, SpeechLimits
from ..speech.pipeline import SpeechPipeline
from ..speech.streamed_audio import StreamedAudio
from ..tts import TTSRouter, Voice
from ..voice_input.echo import PlayedAudio
from ..voice_input.turn_taking import Listener, VoiceInput, VoiceOptions
from .events import SessionEvents
from .peer_watch import wait_peer_gone
from .player import Player
from .stage import Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionOptions:
    """What /offer asked for, validated; later issues read the fields kept for them."""

    avatar: str
    refaudio: str
    reftext: str
    llmid: str
    custom_config: list | None
    multiavatar_config: dict | None
    voice: VoiceOptions = VoiceOptions()


@dataclass(frozen=True)
class SessionLimits:
    """Lifetime and queue bounds of a session (settings, with the flags named in 429s)."""

    setup_timeout_s: float = DEFAULT_SETUP_TIMEOUT_S
    max_queued_utterances: int = DEFAULT_MAX_QUEUED_UTTERANCES
    max_queued_speech_s: float = DEFAULT_MAX_QUEUED_SPEECH_S
    speech: SpeechLimits = DEFAULT_SPEECH_LIMITS  # TTS deadlines, an answer's length
    llm_max_tokens: int = DEFAULT_LLM_MAX_TOKENS  # unless the knowledge base's profile says

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionLimits:
        speech = SpeechLimits(settings.tts_first_audio_timeout_s, settings.tts_min_realtime,
                              settings.max_answer_s)
        return cls(settings.setup_timeout_s, settings.max_queued_utterances,
                   settings.max_queued_speech_s, speech, settings.llm_max_tokens)


class Session:
    def __init__(
        self,
        sessionid: int,
        pc: RTCPeerConnection | None,
        members: dict[str, Member],
        options: SessionOptions,
        tts: TTSRouter,
        lipsync: LipSyncModels,
        chat: ChatAgent,
        clips: dict[int, Clip] | None = None,
        observer: Callable[[dict], None] | None = None,
        limits: SessionLimits = SessionLimits(),
        on_closed: Callable[[int], None] | None = None,
        idle_streams: IdleStreams | None = None,
        triton_back: Callable[[float], Awaitable[bool]] | None = None,
    ) -> None:
        self.sessionid = sessionid
        self.created = time.time()  # wall clock: `since` in /api/admin/sessions
        self.chat = chat
        self.pc = pc
        self.members = members
        self.avatar = members[MAIN].avatar  # fixes the session's frame size
        self.stage = Stage(self.avatar, clips)
        self.options = options
        self.limits = limits
        self._on_closed = on_closed  # the registry frees the slot
        self.events = SessionEvents(sessionid, observer)
        # Idle pictures come from the server's shared idle streams when given (idle_stream.py).
        self.video = VideoTrack(self._start_player, self.avatar.width, self.avatar.height,
                                idle_streams)
        self.audio = AudioTrack(self._start_player)
        self._utterance_ids = itertools.count(1)
        self._peer_watch: asyncio.Task | None = None
        self.listener: Listener | None = None  # the user's microphone, when the peer sends one
        self._closed = asyncio.Event()
        self._recorder: Recorder | None = None
        self.transport = "webrtc" if pc is not None else "server"  # /api/admin/sessions
        self._recording: tuple[Recordings, RecordingFile] | None = None
        self.pipeline = SpeechPipeline(tts, lipsync, _avatar_cursor(self.stage), sessionid,
                                       limits.speech, triton_back)
        self.pipeline.start()
        self.player = Player(sessionid, self.stage, self.pipeline, self.events, self.video,
                             self.audio)

    # --- control, called by the API -------------------------------------------------------
    def member(self, avatarid: str) -> Member:
        if avatarid not in self.members:
            raise ApiError.not_found(f"unknown avatarid '{avatarid}' (this session has: "
                                     f"{', '.join(sorted(self.members))})")
        return self.members[avatarid]

    def voice_for(self, avatarid: str, ref_file: str = "", ref_text: str = "",
                  options: dict | None = None) -> Voice:
        """Who speaks decides the voice: the request's (`tts.ref_file`), else the member's, else
        the session's (`refaudio`). The transcript is the request's, else the session's
        `reftext` when the session's reference is used."""
        name = ref_file or self.member(avatarid).voice or self.options.refaudio
        if not ref_text and not ref_file and name == self.options.refaudio:
            ref_text = self.options.reftext
        return Voice.named(name, ref_text, options)

    def _utterance(self, text: str, voice: Voice | None, avatarid: str, **what) -> Utterance:
        return Utterance(f"{self.sessionid}-{next(self._utterance_ids)}", text,
                         voice or self.voice_for(avatarid), self.member(avatarid).avatar, **what)

    def say(self, text: str, voice: Voice | None = None, audio: np.ndarray | None = None,
            avatarid: str = MAIN) -> Utterance:
        """Queue speech: text for TTS, or ready 16 kHz audio (then `text` only labels it)."""
        self.admit(audio.size / AUDIO_SAMPLE_RATE_HZ if audio is not None
                   else estimated_speech_seconds(text))
        utterance = self._utterance(text, voice, avatarid, audio=audio)
        self.pipeline.say(utterance)
        return utterance

    def stream(self, rate_hz: int, avatarid: str = MAIN) -> Utterance:
        """Queue a segment of speech audio that arrives while it is spoken (/audio_stream): the
        returned utterance's `stream` takes float32 mono chunks at `rate_hz`. It counts as one
        utterance, by the seconds received so far. 429 (ApiError) when the queue is full."""
        self.admit(0.0)
        utterance = self._utterance("", None, avatarid, stream=StreamedAudio(rate_hz),
                                    kind="stream")
        self.pipeline.say(utterance)
        return utterance

    def ask(self, question: str, voice: Voice | None = None, avatarid: str = MAIN) -> Utterance:
        """Queue a chat answer: spoken sentence by sentence as the chat agent produces it, and
        remembered by the agent as the player plays it (what the user heard). The question
        answered (the utterance's `text` and the `question` event's) begins with any fragment
        of a question the user cut off unheard (chat/agent.py)."""
        self.admit(CHAT_ANSWER_ESTIMATE_S)  # before the answer (an LLM stream) exists
        self.member(avatarid)  # an unknown avatarid fails before an answer is begun
        answer = self.chat.begin(question)
        utterance = self._utterance(answer.question, voice, avatarid, source=answer.sentences(),
                                    kind="chat", on_heard=answer.heard)
        self.events.emit("question", utterance_id=utterance.id, text=answer.question)
        self.pipeline.say(utterance)
        return utterance

    def admit(self, seconds: float) -> None:
        """429 naming the limit (and its flag) when `seconds` more speech would not fit.

        One utterance always fits an empty queue: text and upload size limits bound it.
        """
        pipeline, limits = self.pipeline, self.limits
        if pipeline.queued_utterances >= limits.max_queued_utterances:
            raise ApiError(429, f"speech queue full: {pipeline.queued_utterances} utterances "
                           f"queued, at most {limits.max_queued_utterances} "
                           "(--max-queued-utterances); retry later or interrupt")
        queued = pipeline.queued_seconds
        if queued > 0 and queued + seconds > limits.max_queued_speech_s:
            raise ApiError(429, f"speech queue full: {queued:.0f} s queued + {seconds:.0f} s "
                           f"is more than {limits.max_queued_speech_s:g} s "
                           "(--max-queued-speech); retry later or interrupt")

    def set_audiotype(self, audiotype: int, reinit: bool) -> None:
        self.stage.set_audiotype(audiotype, reinit)
        self.events.emit("audiotype", audiotype=audiotype, reinit=reinit)

    async def interrupt(self) -> None:
        """Cut the speech playing and drop what is queued; an interruption while the user is
        speaking into the microphone (barge-in) is told as CUT_BY_USER (its unheard question
        becomes a fragment of the next one: chat/agent.py)."""
        cut = CUT_BY_USER if self._user_speaking() else CUT_BY_REQUEST
        self.audio.flush()  # speech already handed to the track goes too
        dropped = await self.pipeline.interrupt()
        await _cancel_streams(dropped)
        self.player.end_dropped(dropped, cut)

    def _user_speaking(self) -> bool:
        """The listener hears speech now: an utterance under way, or a run of speech frames
        (barge-in acts before the VAD confirms an utterance)."""
        activity = self.listener.activity if self.listener is not None else None
        return activity is not None and (
            activity.speaking_since is not None
            or activity.last_probability >= activity.settings.threshold)

    def listen(self, track, voice_input: VoiceInput) -> None:
        """Consume the user's audio track (one per session; voice_mode "off" ignores it)."""
        if self.listener is None and not self.closed and self.options.voice.mode != "off":
            played = PlayedAudio(self.player.clock.tick_time)  # the echo reference
            self.add_sink(played)
            self.listener = Listener(self, track, voice_input, self.options.voice, played)

    async def end_user_turn(self) -> bool:
        """The user's utterance is over (push-to-talk released): answered without waiting for
        the end-of-turn silence, once the audio received before the release is heard
        (Listener.end_turn). ApiError 409 when the session has no microphone; False when the
        user was not speaking."""
        if self.listener is None:
            raise ApiError(409, f"session {self.sessionid} has no microphone track (voice "
                           "input): there is no turn to end")
        return await self.listener.end_turn()

    @property
    def recording(self) -> bool:
        return self._recorder is not None

    def start_recording(self, recordings: Recordings) -> None:
        """Record into a new file of `recordings` (each recording its own file)."""
        file = recordings.begin(self.sessionid)
        self._recorder = Recorder(file.path, self.avatar.width, self.avatar.height)
        self._recording = (recordings, file)
        self.add_sink(self._recorder)
        self.events.emit("record_started", path=file.relative)

    async def stop_recording(self) -> RecordingFile:
        """Finalize the MP4 off the event loop (the stream goes on meanwhile) and tell the
        recordings index; RuntimeError when the file could not be written."""
        recorder, self._recorder = self._recorder, None
        assert recorder is not None and self._recording is not None, "not recording"
        self.remove_sink(recorder)
        (recordings, file), self._recording = self._recording, None
        try:
            await asyncio.get_running_loop().run_in_executor(None, recorder.finish)
        except RuntimeError:
            await recordings.end(file, saved=False)
            raise
        await recordings.end(file, saved=True)
        self.events.emit("record_saved", path=file.relative, seconds=recorder.ticks / VIDEO_FPS)
        return file

    def add_sink(self, sink: TickSink) -> None:
        """From the next tick on, `sink` gets every tick (media/sinks.py)."""
        self.player.add_sink(sink)

    @property
    def sinks(self) -> tuple[TickSink, ...]:
        return self.player.sinks

    def remove_sink(self, sink: TickSink) -> None:
        self.player.remove_sink(sink)

    @property
    def frames_sent(self) -> int:
        """Ticks played so far."""
        return self.player.frames_sent

    def start(self) -> None:
        """Play now, without waiting for a peer to pull (a server-created session)."""
        self._start_player()

    @property
    def speaking(self) -> bool:
        return self.player.speaking or self.pipeline.busy

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def watch_peer(self, offered_at: float) -> None:
        """Close the session when its peer is gone, or has not connected limits.setup_timeout_s
        after its offer arrived (`offered_at`, event-loop time in s): the slot is held from the
        offer on, so the timeout counts from there, not from the answer."""
        remaining_s = offered_at + self.limits.setup_timeout_s - asyncio.get_running_loop().time()
        self._peer_watch = asyncio.create_task(self._end_with_peer(max(remaining_s, 0.0)),
                                               name=f"peer-{self.sessionid}")

    async def _end_with_peer(self, setup_timeout_s: float) -> None:
        reason = await wait_peer_gone(self.pc, setup_timeout_s)
        log.info("peer gone sessionid=%s reason=%s", self.sessionid, reason)
        await self.close(reason)

    async def close(self, reason: str = "closed") -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            # Tasks are dropped once done: a finished task's exception (and its traceback's
            # frames) would otherwise tie the session into a cycle.
            watch, self._peer_watch = self._peer_watch, None
            if watch is not None and watch is not asyncio.current_task():
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            await self.player.stop()
            listener, self.listener = self.listener, None
            if listener is not None:
                await listener.close()
            dropped = await self.pipeline.close()
            await _cancel_streams(dropped)
            self.player.end_dropped(dropped, CUT_CLOSED)
            if self._recorder is not None:
                try:
                    await self.stop_recording()
                except RuntimeError:
                    log.exception("recording lost sessionid=%s", self.sessionid)
            sinks = self.player.take_sinks()
            await asyncio.gather(*(sink.close() for sink in sinks if isinstance(sink, Sink)),
                                 return_exceptions=True)
            self.video.stop()
            self.audio.stop()
            if self.pc is not None:
                await self.pc.close()
            self.events.emit("closed", reason=reason)
            self.events.close()
            log.info("session closed sessionid=%s reason=%s frames=%s", self.sessionid, reason,
                     self.frames_sent)
        finally:
            on_closed, self._on_closed = self._on_closed, None
            if on_closed is not None:
                on_closed(self.sessionid)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _start_player(self) -> None:
        if not self.closed:
            self.player.start()


async def _cancel_streams(dropped: list[Utterance]) -> None:
    """Streamed segments that were cut or never started stop taking audio (their producer's
    `push` raises StreamClosed instead of waiting for a reader that is gone)."""
    for utterance in dropped:
        if utterance.stream is not None:
            await utterance.stream.cancel()


def _avatar_cursor(stage: Stage) -> Callable[[], int]:
    """The stage's idle-loop position, read without holding the session."""
    return lambda: stage.avatar_tick
