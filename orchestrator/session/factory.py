"""The one place that builds sessions: `/offer`, WHEP's own sessions and the server session 0.

A session needs its avatars (the `avatar` field and `multiavatar_config`), their lip-sync models
served, its clips (`custom_config`), its voice known to an engine, its chat agent (the `llmid`
knowledge base and the LLM its profile names) and, for a client, a negotiated WebRTC peer. Every
check here is a request boundary too: what cannot be had is an `ApiError` naming the field (404
unknown, 400 malformed, 503 a model or TTS server that does not answer), raised before the
session exists, so a refused session loads nothing and holds no slot.

Built once at start-up (services.py) from the shared stores; holds no per-session state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from ..avatar.clip_cache import ClipCache
from ..avatar.clips import Clip, parse_custom_config
from ..avatar.multiavatar import FIELD as ROSTER_FIELD
from ..avatar.multiavatar import MAIN, Member, parse_multiavatar_config
from ..avatar.store import Avatar, AvatarNotFound, AvatarStore
from ..chat.agent import ChatAgent, llm_config_for
from ..chat.knowledge import KnowledgeStore, UnknownKnowledgeBase
from ..chat.llm import ChatLLM, LLMConfig, OpenAICompatibleLLM
from ..errors import ApiError
from ..lipsync.models import LipSyncModels
from ..media.idle_stream import IdleStreams
from ..media.rtcp_feedback import route_feedback
from ..media.video_track import sent_video_codec
from ..tts import TTSRouter, TTSServerUnavailable, UnknownVoice, Voice
from ..tts.base import plausible_voice_name
from ..voice_input.microphone import shorten_jitter_buffer
from ..voice_input.turn_taking import VoiceInput
from .registry import SessionRegistry
from .session import Session, SessionLimits, SessionOptions

log = logging.getLogger(__name__)


@dataclass
class SessionFactory:
    """Checks what a session asks for and builds it from the server's shared parts.

    `on_closed(sessionid)` is told when a session has closed (its slot is then free);
    `observer(event)` sees every session event (metrics).
    """

    tts: TTSRouter  # the default engine, and eSpeak for what it cannot say
    lipsync_models: LipSyncModels  # every model avatars name
    avatars: AvatarStore
    clip_cache: ClipCache  # decoded custom clips, shared by all sessions
    knowledge: KnowledgeStore
    registry: SessionRegistry
    rtc_configuration: RTCConfiguration
    limits: SessionLimits
    data_dir: Path  # custom_config's clip paths resolve inside it
    llm_config: LLMConfig | None  # the server-wide LLM (knowledge-base profiles may name others)
    on_closed: Callable[[int], None]
    observer: Callable[[dict], None] | None = None
    voice_input: VoiceInput | None = None  # None: --no-voice-input
    idle_streams: IdleStreams | None = None  # None: --no-shared-idle
    # After a failed Triton call: whether Triton is ready again within the seconds given.
    triton_back: Callable[[float], Awaitable[bool]] | None = None
    _llms: dict[LLMConfig, ChatLLM] = field(default_factory=dict)

    # --- sessions -------------------------------------------------------------------------
    async def open(self, sessionid: int, options: SessionOptions,
                   with_peer: bool = True) -> Session:
        """A session with its avatars, clips, voice and chat checked and loaded; without a peer
        (`with_peer` False) for the server's own session. ApiError naming the field that
        cannot be had."""
        members, clips, chat = await self._prepared(options)
        pc = RTCPeerConnection(self.rtc_configuration) if with_peer else None
        return Session(sessionid, pc, members, options, self.tts, self.lipsync_models, chat,
                       clips, self.observer, self.limits, self.on_closed, self.idle_streams,
                       self.triton_back)

    async def warm(self, options: SessionOptions) -> None:
        """Load now what a session with `options` loads on its /offer (its avatars and their
        lip-sync models, clips, voice and knowledge base: all shared, kept by their stores), so
        that such a session opens as fast as later ones. ApiError as `open` would raise it."""
        await self._prepared(options)

    async def _prepared(self, options: SessionOptions
                        ) -> tuple[dict[str, Member], dict[int, Clip], ChatAgent]:
        await self.check_voice(Voice.named(options.refaudio, options.reftext), "refaudio")
        members = await self.members(options.avatar, options.multiavatar_config)
        main = members[MAIN].avatar
        clips = await self.clips(options.custom_config, main.width, main.height)
        return members, clips, await self.chat_agent(options.llmid, "llmid")

    async def open_peer(self, options: SessionOptions, sdp: str,
                        offered_at: float) -> tuple[Session, str]:
        """A new session for the peer offering `sdp` (already checked as an SDP offer): the
        session, registered and watched, and the answer SDP. `offered_at` (event-loop time, s)
        starts the setup timeout. ApiError 503 at the session limit."""
        # The limit before any loading: a refused offer loads no avatar and decodes no clip.
        # The slot is given back on every failure path below.
        sessionid = self.registry.reserve()
        try:
            session = await self.open(sessionid, options)
            try:
                answer_sdp = await self._negotiate(session, sdp)
            except BaseException:
                await session.close("negotiation failed")
                raise
        except BaseException:
            self.registry.release(sessionid)
            raise
        self.registry.add(session)
        session.watch_peer(offered_at)
        log.info("session opened sessionid=%s avatar=%s", sessionid, options.avatar)
        return session, answer_sdp

    async def _negotiate(self, session: Session, sdp: str) -> str:
        """Our tracks to the peer, its microphone (a sendrecv audio offer) to the session's
        listener; the answer SDP. ApiError 400 when aiortc cannot take the offer."""
        pc = session.pc
        pc.addTrack(session.audio)
        route_feedback(pc.addTrack(session.video), session.video)  # PLI/FIR, REMB: our encoders
        voice_input = self.voice_input

        @pc.on("track")
        def on_track(track) -> None:  # a sendrecv audio offer: the user's microphone
            if track.kind == "audio" and voice_input is not None:
                for receiver in pc.getReceivers():
                    if receiver.track is track:
                        shorten_jitter_buffer(receiver)
                session.listen(track, voice_input)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, KeyError, AttributeError, IndexError) as exc:
            raise ApiError.bad_request(f"field 'sdp' could not be negotiated: {exc}") from None
        await pc.setLocalDescription(await pc.createAnswer())
        codec = sent_video_codec(pc.localDescription.sdp)
        if codec is not None:
            session.video.use_codec(codec)
        return pc.localDescription.sdp

    # --- what a session asks for, checked ---------------------------------------------------
    async def load_avatar(self, avatar_id: str, field_name: str) -> Avatar:
        """The avatar package, loaded off the event loop; 404/400 naming `field_name`."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self.avatars.load, avatar_id)
        except AvatarNotFound:
            raise ApiError.not_found(f"unknown {field_name} '{avatar_id}'") from None
        except ValueError as exc:
            raise ApiError.bad_request(f"field '{field_name}': {exc}") from None

    async def members(self, avatar_id: str, multiavatar_config: dict | None) -> dict[str, Member]:
        """The session's avatars by name: "main" (the `avatar` field unless the config names
        it) and those of multiavatar_config, loaded and with their voices checked."""
        specs = parse_multiavatar_config(multiavatar_config or {})
        members = {MAIN: Member(await self.load_avatar(avatar_id, "avatar"), None)}
        for spec in specs:
            avatar = await self.load_avatar(spec.avatar_id, f"{ROSTER_FIELD}.{spec.name}")
            if spec.voice is not None:
                await self.check_voice(Voice.named(spec.voice),
                                       f"{ROSTER_FIELD}.{spec.name}.voice")
            members[spec.name] = Member(avatar, spec.voice)
        for name, member in members.items():
            await self._check_lipsync_model(member.avatar, name)
        return members

    async def _check_lipsync_model(self, avatar: Avatar, name: str) -> None:
        try:
            model = await self.lipsync_models.get(avatar.lipsync_model)
        except Exception as exc:  # not served, not ready, or not a lip-sync signature
            raise ApiError(503, f"avatar '{avatar.id}' ({name}) needs lip-sync model "
                           f"'{avatar.lipsync_model}', which Triton does not serve: {exc}") from None
        missing = [k for k in model.avatar_inputs if k not in avatar.model_inputs]
        if missing:  # e.g. MuseTalk's latents, made when the avatar is built for it
            raise ApiError.bad_request(
                f"field 'avatar': avatar '{avatar.id}' ({name}) has no {', '.join(missing)} "
                f"for lip-sync model '{avatar.lipsync_model}' (build it with --model musetalk)")

    async def clips(self, custom_config: list | None, width: int, height: int) -> dict[int, Clip]:
        """custom_config checked, then its clips from the shared cache (decoded once per file
        version and frame size, off the event loop)."""
        sources = parse_custom_config(custom_config or [], self.data_dir)
        return await self.clip_cache.load(sources, width, height)

    async def check_voice(self, voice: Voice, field_name: str) -> None:
        """400 for what cannot be a voice name, 404 for a voice no engine has, 503 when the TTS
        server is down (engines ask Triton once per voice, then remember)."""
        if not plausible_voice_name(voice.name):
            raise ApiError.bad_request(f"field '{field_name}' is not a voice name: {voice.name!r}")
        try:
            await self.tts.check_voice(voice)
        except UnknownVoice:
            raise ApiError.not_found(f"unknown voice in '{field_name}': {voice.name!r}") from None
        except TTSServerUnavailable as exc:
            raise ApiError(503, f"{exc}: speech is unavailable until it answers") from None

    async def chat_agent(self, llmid: str, field_name: str) -> ChatAgent:
        """A new session's chat agent: its knowledge base, and the LLM that base's profile uses."""
        loop = asyncio.get_running_loop()
        try:
            knowledge = await loop.run_in_executor(None, self.knowledge.get, llmid)
        except UnknownKnowledgeBase:
            raise ApiError.not_found(f"unknown {field_name} '{llmid}' (no knowledge base)") from None
        except ValueError as exc:
            raise ApiError.bad_request(f"field '{field_name}': {exc}") from None
        config = llm_config_for(knowledge.profile, self.llm_config, self.limits.llm_max_tokens)
        if config is None:
            return ChatAgent(knowledge, None)
        if config not in self._llms:  # one client (connection pool) per endpoint and model
            self._llms[config] = OpenAICompatibleLLM(config)
        return ChatAgent(knowledge, self._llms[config])

    async def close(self) -> None:
        """The LLM clients' connection pools (sessions are the registry's to close)."""
        await asyncio.gather(*(llm.close() for llm in self._llms.values()), return_exceptions=True)
