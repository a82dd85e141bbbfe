"""What every request handler shares: settings, Triton clients, avatars, the session registry,
the session factory. A plain container: the checks a request needs live with their owners
(`session/factory.py` for what a session asks for).

Built once at startup (starting the embedded Triton when no --triton-url is given, and loading
what a session with the default options loads, so that the first /offer is not the slow one) and
torn down at shutdown; nothing here is per-session state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration

from .asr import asr_triton_models, open_asr
from .avatar.clip_cache import CLIP_CACHE_DIR, ClipCache
from .avatar.store import AvatarStore
from .chat.knowledge import DEFAULT_LLMID, KnowledgeStore, load_word_segmenter
from .chat.llm import LLMConfig
from .errors import ApiError
from .lipsync.default import DEFAULT_LIPSYNC_EXPORT
from .lipsync.mel import SAMPLE_RATE_HZ, melspectrogram
from .lipsync.models import LipSyncModels
from .media.ice import restrict_host_candidates, rtc_configuration
from .media.idle_stream import IdleStreams
from .media.recordings import Recordings
from .metrics import Metrics
from .session.factory import SessionFactory
from .session.heap_trim import HeapTrimmer
from .session.registry import SessionRegistry
from .session.session import SessionLimits, SessionOptions
from .settings import DEFAULT_LLM_MODEL, DEFAULT_OPENAI_BASE_URL, Settings
from .triton.artifacts import ensure_default_artifacts
from .triton.server import EmbeddedTriton, wait_models_ready
from .triton.shm import on_this_host
from .triton.supervisor import TritonSupervisor
from .tts import TTSRouter, describe_tts, model_artifacts, open_tts, triton_models
from .tts.reference_voices import VoiceStore
from .vad import open_vad, vad_triton_models
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
    llm_config: LLMConfig | None  # the server-wide LLM (None: FAQ answers unless a profile names one)
    recordings: Recordings  # this run's recordings (never a previous run's files)
    clip_cache: ClipCache  # decoded custom clips, shared by all sessions
    triton: TritonSupervisor  # owns "is Triton ready now" (and restarts the embedded server)
    voices: VoiceStore  # reference clips for voice-cloning engines (data/voices/)
    session_factory: SessionFactory  # builds and checks every session (/offer, WHEP, session 0)
    embedded_triton: EmbeddedTriton | None = None
    voice_input: VoiceInput | None = None  # None: --no-voice-input
    idle_streams: IdleStreams | None = None  # None: --no-shared-idle
    heap_trimmer: HeapTrimmer = field(default_factory=HeapTrimmer)

    @property
    def models(self) -> list[str]:
        return triton_model_names(self.settings)

    async def triton_status(self) -> dict:
        """Server and model readiness as the supervisor last saw it (at most a probe interval
        old); never raises and never waits on Triton: health and metrics answer regardless."""
        return {"url": self.triton_url, "embedded": self.embedded_triton is not None,
                "restarts": self.triton.restarts, **self.triton.status}

    async def close(self) -> None:
        await self.triton.close()  # first: nothing may restart the server being stopped
        await asyncio.gather(*(s.close() for s in self.registry.all()), return_exceptions=True)
        await self.tts.close()
        if self.voice_input is not None:
            await self.voice_input.close()
        await self.lipsync_models.close()
        await self.session_factory.close()
        self.heap_trimmer.close()
        if self.embedded_triton is not None:
            await self.embedded_triton.stop()


# Where the app keeps the services (typed key: aiohttp checks the value's type).
SERVICES_KEY = web.AppKey("services", Services)


async def start_services(settings: Settings) -> Services:
    restrict_host_candidates(settings.ice_hosts)
    # librosa compiles its kernels on first use (seconds): pay that before the first utterance.
    loop = asyncio.get_running_loop()
    warm_up = loop.run_in_executor(None, melspectrogram, np.zeros(SAMPLE_RATE_HZ // 10, np.float32))
    # jieba reads its dictionary on first use (~0.5 s): pay it while Triton starts.
    segmenter = loop.run_in_executor(None, load_word_segmenter)
    models = triton_model_names(settings)
    embedded = None
    repository = settings.model_repository
    exports = [DEFAULT_LIPSYNC_EXPORT, *([SILERO_EXPORT] if settings.voice_input else [])]
    await ensure_default_artifacts(
        settings, with_models=not settings.triton_url,
        engine_artifacts=[*(e.artifact(repository) for e in exports), *model_artifacts(settings)])
    if settings.triton_url:
        url = settings.triton_url
        await wait_models_ready(url, models, TRITON_READY_TIMEOUT_S)
    else:
        embedded = EmbeddedTriton(settings.model_repository, models=models)
        await embedded.start()
        url = embedded.url
    registry = SessionRegistry(settings.max_sessions, settings.max_session_misses,
                               settings.instance_id,
                               forward_elsewhere=bool(settings.peer_url) or settings.workers > 1,
                               server_session_instance=server_session_instance(settings))
    metrics = Metrics(lambda: len(registry), settings.max_sessions, registry.queued_speech_seconds)
    triton = TritonSupervisor(url, models, embedded, on_restart=metrics.triton_restarts.inc)
    await triton.start()
    tts = await open_tts(settings, url)
    lipsync_models = LipSyncModels(url, shared_memory=on_this_host(url),
                                   on_frames=metrics.count_lipsync_frames)
    avatars = AvatarStore(settings.avatar_dir)
    knowledge = KnowledgeStore(settings.knowledge_dir)
    clip_cache = ClipCache(settings.data_dir / CLIP_CACHE_DIR)
    ice = rtc_configuration(settings)
    voice = voice_input(settings, url)
    idle_streams = IdleStreams() if settings.shared_idle else None
    heap_trimmer = HeapTrimmer()
    server_llm = llm_config(settings)

    def session_closed(sessionid: int) -> None:
        """A session's slot is free, and the memory it freed goes back to the system."""
        registry.release(sessionid)
        heap_trimmer.request()

    factory = SessionFactory(
        tts=tts, lipsync_models=lipsync_models, avatars=avatars, clip_cache=clip_cache,
        knowledge=knowledge, registry=registry, rtc_configuration=ice,
        limits=SessionLimits.from_settings(settings), data_dir=settings.data_dir,
        llm_config=server_llm, on_closed=session_closed, observer=metrics.observe,
        voice_input=voice, idle_streams=idle_streams, triton_back=triton.wait_ready)
    services = Services(
        settings=settings,
        triton_url=url,
        tts=tts,
        lipsync_models=lipsync_models,
        avatars=avatars,
        registry=registry,
        rtc_configuration=ice,
        knowledge=knowledge,
        metrics=metrics,
        llm_config=server_llm,
        recordings=Recordings(settings.data_dir),
        clip_cache=clip_cache,
        triton=triton,
        voices=VoiceStore(settings.data_dir),
        session_factory=factory,
        embedded_triton=embedded,
        voice_input=voice,
        idle_streams=idle_streams,
        heap_trimmer=heap_trimmer,
    )
    if services.idle_streams is not None:
        metrics.watch_idle_streams(services.idle_streams)
    await warm_up
    await segmenter
    await warm_defaults(settings, factory)
    status = await services.triton_status()
    log.info("triton at %s (%s): %s", url, "embedded" if embedded else "external", status)
    # Which voice speaks is the first thing a user asks: say it once, at start.
    log.info("tts: %s", describe_tts(settings))
    return services


