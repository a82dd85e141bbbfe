"""Tencent Cloud TTS (`--tts tencent`) through its streaming API, as LiveTalking calls it: `POST
https://tts.cloud.tencent.com/stream` (Action TextToStreamAudio).

The body is JSON: `Action`, `AppId`, `SecretId`, `ModelType` 1, `VoiceType` (the voice: a number,
`--ref-file`/`tts.ref_file`, default 101001 as LiveTalking's), `Codec` pcm, `SampleRate` 16000,
`Speed`, `Volume` (`tts.speed`, `tts.volume`), `SessionId`, `Text`, `Timestamp`, `Expired`; the
`Authorization` header is base64(HMAC-SHA1(secret key, "POST" + host + path + "?" + the body's
keys sorted, as k=v joined by &)), signed for Tencent's host even when `--tts-server` sends the
request elsewhere (a relay). The answer is raw 16-bit PCM at 16 kHz as it is synthesised, or a
JSON `{"Response": {"Error": {"Code", "Message"}}}`. Credentials are read as LiveTalking reads
them: TENCENT_APPID, TENCENT_SECRET_ID, TENCENT_SECRET_KEY.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator

import numpy as np

from .base import UnknownVoice, Voice
from .cloning import HTTPCloningEngine, passed_options
from .http_audio import HTTPVoiceServer
from .reference_voices import VoiceStore

TENCENT_BASE_URL = "https://tts.cloud.tencent.com"
TENCENT_HOST = "tts.cloud.tencent.com"  # what the signature names, wherever the request goes
TENCENT_PATH = "/stream"
TENCENT_ACTION = "TextToStreamAudio"
TENCENT_DEFAULT_VOICE = "101001"  # LiveTalking's default VoiceType
TENCENT_SAMPLE_RATE_HZ = 16000
SIGNATURE_VALID_S = 24 * 60 * 60  # Expired = Timestamp + this (LiveTalking's choice)
OPTIONS = {"speed": (int, float), "volume": (int, float)}


def tencent_signature(secret_key: str, params: dict, host: str = TENCENT_HOST,
                      path: str = TENCENT_PATH) -> str:
    """The Authorization header of a request whose JSON body is `params` (see the module)."""
    query = "&".join(f"{key}={params[key]}" for key in sorted(params))
    digest = hmac.new(secret_key.encode(), f"POST{host}{path}?{query}".encode(),
                      hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class TencentTTSEngine(HTTPCloningEngine):
    """Tencent Cloud's streaming TTS; the voice is its numeric VoiceType."""

    name = "tencent"
    understood_options = frozenset(OPTIONS)
    needs_voice = False

    def __init__(self, server: HTTPVoiceServer, voices: VoiceStore, app_id: str, secret_id: str,
                 secret_key: str, default_voice: str = "") -> None:
        super().__init__(server, voices, TENCENT_SAMPLE_RATE_HZ,
                         default_voice or TENCENT_DEFAULT_VOICE)
        self.app_id, self.secret_id, self._secret_key = app_id, secret_id, secret_key

    async def check_voice(self, voice: Voice) -> None:
        if not self._name(voice).isdigit():
            raise UnknownVoice(self._name(voice))

    def speaks(self, text: str, voice: Voice) -> bool:
        return self._name(voice).isdigit()

    def request(self, text: str, voice: Voice) -> tuple[dict, str]:
        """(the JSON body, its Authorization header)."""
        options = passed_options(voice.options, OPTIONS)
        now = int(time.time())
        params = {"Action": TENCENT_ACTION, "AppId": int(self.app_id), "SecretId": self.secret_id,
                  "ModelType": 1, "VoiceType": int(self._name(voice)), "Codec": "pcm",
                  "SampleRate": TENCENT_SAMPLE_RATE_HZ, "Speed": options.get("speed", 0),
                  "Volume": options.get("volume", 0), "SessionId": str(uuid.uuid1()),
                  "Text": text, "Timestamp": now, "Expired": now + SIGNATURE_VALID_S}
        return params, tencent_signature(self._secret_key, params)

    async def _audio(self, text: str, voice: Voice) -> AsyncIterator[np.ndarray]:
        params, signature = self.request(text, voice)
        async for chunk in self._pcm("POST", TENCENT_PATH, wav=False,
                                     data=json.dumps(params).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": signature}):
            yield chunk
