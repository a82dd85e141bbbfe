"""What every request handler shares: settings, Triton clients, avatars, the session registry.

Built once at startup (starting the embedded Triton when no --triton-url is given) and torn down
at shutdown; nothing here is per-session state.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration

from .asr import asr_triton_models, open_asr
from .avatar.clip_cache import CLIP_CACHE_DIR, ClipCache
from .avatar.clips import Clip, parse_custom_config
from .avatar.multiavatar import FIELD as ROSTER_FIELD
from .avatar.multiavatar import MAIN, Member, parse_multiavatar_config
from .avatar.store import Avatar, AvatarNotFound, AvatarStore
from .chat.agent import ChatAgent, llm_config_for
from .chat.knowledge import KnowledgeStore, UnknownKnowledgeBase
from .chat.llm import ChatLLM, LLMConfig, OpenAICompatibleLLM
from .errors import ApiError
from .lipsync.default import DEFAULT_LIPSYNC_EXPORT
from .lipsync.mel import SAMPLE_RATE_HZ, melspectrogram
from .lipsync.models import LipSyncModels
from .media.ice import restrict_host_candidates, rtc_configuration
from .media.idle_stream import IdleStreams
from .media.recordings import Recordings
from .metrics import Metrics
from .session.heap_trim import HeapTrimmer
from .session.registry import SessionRegistry
from .settings import DEFAULT_LLM_MODEL, DEFAULT_OPENAI_BASE_URL, Settings
from .triton.artifacts import ensure_default_artifacts
from .triton.server import EmbeddedTriton, wait_models_ready
from .triton.shm import on_this_host
from .triton.supervisor import TritonSupervisor
from .tts import TTSRouter, TTSServerUnavailable, UnknownVoice, Voice, open_tts, triton_models
from .tts.base import plausible_voice_name
from .tts.reference_voices import VoiceStore
from .vad import open_vad
from .vad.activity import VADSettings
from .vad.silero import SILERO_EXPORT
from .voice_input.turn_taking import VoiceInput

log = logging.getLogger(__name__)

TRITON_READY_TIMEOUT_S = 120.0


@dataclass
class Services:
    settings: Settings
    triton_url: str
    tts: TTSRouter  # the default engine, and eSpeak for what it cannot say
    lipsync_models: LipSyncModels  # every model avatars name
    avatars: AvatarStore
    registry: SessionRegistry
    rtc_configuration: RTCConfiguration
    knowledge: KnowledgeStore
    metrics: Metrics
    llm_config: LLMConfig | None
    recordings: Recordings  # this run's recordings (never a previous run's files)
    clip_cache: ClipCache  # decoded custom clips, shared by all sessions
    triton: TritonSupervisor  # owns "is Triton ready now" (and restarts the embedded server)
    voices: VoiceStore  # reference clips for voice-cloning engines (data/voices/)
    embedded_triton: EmbeddedTriton | None = None
    voice_input: VoiceInput | None = None  # None: --no-voice-input
    idle_streams: IdleStreams | None = None  # None: --no-shared-idle
    heap_trimmer: HeapTrimmer = field(default_factory=HeapTrimmer)
    _llms: dict[LLMConfig, ChatLLM] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return triton_model_names(self.settings)

    async def load_avatar(self, avatar_id: str, field_name: str) -> Avatar:
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
            await self.lipsync_models.get(avatar.lipsync_model)
        except Exception as exc:  # not served, not ready, or not a lip-sync signature
            raise ApiError(503, f"avatar '{avatar.id}' ({name}) needs lip-sync model "
                           f"'{avatar.lipsync_model}', which Triton does not serve: {exc}") from None

    async def clips(self, custom_config: list | None, width: int, height: int) -> dict[int, Clip]:
        """custom_config checked, then its clips from the shared cache (decoded once per file
        version and frame size, off the event loop)."""
        sources = parse_custom_config(custom_config or [], self.settings.data_dir)
        return await self.clip_cache.load(sources, width, height)

    async def check_voice(self, voice: Voice, field_name: str) -> None:
        """400 for what cannot be a voice name, 404 for a voice no engine has, 503 when the TTS server is down (engines ask
        Triton once per voice, then remember)."""
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
        config = llm_config_for(knowledge.profile, self.llm_config)
        if config is None:
            return ChatAgent(knowledge, None)
        if config not in self._llms:  # one client (connection pool) per endpoint and model
            self._llms[config] = OpenAICompatibleLLM(config)
        return ChatAgent(knowledge, self._llms[config])

    async def triton_status(self) -> dict:
        """Server and model readiness as the supervisor last saw it (at most a probe interval
        old); never raises and never waits on Triton: health and metrics answer regardless."""
        return {"url": self.triton_url, "embedded": self.embedded_triton is not None,
                "restarts": self.triton.restarts, **self.triton.status}

    def session_closed(self, sessionid: int) -> None:
        """A session's slot is free, and the memory it freed goes back to the system."""
        self.registry.release(sessionid)
        self.heap_trimmer.request()

    def require_triton(self) -> None:
        """The gate of what needs TTS and lip-sync (/offer, /human, /humanaudio): 503 while
        Triton is not ready, instead of accepting speech that could never be spoken."""
        if not self.triton.ready:
            raise ApiError(503, f"Triton is not ready ({self.triton.reason}): speech is "
                           "unavailable until it recovers (see /healthz)")

    async def close(self) -> None:
        await self.triton.close()  # first: nothing may restart the server being stopped
        await asyncio.gather(*(s.close() for s in self.registry.all()), return_exceptions=True)
        await self.tts.close()
        if self.voice_input is not None:
            await self.voice_input.close()
        await self.lipsync_models.close()
        await asyncio.gather(*(llm.close() for llm in self._llms.values()), return_exceptions=True)
        self.heap_trimmer.close()
        if self.embedded_triton is not None:
            await self.embedded_triton.stop()