async def start_shared_triton(settings: Settings) -> EmbeddedTriton:
    """The embedded Triton of a host's workers (orchestrator/workers.py), started once by their
    parent: the artifacts it needs built, as start_services builds them for its own."""
    repository = settings.model_repository
    exports = [DEFAULT_LIPSYNC_EXPORT, *([SILERO_EXPORT] if settings.voice_input else [])]
    await ensure_default_artifacts(
        settings, with_models=True,
        engine_artifacts=[*(e.artifact(repository) for e in exports), *model_artifacts(settings)])
    embedded = EmbeddedTriton(repository, models=triton_model_names(settings))
    await embedded.start()
    return embedded


def server_session_instance(settings: Settings) -> int | None:
    """With --workers and an output that needs the server session: the instance of the worker
    that holds it (worker 0 of this host), when that is another worker; else None."""
    if settings.workers == 1 or not settings.server_session:
        return None
    own = settings.instance_id or 0
    host_worker_0 = own - own % settings.workers
    return host_worker_0 if own != host_worker_0 else None


async def warm_defaults(settings: Settings, factory: SessionFactory) -> None:
    """Load what a session with the server's defaults loads on its /offer (the avatars of
    --avatar-id and --multiavatar-config with their lip-sync models, the clips of
    --customvideo-config, the voice, the --llmid knowledge base) and the shipped default
    knowledge base, before the server answers: the first session after start then opens as fast
    as later ones. A default that cannot be had is logged, not fatal: a session asking for it
    gets the error it always got."""
    started = time.monotonic()
    try:
        await factory.warm(default_session_options(settings))
    except (ApiError, ValueError) as exc:
        log.warning("warm start: a session with the default options would be refused: %s",
                    exc.msg if isinstance(exc, ApiError) else exc)
    try:
        await factory.chat_agent(DEFAULT_LLMID, "llmid")  # loaded above unless --llmid names another
    except ApiError as exc:
        log.warning("warm start: the default knowledge base: %s", exc.msg)
    log.info("warm start: the defaults loaded in %.0f ms", (time.monotonic() - started) * 1000)


def default_session_options(settings: Settings) -> SessionOptions:
    """The options of an /offer that gives none: the settings' defaults (http/api.py's
    `session_options` with no field). ValueError for a config setting that is not JSON of its
    kind."""
    def config(text: str, kind: type, flag: str):
        if not text.strip():
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{flag} is not JSON: {exc}") from None
        if not isinstance(value, kind):
            raise ValueError(f"{flag} must be a JSON {'list' if kind is list else 'object'}")
        return value

    return SessionOptions(
        avatar=settings.avatar_id, refaudio=settings.ref_file, reftext=settings.ref_text,
        llmid=settings.llmid,
        custom_config=config(settings.customvideo_config, list, "--customvideo-config"),
        multiavatar_config=config(settings.multiavatar_config, dict, "--multiavatar-config"))


def triton_model_names(settings: Settings) -> list[str]:
    # voice input: the VAD's models, then the ASR's
    voice = [*vad_triton_models(), *asr_triton_models(settings)] if settings.voice_input else []
    return [*triton_models(settings), settings.lipsync_model, *voice]


def voice_input(settings: Settings, triton_url: str) -> VoiceInput | None:
    if not settings.voice_input:
        return None
    return VoiceInput(open_vad(triton_url), open_asr(settings, triton_url),
                      VADSettings.from_settings(settings), settings.barge_in_min_s,
                      settings.echo_cancellation)


def llm_config(settings: Settings) -> LLMConfig | None:
    """The server-wide LLM, when an endpoint or an API key is configured."""
    if not (settings.llm_base_url or settings.llm_api_key):
        return None
    return LLMConfig(base_url=settings.llm_base_url or DEFAULT_OPENAI_BASE_URL,
                     api_key=settings.llm_api_key, model=settings.llm_model or DEFAULT_LLM_MODEL,
                     timeout_s=settings.llm_timeout_s, max_tokens=settings.llm_max_tokens)
