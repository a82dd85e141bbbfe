"""Azure AI Speech (`--tts azuretts`) through its REST API: `POST /cognitiveservices/v1` with SSML.

The endpoint is `https://REGION.tts.speech.microsoft.com` (`--azure-region`, or
AZURE_TTS_REGION as LiveTalking reads it; `--tts-server` replaces the whole base URL), the key
`Ocp-Apim-Subscription-Key` (`--tts-api-key`, or AZURE_SPEECH_KEY). The answer is asked as
`riff-24khz-16bit-mono-pcm` (X-Microsoft-OutputFormat): a WAV header, whose rate is believed,
then 16-bit PCM streamed as it is synthesised. The voice is a Microsoft neural voice
(`--ref-file`, `refaudio`, `tts.ref_file`; default `zh-CN-XiaoxiaoMultilingualNeural`, as
LiveTalking's); `tts` keys `rate`, `pitch`, `volume` (SSML prosody values: "+10%", "-2st",
"loud") and `style` (mstts:express-as, e.g. "cheerful").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from .base import UnknownVoice, Voice
from .cloning import HTTPCloningEngine, passed_options
from .edge import EDGE_VOICE_NAME
from .http_audio import HTTPVoiceServer
from .reference_voices import VoiceStore

AZURE_DEFAULT_VOICE = "zh-CN-XiaoxiaoMultilingualNeural"  # LiveTalking's azuretts default
AZURE_SAMPLE_RATE_HZ = 24000  # what riff-24khz-16bit-mono-pcm says in its header
AZURE_OUTPUT_FORMAT = "riff-24khz-16bit-mono-pcm"
AZURE_ROUTE = "/cognitiveservices/v1"
USER_AGENT = "livehuman"
OPTIONS = {"rate": str, "pitch": str, "volume": str, "style": str}
SSML_NS = "http://www.w3.org/2001/10/synthesis"
MSTTS_NS = "https://www.w3.org/2001/mstts"


def azure_base_url(region: str) -> str:
    """The regional endpoint's base URL (the route is AZURE_ROUTE)."""
    return f"https://{region}.tts.speech.microsoft.com"


def azure_headers(key: str) -> dict[str, str]:
    """The headers every request carries: the subscription key and the output format."""
    return {"Ocp-Apim-Subscription-Key": key, "X-Microsoft-OutputFormat": AZURE_OUTPUT_FORMAT,
            "User-Agent": USER_AGENT}


def ssml(text: str, voice: str, options: dict) -> str:
    """The SSML document for `text` in `voice`: its locale from the voice's name, prosody and
    express-as from `options` (values quoted as XML attributes, the text escaped)."""
    locale = "-".join(voice.split("-")[:2])
    body = escape(text)
    prosody = {k: options[k] for k in ("rate", "pitch", "volume") if k in options}
    if prosody:
        attributes = " ".join(f"{k}={quoteattr(v)}" for k, v in prosody.items())
        body = f"<prosody {attributes}>{body}</prosody>"
    if "style" in options:
        body = f"<mstts:express-as style={quoteattr(options['style'])}>{body}</mstts:express-as>"
    return (f"<speak version='1.0' xml:lang={quoteattr(locale)} xmlns='{SSML_NS}' "
            f"xmlns:mstts='{MSTTS_NS}'><voice name={quoteattr(voice)}>{body}</voice></speak>")


class AzureTTSEngine(HTTPCloningEngine):
    """Azure Speech's REST text-to-speech; a Microsoft voice name is the voice."""

    name = "azuretts"
    understood_options = frozenset(OPTIONS)
    needs_voice = False

    def __init__(self, server: HTTPVoiceServer, voices: VoiceStore, default_voice: str = "") -> None:
        super().__init__(server, voices, AZURE_SAMPLE_RATE_HZ,
                         default_voice or AZURE_DEFAULT_VOICE)

    async def check_voice(self, voice: Voice) -> None:
        if not EDGE_VOICE_NAME.fullmatch(self._name(voice)):
            raise UnknownVoice(self._name(voice))

    def speaks(self, text: str, voice: Voice) -> bool:
        return bool(EDGE_VOICE_NAME.fullmatch(self._name(voice)))

    async def _audio(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        document = ssml(text, self._name(voice), passed_options(voice.options, OPTIONS))
        async for chunk in self._pcm("POST", AZURE_ROUTE, wav=True, data=document.encode(),
                                     headers={"Content-Type": "application/ssml+xml"}):
            yield chunk