# Where the app keeps the services (typed key: aiohttp checks the value's type).
SERVICES_KEY = web.AppKey("services", Services)


async def start_services(settings: Settings) -> Services:
    restrict_host_candidates(settings.ice_hosts)
    # librosa compiles its kernels on first use (seconds): pay that before the first utterance.
    warm_up = asyncio.get_running_loop().run_in_executor(
        None, melspectrogram, np.zeros(SAMPLE_RATE_HZ // 10, np.float32))
    models = triton_model_names(settings)
    embedded = None
    exports = [DEFAULT_LIPSYNC_EXPORT, *([SILERO_EXPORT] if settings.voice_input else [])]
    await ensure_default_artifacts(settings, with_models=not settings.triton_url, exports=exports)
    if settings.triton_url:
        url = settings.triton_url
        await wait_models_ready(url, models, TRITON_READY_TIMEOUT_S)
    else:
        embedded = EmbeddedTriton(settings.model_repository, models=models)
        await embedded.start()
        url = embedded.url
    registry = SessionRegistry(settings.max_sessions, settings.max_session_misses,
                               settings.instance_id, forward_elsewhere=bool(settings.peer_url))
    metrics = Metrics(lambda: len(registry), settings.max_sessions, registry.queued_speech_seconds)
    triton = TritonSupervisor(url, models, embedded, on_restart=metrics.triton_restarts.inc)
    await triton.start()
    services = Services(
        settings=settings,
        triton_url=url,
        tts=await open_tts(settings, url),
        lipsync_models=LipSyncModels(url, shared_memory=on_this_host(url),
                                     on_frames=metrics.count_lipsync_frames),
        avatars=AvatarStore(settings.avatar_dir),
        registry=registry,
        rtc_configuration=rtc_configuration(settings),
        knowledge=KnowledgeStore(settings.knowledge_dir),
        metrics=metrics,
        llm_config=llm_config(settings),
        recordings=Recordings(settings.data_dir),
        clip_cache=ClipCache(settings.data_dir / CLIP_CACHE_DIR),
        triton=triton,
        voices=VoiceStore(settings.data_dir),
        embedded_triton=embedded,
        voice_input=voice_input(settings, url),
        idle_streams=IdleStreams() if settings.shared_idle else None,
    )
    if services.idle_streams is not None:
        metrics.watch_idle_streams(services.idle_streams)
    await warm_up
    status = await services.triton_status()
    log.info("triton at %s (%s): %s", url, "embedded" if embedded else "external", status)
    # Which voice speaks is the first thing a user asks: say it once, at start.
    log.info("tts: %s%s, fallback espeak (%s)", settings.tts,
             f" voice {settings.piper_voice}" if settings.tts == "piper" else "",
             settings.tts_model)
    return services


def triton_model_names(settings: Settings) -> list[str]:
    voice = asr_triton_models(settings) if settings.voice_input else []
    return [*triton_models(settings), settings.lipsync_model, *voice]


def voice_input(settings: Settings, triton_url: str) -> VoiceInput | None:
    if not settings.voice_input:
        return None
    return VoiceInput(open_vad(triton_url), open_asr(settings, triton_url),
                      VADSettings.from_settings(settings), settings.barge_in_min_s)


def llm_config(settings: Settings) -> LLMConfig | None:
    """The server-wide LLM, when an endpoint or an API key is configured."""
    if not (settings.llm_base_url or settings.llm_api_key):
        return None
    return LLMConfig(base_url=settings.llm_base_url or DEFAULT_OPENAI_BASE_URL,
                     api_key=settings.llm_api_key, model=settings.llm_model or DEFAULT_LLM_MODEL,
                     timeout_s=settings.llm_timeout_s)
