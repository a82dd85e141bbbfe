"""LivehumanVideoService: a livehuman avatar that lip-syncs a pipecat agent's TTS.

Placed after the TTS service, in the shape of pipecat's own video services (Simli, HeyGen,
Tavus): it opens a livehuman session, streams each TTS utterance (`TTSStartedFrame`,
`TTSAudioRawFrame`s, `TTSStoppedFrame`) to the server's `GET /audio_stream` WebSocket as one
segment, turns pipecat's `InterruptionFrame` into `clear`, and (mode "relay") pushes the
avatar's pictures (`OutputImageRawFrame`, RGB) and its voice (`OutputAudioRawFrame`, 48 kHz
mono s16) downstream as they arrive over WebRTC, so the transport after it shows and plays the
avatar. The TTS audio itself is not passed on: the avatar's audio is the same speech, in sync
with its mouth. Mode "direct": a browser watches the livehuman session itself; this service
only streams the audio to the session it is given.

The protocol: livehuman's docs/INTEGRATIONS.md. WebRTC: aiortc (recvonly video and audio, the
offer/answer of livehuman's `POST /offer`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings

MODES = ("relay", "direct")
PCM_FORMAT = "pcm_s16le"
# The avatar's audio goes downstream while one of our segments plays (the server's
# playback_started .. playback_finished) and this long after, for what WebRTC still carries.
PLAYBACK_TAIL_S = 0.3


class LivehumanVideoService(AIService):
    """A livehuman avatar for a pipecat pipeline.

    Args:
        base_url: the livehuman server, e.g. "http://127.0.0.1:8010".
        api_token: its `--api-token`, if it has one.
        avatar: the avatar id of the new session (`POST /offer`'s `avatar`); the server's
            default when None.
        mode: "relay" (a session of its own, video and audio pushed downstream) or "direct"
            (audio only, to `sessionid`: a session a browser opened and watches).
        sessionid: the session to speak in, mode "direct" only.
        offer_fields: more `POST /offer` fields (e.g. `{"voice_mode": "off"}`).
        ice_servers: STUN/TURN URLs for the WebRTC connection (none: same host or LAN).

    Raises ValueError for a bad mode; connection failures are pushed as pipecat errors.
    """

    def __init__(self, base_url: str, api_token: str | None = None, avatar: str | None = None,
                 *, mode: str = "relay", sessionid: int | None = None,
                 offer_fields: dict[str, Any] | None = None,
                 ice_servers: list[str] | None = None, **kwargs) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "direct" and sessionid is None:
            raise ValueError("mode 'direct' needs the sessionid of the browser's session")
        super().__init__(settings=ServiceSettings(model=None), **kwargs)
        self._base_url = base_url.rstrip("/")
        self._token = api_token
        self._avatar = avatar
        self._mode = mode
        self._offer_fields = dict(offer_fields or {})
        self._ice_servers = [RTCIceServer(url) for url in ice_servers or []]
        self.sessionid: int | None = sessionid
        self._http: aiohttp.ClientSession | None = None
        self._pc: RTCPeerConnection | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task] = []
        self._segment_open = False
        self._segments = 0
        self._playing = False  # one of our segments is playing (the server says)
        self._tail_until = 0.0  # loop time until which audio still goes downstream
        # playback messages of the server, in order (playback_started, playback_finished)
        self.playback: list[dict] = []

    # --- lifetime ---------------------------------------------------------------------------
    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        try:
            await self._connect()
        except Exception as exc:  # the server is down or refused: say so in the pipeline
            await self.push_error(error_msg=f"livehuman: cannot connect to {self._base_url}: "
                                            f"{exc}", exception=exc)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._disconnect()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._disconnect()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._disconnect()

    async def _connect(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        self._http = aiohttp.ClientSession(headers=headers)
        if self._mode == "relay":
            await self._open_session()
        self._ws = await self._http.ws_connect(f"{self._base_url}/audio_stream",
                                               params={"sessionid": str(self.sessionid)})
        self._tasks.append(self.create_task(self._read_messages()))

    async def _open_session(self) -> None:
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))
        self._pc.addTransceiver("video", direction="recvonly")
        self._pc.addTransceiver("audio", direction="recvonly")

        @self._pc.on("track")
        def on_track(track) -> None:
            consume = self._consume_video if track.kind == "video" else self._consume_audio
            self._tasks.append(self.create_task(consume(track)))

        await self._pc.setLocalDescription(await self._pc.createOffer())
        body = {"type": "offer", "sdp": self._pc.localDescription.sdp, **self._offer_fields}
        if self._avatar is not None:
            body["avatar"] = self._avatar
        async with self._http.post(f"{self._base_url}/offer", json=body) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"/offer: {resp.status} {answer.get('msg')}")
        self.sessionid = answer["sessionid"]
        await self._pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))

    async def _disconnect(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await self.cancel_task(task)
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()  # the server ends an open segment as 'end' would
        pc, self._pc = self._pc, None
        if pc is not None:
            await pc.close()  # the server closes the session with its peer
        http, self._http = self._http, None
        if http is not None:
            await http.close()
        self._segment_open = False

    # --- pipecat frames in ------------------------------------------------------------------
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            await self._send_audio(frame)
            return  # the avatar's own audio goes downstream instead, in sync with its mouth
        if isinstance(frame, TTSStoppedFrame):
            await self._end_segment()
        elif isinstance(frame, TTSStartedFrame):
            await self._end_segment()  # a TTSStarted without a TTSStopped before it
        elif isinstance(frame, InterruptionFrame):
            await self._send_json({"type": "clear"})
            self._segment_open = self._playing = False
            self._tail_until = 0.0  # nothing more of the cut speech goes downstream
        await self.push_frame(frame, direction)

    async def _send_audio(self, frame: TTSAudioRawFrame) -> None:
        if not self._segment_open:
            self._segments += 1
            await self._send_json({"type": "start", "sample_rate": frame.sample_rate,
                                   "channels": frame.num_channels, "format": PCM_FORMAT,
                                   "id": f"{id(self):x}-{self._segments}"})
            self._segment_open = True
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_bytes(frame.audio)

    async def _end_segment(self) -> None:
        if self._segment_open:
            await self._send_json({"type": "end"})
            self._segment_open = False

    async def _send_json(self, message: dict) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str(json.dumps(message))

    # --- the server and the avatar's media out -----------------------------------------------
    async def _read_messages(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            kind = data.get("type")
            if kind == "error":
                logger.warning(f"{self}: livehuman refused: {data.get('code')} {data.get('msg')}")
                continue
            self.playback.append(data)
            if kind == "playback_started":
                self._playing = True
            elif kind == "playback_finished":
                self._playing = False
                if not data.get("interrupted"):
                    self._tail_until = asyncio.get_running_loop().time() + PLAYBACK_TAIL_S

    async def _consume_video(self, track) -> None:
        while True:
            try:
                picture = await track.recv()
            except MediaStreamError:
                return
            image = picture.to_ndarray(format="rgb24")
            frame = OutputImageRawFrame(image=image.tobytes(),
                                        size=(image.shape[1], image.shape[0]), format="RGB")
            await self.push_frame(frame)

    async def _consume_audio(self, track) -> None:
        while True:
            try:
                sound = await track.recv()
            except MediaStreamError:
                return
            channels = len(sound.layout.channels)
            pcm = sound.to_ndarray().reshape(-1, channels)
            mono = pcm.mean(axis=1).astype(np.int16) if channels > 1 else pcm[:, 0]
            # Only the avatar's speech goes on (as pipecat's own video services do: the
            # session sends silence while idle), so the transport's idle is its own.
            if not (self._playing or asyncio.get_running_loop().time() < self._tail_until):
                continue
            await self.push_frame(OutputAudioRawFrame(audio=mono.astype("<i2").tobytes(),
                                                      sample_rate=sound.sample_rate,
                                                      num_channels=1))
