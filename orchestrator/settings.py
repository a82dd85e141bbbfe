"""One typed settings object, built from CLI flags (and environment), passed down to everything."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .session.ids import MAX_INSTANCE_ID

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
# User speech (VAD probability over its threshold) this long interrupts the talking avatar:
# three 32 ms Silero frames, less than --vad-min-speech (0.15 s), which decides what is a turn.
DEFAULT_BARGE_IN_MIN_S = 0.09
# Outputs (orchestrator/outputs/): WebRTC sessions by /offer, an RTMP push and WHEP viewers of
# the server's own session. LiveTalking's other transports, and what to use instead.
TRANSPORTS = ("webrtc", "rtmp", "whep")
DEFAULT_TRANSPORTS = ("webrtc",)
UNSUPPORTED_TRANSPORTS = {
    "rtcpush": "use --transport whep (WHEP viewers pull the server session) or rtmp",
    "virtualcam": "pull the server session into OBS with --transport whep or rtmp instead",
}
RTMP_SCHEMES = ("rtmp", "rtmps")
DEFAULT_MAX_WHEP_VIEWERS = 4
# SIGTERM: how long live sessions may go on before they are closed (orchestrator/drain.py).
# 20 s fits Kubernetes' default 30 s grace period with time left to close them and Triton.
DEFAULT_DRAIN_TIMEOUT_S = 20.0


def tts_engines() -> list[str]:
    from .tts import ENGINES  # the registry imports engine modules: only when parsing flags

    return list(ENGINES)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    triton_url: str | None = None
    model_repository: Path = PROJECT_ROOT / "model_repository"
    data_dir: Path = PROJECT_ROOT / "data"
    avatar_dir: Path = PROJECT_ROOT / "data" / "avatars"
    avatar_id: str = "default"
    ref_file: str = ""
    ref_text: str = ""
    llmid: str = ""
    customvideo_config: str = ""
    multiavatar_config: str = ""
    max_sessions: int = DEFAULT_MAX_SESSIONS
    # A request body (JSON or each multipart read) must arrive within this, or 408.
    body_read_timeout_s: float = DEFAULT_BODY_READ_TIMEOUT_S
    setup_timeout_s: float = DEFAULT_SETUP_TIMEOUT_S
    max_queued_utterances: int = DEFAULT_MAX_QUEUED_UTTERANCES
    max_queued_speech_s: float = DEFAULT_MAX_QUEUED_SPEECH_S
    stun: tuple[str, ...] = ()
    turn: tuple[str, ...] = ()
    turn_username: str | None = None
    turn_password: str | None = None
    ice_hosts: tuple[str, ...] = ()
    # Sessions showing the same avatar idle share one encoder's frames (idle_stream.py).
    shared_idle: bool = True
    lipsync_model: str = "lipsync_default"
    tts_model: str = "tts_espeak"  # eSpeak's Triton model (the fallback engine)
    tts: str = "piper"  # the default engine (orchestrator/tts ENGINES); eSpeak speaks the rest
    piper_voice: str = "joe"  # the Piper engine's voice when none is asked for
    # Voice-cloning engines (cosyvoice, gpt-sovits, fishtts, openai): their server's base URL
    # ("" = the engine's usual local address), its output rate where the answer carries none
    # (0 = the engine's documented rate), the OpenAI-compatible model, default voice and key,
    # and data/voices/ as a GPT-SoVITS server on another machine sees it ("" = ours).
    tts_server: str = ""
    tts_sample_rate_hz: int = 0
    tts_model_name: str = ""
    tts_voice: str = ""
    tts_api_key: str = ""
    tts_ref_dir: str = ""
    knowledge_dir: Path = PROJECT_ROOT / "data" / "knowledge"
    # LLM for `chat` (OpenAI-compatible); None: no server-wide LLM (knowledge-base profiles
    # may still name one), chat answers from the FAQ.
    llm_base_url: str | None = None
    llm_api_key: str = ""
    llm_model: str | None = None
    llm_timeout_s: float = 30.0
    log_level: str = "INFO"
    # Access (docs/SECURITY.md): None: no token asked; origins allowed cross-site (CORS), "*" any.
    api_token: str | None = None
    cors_origins: tuple[str, ...] = ()
    protect_metrics: bool = False
    max_session_misses: int = DEFAULT_MAX_SESSION_MISSES
    # Several orchestrators behind one address: this one's id, carried in its session ids
    # (session_registry.py); None: ids random over the whole range.
    instance_id: int | None = None
    # Where the other instances are: a URL template with {instance} (peer_forward.py); "" none.
    peer_url: str = ""
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    # A folder of static pages served at / (e.g. LiveTalking's web/); None: our client at /.
    web_dir: Path | None = None
    # Voice input (orchestrator/voice_input/turn_taking.py): VAD on Triton, Whisper on Triton unless asr_url
    # (an OpenAI-compatible /v1/audio/transcriptions server).
    voice_input: bool = True
    asr_url: str = ""
    asr_model_name: str = ""
    asr_api_key: str = ""
    asr_language: str = ""
    voice_mode: str = "chat"
    barge_in: bool = True
    barge_in_min_s: float = DEFAULT_BARGE_IN_MIN_S
    vad_threshold: float = 0.5
    vad_neg_threshold: float = 0.35
    vad_min_speech_s: float = 0.15
    vad_min_silence_s: float = 0.35
    # Outputs: `transports` in TRANSPORTS; rtmp or whep opens the server session (sessionid 0)
    # at start; rtmp pushes it to every URL of `push_urls`.
    transports: tuple[str, ...] = DEFAULT_TRANSPORTS
    push_urls: tuple[str, ...] = ()
    max_whep_viewers: int = DEFAULT_MAX_WHEP_VIEWERS
    extra: dict = field(default_factory=dict)

    @property
    def server_session(self) -> bool:
        """Whether the server opens its own session at start (the push and pull outputs)."""
        return "rtmp" in self.transports or "whep" in self.transports


def _int_or_none(text: str | None) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"LIVEHUMAN_INSTANCE_ID={text[:40]!r} is not an integer") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="livehuman: a real-time streaming talking avatar over WebRTC. "
        "Every model call goes to NVIDIA Triton (an embedded tritonserver unless --triton-url).",
    )
    net = p.add_argument_group("HTTP")
    net.add_argument("--host", default=os.environ.get("LIVEHUMAN_HOST", "127.0.0.1"),
                     help="address the HTTP API listens on (default 127.0.0.1)")
    net.add_argument("--port", "--listenport", dest="port", type=int,
                     default=int(os.environ.get("LIVEHUMAN_PORT", DEFAULT_PORT)),
                     help="HTTP port (default 8010)")
    net.add_argument("--api-token", default=os.environ.get("LIVEHUMAN_API_TOKEN") or None,
                     help="require this token on every control endpoint (Authorization: Bearer, "
                     "or ?token= for SSE and downloads); default: LIVEHUMAN_API_TOKEN, else none. "
                     "Prefer the environment variable: a flag is visible in the process list")
    net.add_argument("--cors-origin", action="append", default=[], dest="cors_origins",
                     help="let pages from this origin (e.g. https://app.example.com) call the API "
                     "from the browser (repeatable; '*' for any). Default: none")
    net.add_argument("--protect-metrics", action="store_true",
                     help="require the token on /healthz and /metrics too (default: open)")
    net.add_argument("--max-session-misses", type=int, default=DEFAULT_MAX_SESSION_MISSES,
                     help="unknown-sessionid lookups a client address may make per minute before "
                     f"it gets 429 (default {DEFAULT_MAX_SESSION_MISSES})")
    net.add_argument("--body-read-timeout", dest="body_read_timeout_s", type=float,
                     default=DEFAULT_BODY_READ_TIMEOUT_S,
                     help="seconds a request body (or each read of an upload) may take to arrive "
                     f"before the request is answered 408 (default {DEFAULT_BODY_READ_TIMEOUT_S:g})")
    net.add_argument("--web-dir", type=Path, default=None,
                     help="serve this folder of static pages at / (its index.html at /), same "
                     "origin as the API, e.g. LiveTalking's web/ folder; our own client moves to "
                     "/client/. Default: our client at /")
    tr = p.add_argument_group("Triton")
    tr.add_argument("--triton-url", default=os.environ.get("TRITON_URL"),
                    help="gRPC host:port of a running Triton server (e.g. the official container). "
                    "Without it a local tritonserver is started on loopback and stopped on exit.")
    tr.add_argument("--model-repository", type=Path, default=Settings.model_repository,
                    help="model repository for the embedded server")
    tr.add_argument("--lipsync-model", default="lipsync_default",
                    help="Triton model used for lip-sync when the avatar does not name one")
    tr.add_argument("--tts-model", default="tts_espeak",
                    help="Triton model of the eSpeak engine (every language; the fallback)")
    av_tts = p.add_argument_group("speech")
    av_tts.add_argument("--tts", default="piper", choices=sorted(tts_engines()),
                        help="default TTS engine (default: piper, the neural English voice; "
                        "text it cannot say, e.g. Chinese, is spoken by espeak)")
    av_tts.add_argument("--piper-voice", default="joe",
                        help="Piper voice used when none is asked for (default: joe; add one "
                        "with python -m export piper-voice)")
    av_tts.add_argument("--tts-server", default="",
                        help="base URL of the voice-cloning server for --tts cosyvoice, "
                        "gpt-sovits, fishtts or openai (default: the engine's usual local port: "
                        "cosyvoice :50000, gpt-sovits :9880, fishtts :8080, openai :8000)")
    av_tts.add_argument("--tts-sample-rate", dest="tts_sample_rate_hz", type=int, default=0,
                        help="sample rate of a server that sends raw PCM without saying it "
                        "(default: cosyvoice 24000 (CosyVoice2/3; 22050 for CosyVoice-300M), "
                        "openai 24000)")
    av_tts.add_argument("--tts-model-name", default="",
                        help="model field of an OpenAI-compatible speech server (default tts-1)")
    av_tts.add_argument("--tts-voice", default="",
                        help="voice of an OpenAI-compatible speech server when none is asked "
                        "for (default alloy)")
    av_tts.add_argument("--tts-api-key", default=os.environ.get("TTS_API_KEY", ""),
                        help="bearer token for the TTS server (default: TTS_API_KEY)")
    av_tts.add_argument("--tts-ref-dir", default="",
                        help="for gpt-sovits on another machine: the path there of this "
                        "server's data/voices/ folder (GPT-SoVITS reads reference clips from "
                        "its own disk)")
    av = p.add_argument_group("avatars and voices")
    av.add_argument("--data-dir", type=Path, default=Settings.data_dir,
                    help="data directory (recordings, knowledge bases, clips)")
    av.add_argument("--avatar-dir", type=Path, default=None,
                    help="directory of avatar packages (default: DATA_DIR/avatars)")
    av.add_argument("--avatar-id", "--avatar_id", dest="avatar_id", default="default",
                    help="default avatar id for sessions (default: 'default')")
    av.add_argument("--ref-file", "--REF_FILE", dest="ref_file", default="",
                    help="default voice: a Piper voice (joe) or an eSpeak voice (en-us, cmn, fr); "
                    "'' picks by the text's language (Piper for English, eSpeak for the rest)")
    av.add_argument("--ref-text", "--REF_TEXT", dest="ref_text", default="",
                    help="transcript of the reference audio (voice-cloning TTS)")
    av.add_argument("--customvideo-config", "--customvideo_config", dest="customvideo_config",
                    default="", help="default custom_config JSON for sessions")
    av.add_argument("--multiavatar-config", "--multiavatar_config", dest="multiavatar_config",
                    default="", help="default multiavatar_config JSON for sessions")
    ch = p.add_argument_group("chat (LLM and knowledge bases)")
    ch.add_argument("--llm-base-url", default=os.environ.get("OPENAI_BASE_URL"),
                    help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM, Ollama, "
                    "Triton's OpenAI frontend); overrides OPENAI_BASE_URL. The key is read from "
                    "OPENAI_API_KEY. Without any, chat answers from the knowledge base's FAQ")
    ch.add_argument("--llm-model", default=os.environ.get("OPENAI_MODEL"),
                    help="model name for chat; overrides OPENAI_MODEL")
    ch.add_argument("--llm-timeout", type=float, default=30.0,
                    help="seconds to wait for the LLM's first and each next token (default 30)")
    ch.add_argument("--knowledge-dir", type=Path, default=None,
                    help="knowledge bases, a folder per llmid (default: DATA_DIR/knowledge; "
                    "llmid '' is 'default', shipped with the package unless present here)")
    ch.add_argument("--llmid", default="", help="default llmid for sessions (default '')")
    se = p.add_argument_group("sessions and WebRTC")
    se.add_argument("--max-session", "--max_session", dest="max_sessions", type=int,
                    default=DEFAULT_MAX_SESSIONS,
                    help=f"maximum concurrent sessions (default {DEFAULT_MAX_SESSIONS})")
    se.add_argument("--setup-timeout", dest="setup_timeout_s", type=float,
                    default=DEFAULT_SETUP_TIMEOUT_S,
                    help="seconds a new session may take to connect its peer before it is closed "
                    f"and its slot freed (default {DEFAULT_SETUP_TIMEOUT_S:g})")
    se.add_argument("--max-queued-utterances", type=int, default=DEFAULT_MAX_QUEUED_UTTERANCES,
                    help="utterances a session may have waiting or speaking; more answer 429 "
                    f"(default {DEFAULT_MAX_QUEUED_UTTERANCES})")
    se.add_argument("--max-queued-speech", dest="max_queued_speech_s", type=float,
                    default=DEFAULT_MAX_QUEUED_SPEECH_S,
                    help="seconds of speech a session may have waiting or speaking (estimated for "
                    "text, exact for uploads); more answer 429 "
                    f"(default {DEFAULT_MAX_QUEUED_SPEECH_S:g})")
    se.add_argument("--stun", action="append", default=[],
                    help="STUN server URL (repeatable); none by default")
    se.add_argument("--turn", action="append", default=[],
                    help="TURN server URL (repeatable), with --turn-username/--turn-password")
    se.add_argument("--turn-username", default=None)
    se.add_argument("--turn-password", default=None)
    se.add_argument("--ice-host", action="append", default=[], dest="ice_hosts",
                    help="only advertise these addresses as ICE host candidates (repeatable; "
                    "e.g. 127.0.0.1 for loopback-only, or a public/NAT 1:1 address). Default: "
                    "all non-loopback interface addresses")
    se.add_argument("--no-shared-idle", dest="shared_idle", action="store_false",
                    help="encode every session's idle video on its own (default: sessions showing "
                    "the same avatar idle share one encoder's frames)")
    out = p.add_argument_group("outputs (docs/OUTPUTS.md)")
    out.add_argument("--transport", action="append", default=None, dest="transports",
                     metavar="webrtc|rtmp|whep",
                     help="what the server streams (repeatable, or a comma list; default webrtc): "
                     "webrtc = a session per POST /offer; rtmp = the server session (sessionid "
                     "0, opened at start, /human with sessionid 0 speaks on it) pushed to "
                     "--push-url; whep = WHEP viewers (OBS, GStreamer) of that session at "
                     "POST /whep. E.g. --transport webrtc,rtmp")
    out.add_argument("--push-url", "--push_url", action="append", default=[], dest="push_urls",
                     help="RTMP URL the server session is pushed to with --transport rtmp, e.g. "
                     "rtmp://live.example.com/app/STREAM_KEY (repeatable: one push each). "
                     "Prefer LIVEHUMAN_PUSH_URL: a flag is visible in the process list")
    out.add_argument("--max-whep-viewers", type=int, default=DEFAULT_MAX_WHEP_VIEWERS,
                     help="WHEP viewers at once; more answer 503 (default "
                     f"{DEFAULT_MAX_WHEP_VIEWERS}; each encodes its own video)")
    se.add_argument("--drain-timeout", dest="drain_timeout_s", type=float,
                    default=float(os.environ.get("LIVEHUMAN_DRAIN_TIMEOUT",
                                                 DEFAULT_DRAIN_TIMEOUT_S)),
                    help="on SIGTERM, take no new session (/offer 503 with Retry-After, /healthz "
                    "503 'draining') and let live ones go on for up to this many seconds before "
                    "closing them; a second SIGTERM or SIGINT stops at once "
                    f"(default {DEFAULT_DRAIN_TIMEOUT_S:g}; LIVEHUMAN_DRAIN_TIMEOUT)")
    se.add_argument("--instance-id", type=int,
                    default=_int_or_none(os.environ.get("LIVEHUMAN_INSTANCE_ID")),
                    help="this orchestrator's number among several behind one address "
                    f"(0 … {MAX_INSTANCE_ID}): it is put in the top bits of every session id, so "
                    "a request can be routed to the session's server by its id alone "
                    "(docs/DEPLOY.md). Default: LIVEHUMAN_INSTANCE_ID, else none")
    se.add_argument("--peer-url", default=os.environ.get("LIVEHUMAN_PEER_URL", ""),
                    help="with --instance-id: the base URL of orchestrator instance {instance}, "
                    "e.g. http://livehuman-orchestrator-{instance}.livehuman-peers:8010; a "
                    "request for a session of another instance is forwarded there "
                    "(default: LIVEHUMAN_PEER_URL, else none: such a request is a 404)")
    vi = p.add_argument_group("voice input (microphone, VAD, speech recognition)")
    vi.add_argument("--no-voice-input", dest="voice_input", action="store_false",
                    help="ignore the microphone track a client sends (no VAD or ASR models)")
    vi.add_argument("--asr-url", default="",
                    help="base URL of an OpenAI-compatible /v1/audio/transcriptions server "
                    "(e.g. a SenseVoice or whisper server for Chinese); default: Whisper tiny.en "
                    "on Triton (English)")
    vi.add_argument("--asr-model-name", default="",
                    help="model field sent to --asr-url (default whisper-1)")
    vi.add_argument("--asr-api-key", default=os.environ.get("ASR_API_KEY", ""),
                    help="bearer token for --asr-url (default: ASR_API_KEY)")
    vi.add_argument("--asr-language", default="",
                    help="language field sent to --asr-url (e.g. zh); default: none")
    vi.add_argument("--voice-mode", default="chat", choices=["chat", "echo", "off"],
                    help="what a session's transcript becomes when /offer does not say "
                    "(voice_mode): a chat question, an echo, or nothing (default chat)")
    vi.add_argument("--no-barge-in", dest="barge_in", action="store_false",
                    help="user speech does not interrupt the avatar (default: it does)")
    vi.add_argument("--barge-in-min", dest="barge_in_min_s", type=float,
                    default=DEFAULT_BARGE_IN_MIN_S,
                    help="seconds of user speech that interrupt the talking avatar (default "
                         f"{DEFAULT_BARGE_IN_MIN_S:g}: three 32 ms VAD frames; may be shorter "
                         "than --vad-min-speech, which only decides what is a turn)")
    vi.add_argument("--vad-threshold", type=float, default=0.5,
                    help="speech probability at which speech starts (default 0.5)")
    vi.add_argument("--vad-neg-threshold", type=float, default=0.35,
                    help="probability below which it is silence again (default 0.35)")
    vi.add_argument("--vad-min-speech", dest="vad_min_speech_s", type=float, default=0.15,
                    help="seconds of speech before a start is reported (default 0.15)")
    vi.add_argument("--vad-min-silence", dest="vad_min_silence_s", type=float, default=0.35,
                    help="seconds of silence that end the user's utterance (default 0.35)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def parse_settings(argv: list[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    if args.max_sessions < 1:
        raise SystemExit("--max-session must be at least 1")
    for origin in args.cors_origins:
        parts = urlsplit(origin)
        if origin != "*" and not (parts.scheme in ("http", "https") and parts.netloc
                                  and parts.path in ("", "/") and not parts.query):
            raise SystemExit(f"--cors-origin {origin!r}: give '*' or scheme://host[:port]")
    if args.max_session_misses < 1:
        raise SystemExit("--max-session-misses must be at least 1")
    if not args.body_read_timeout_s > 0:
        raise SystemExit("--body-read-timeout must be positive")
    if args.setup_timeout_s <= 0:
        raise SystemExit("--setup-timeout must be positive")
    if args.tts_sample_rate_hz and not 8000 <= args.tts_sample_rate_hz <= 192000:
        raise SystemExit("--tts-sample-rate must be between 8000 and 192000")
    if args.tts_server and urlsplit(args.tts_server).scheme not in ("http", "https"):
        raise SystemExit("--tts-server must be an http:// or https:// URL")
    if args.max_queued_utterances < 1 or args.max_queued_speech_s <= 0:
        raise SystemExit("--max-queued-utterances and --max-queued-speech must be positive")
    if not 0 < args.vad_neg_threshold <= args.vad_threshold < 1:
        raise SystemExit("--vad-threshold and --vad-neg-threshold: 0 < neg <= threshold < 1")
    if min(args.vad_min_speech_s, args.vad_min_silence_s, args.barge_in_min_s) < 0:
        raise SystemExit("--vad-min-speech, --vad-min-silence and --barge-in-min must be >= 0")
    if args.instance_id is not None and not 0 <= args.instance_id <= MAX_INSTANCE_ID:
        raise SystemExit(f"--instance-id must be between 0 and {MAX_INSTANCE_ID}")
    if args.peer_url:
        if args.instance_id is None:
            raise SystemExit("--peer-url needs --instance-id")
        try:
            example = args.peer_url.format(instance=0)
        except (KeyError, IndexError, ValueError):
            raise SystemExit("--peer-url: a URL with {instance} and no other {field}") from None
        if "{instance}" not in args.peer_url or urlsplit(example).scheme not in ("http",
                                                                                 "https"):
            raise SystemExit("--peer-url must be an http:// URL holding {instance}")
    if args.drain_timeout_s < 0:
        raise SystemExit("--drain-timeout must be >= 0")
    if args.asr_url and urlsplit(args.asr_url).scheme not in ("http", "https"):
        raise SystemExit("--asr-url must be an http:// or https:// URL")
    transports = parse_transports(args.transports)
    push_urls = tuple(args.push_urls) or tuple(
        url for url in os.environ.get("LIVEHUMAN_PUSH_URL", "").split() if url)
    check_push_urls(transports, push_urls)
    if args.max_whep_viewers < 1:
        raise SystemExit("--max-whep-viewers must be at least 1")
    data_dir = args.data_dir.resolve()
    if args.web_dir is not None and not args.web_dir.is_dir():
        raise SystemExit(f"--web-dir {args.web_dir}: not a directory")
    return Settings(
        host=args.host,
        port=args.port,
        triton_url=args.triton_url,
        model_repository=args.model_repository.resolve(),
        data_dir=data_dir,
        avatar_dir=(args.avatar_dir or data_dir / "avatars").resolve(),
        avatar_id=args.avatar_id,
        ref_file=args.ref_file,
        ref_text=args.ref_text,
        customvideo_config=args.customvideo_config,
        multiavatar_config=args.multiavatar_config,
        max_sessions=args.max_sessions,
        body_read_timeout_s=args.body_read_timeout_s,
        setup_timeout_s=args.setup_timeout_s,
        max_queued_utterances=args.max_queued_utterances,
        max_queued_speech_s=args.max_queued_speech_s,
        stun=tuple(args.stun),
        turn=tuple(args.turn),
        turn_username=args.turn_username,
        turn_password=args.turn_password,
        ice_hosts=tuple(args.ice_hosts),
        shared_idle=args.shared_idle,
        lipsync_model=args.lipsync_model,
        tts_model=args.tts_model,
        tts=args.tts,
        piper_voice=args.piper_voice,
        tts_server=args.tts_server,
        tts_sample_rate_hz=args.tts_sample_rate_hz,
        tts_model_name=args.tts_model_name,
        tts_voice=args.tts_voice,
        tts_api_key=args.tts_api_key,
        tts_ref_dir=args.tts_ref_dir,
        knowledge_dir=(args.knowledge_dir or data_dir / "knowledge").resolve(),
        llm_base_url=args.llm_base_url,
        llm_api_key=os.environ.get("OPENAI_API_KEY", ""),
        llm_model=args.llm_model,
        llm_timeout_s=args.llm_timeout,
        llmid=args.llmid,
        log_level=args.log_level,
        api_token=args.api_token,
        cors_origins=tuple(args.cors_origins),
        protect_metrics=args.protect_metrics,
        max_session_misses=args.max_session_misses,
        instance_id=args.instance_id,
        peer_url=args.peer_url,
        drain_timeout_s=args.drain_timeout_s,
        web_dir=args.web_dir.resolve() if args.web_dir is not None else None,
        voice_input=args.voice_input,
        asr_url=args.asr_url,
        asr_model_name=args.asr_model_name,
        asr_api_key=args.asr_api_key,
        asr_language=args.asr_language,
        voice_mode=args.voice_mode,
        barge_in=args.barge_in,
        barge_in_min_s=args.barge_in_min_s,
        vad_threshold=args.vad_threshold,
        vad_neg_threshold=args.vad_neg_threshold,
        vad_min_speech_s=args.vad_min_speech_s,
        vad_min_silence_s=args.vad_min_silence_s,
        transports=transports,
        push_urls=push_urls,
        max_whep_viewers=args.max_whep_viewers,
    )


def parse_transports(values: list[str] | None) -> tuple[str, ...]:
    """--transport values (each may be a comma list) in TRANSPORTS, without repeats; LiveTalking's
    other transports are refused with what to use instead."""
    if not values:
        return DEFAULT_TRANSPORTS
    transports: list[str] = []
    for name in (part.strip().lower() for value in values for part in value.split(",")):
        if name in UNSUPPORTED_TRANSPORTS:
            raise SystemExit(f"--transport {name} is not supported: {UNSUPPORTED_TRANSPORTS[name]}")
        if name not in TRANSPORTS:
            raise SystemExit(f"--transport {name!r}: give {', '.join(TRANSPORTS)} (or a comma list)")
        if name not in transports:
            transports.append(name)
    return tuple(transports)


def check_push_urls(transports: tuple[str, ...], push_urls: tuple[str, ...]) -> None:
    """rtmp needs at least one rtmp:// or rtmps:// URL with a host and a path (app/stream);
    a push URL without rtmp is a mistake worth stopping for."""
    if "rtmp" in transports and not push_urls:
        raise SystemExit("--transport rtmp needs --push-url rtmp://host/app/stream (or "
                         "LIVEHUMAN_PUSH_URL)")
    if push_urls and "rtmp" not in transports:
        raise SystemExit("--push-url is only used with --transport rtmp (e.g. --transport "
                         "webrtc,rtmp)")
    for url in push_urls:
        parts = urlsplit(url)
        if (parts.scheme not in RTMP_SCHEMES or not parts.hostname
                or len([part for part in parts.path.split("/") if part]) < 2):
            raise SystemExit(f"--push-url {redact_stream_key(url)!r}: give "
                             "rtmp://host[:port]/app/stream (or rtmps://)")


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
