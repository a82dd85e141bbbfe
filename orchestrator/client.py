"""A Python WebRTC client for livehuman (aiortc): used by the tests and benchmarks, and an example.

    python -m orchestrator.client http://127.0.0.1:8010 --say "Hello there." --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import queue
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

MIC_SAMPLE_RATE_HZ = 48000  # WebRTC's Opus clock rate (not the server's 16 kHz pipeline)
MIC_PTIME_S = 0.020
MIC_SAMPLES_PER_FRAME = int(MIC_SAMPLE_RATE_HZ * MIC_PTIME_S)  # 960
MIC_TIME_BASE = fractions.Fraction(1, MIC_SAMPLE_RATE_HZ)


class Microphone(MediaStreamTrack):
    """A microphone track that plays arrays on demand and silence otherwise: 20 ms frames at
    48 kHz mono, paced from its start time and sample count (never accumulated sleeps).

    `play(audio, rate_hz)` queues speech (resampled to 48 kHz once); `speech_end` is when the
    last queued sample leaves, `idle` whether nothing is queued.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = np.zeros(0, np.float32)
        self._start: float | None = None
        self._samples = 0
        self.speech_started_at: float | None = None  # monotonic time of the first played sample
        self.speech_ended_at: float | None = None  # ... of the sample after the last one

    def play(self, audio: np.ndarray, rate_hz: int) -> float:
        """Queue `audio`; returns its duration in seconds."""
        import scipy.signal

        audio = np.asarray(audio, np.float32)
        if rate_hz != MIC_SAMPLE_RATE_HZ:
            g = np.gcd(rate_hz, MIC_SAMPLE_RATE_HZ)
            audio = scipy.signal.resample_poly(audio, MIC_SAMPLE_RATE_HZ // g, rate_hz // g)
        self._queue = np.concatenate([self._queue, audio.astype(np.float32)])
        self.speech_started_at = self.speech_ended_at = None
        return audio.size / MIC_SAMPLE_RATE_HZ

    @property
    def idle(self) -> bool:
        return self._queue.size == 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._samples / MIC_SAMPLE_RATE_HZ - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = np.zeros(MIC_SAMPLES_PER_FRAME, np.float32)
        if self._queue.size:
            n = min(self._queue.size, MIC_SAMPLES_PER_FRAME)
            chunk[:n] = self._queue[:n]
            self._queue = self._queue[n:]
            now = time.monotonic()
            if self.speech_started_at is None:
                self.speech_started_at = now
            if not self._queue.size:
                self.speech_ended_at = now + n / MIC_SAMPLE_RATE_HZ
        pcm = (np.clip(chunk, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = MIC_SAMPLE_RATE_HZ
        frame.pts = self._samples
        frame.time_base = MIC_TIME_BASE
        self._samples += MIC_SAMPLES_PER_FRAME
        return frame


class EchoingMicrophone(Microphone):
    """A microphone that also hears the client's speaker: the avatar's audio as this client
    received it (`Received.audio`, through `hear`) comes back `delay_s` after its arrival,
    `gain_db` quieter, mixed with what `play` queues (a kiosk, a laptop without headphones, a
    browser whose echo cancellation is off)."""

    def __init__(self, gain_db: float = -10.0, delay_s: float = 0.150) -> None:
        super().__init__()
        self.gain = 10 ** (gain_db / 20)
        self.delay_s = delay_s
        self._received: Received | None = None
        self._taken = 0  # chunks of the received audio already queued as echo
        self._echo = np.zeros(0, np.float32)
        self.echoed_s = 0.0  # seconds of sound (not digital silence) sent back as echo

    def hear(self, received: Received) -> None:
        """Echo the downlink audio `received` gets (an AvatarClient's `received`, decoded)."""
        self._received = received

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        r = self._received
        if r is None:
            return frame
        due = time.monotonic() - self.delay_s
        chunks = [self._echo]
        while (self._taken < len(r.audio) and self._taken < len(r.audio_times)
               and r.audio_times[self._taken] <= due):
            chunks.append(r.audio[self._taken].astype(np.float32))
            self._taken += 1
        echo = np.concatenate(chunks)
        # arrivals come in bursts: keep at most two frames in hand (the delay stays bounded)
        echo = echo[max(0, echo.size - 2 * MIC_SAMPLES_PER_FRAME):]
        n = min(echo.size, MIC_SAMPLES_PER_FRAME)
        self._echo = echo[n:]
        if n == 0:
            return frame
        pcm = frame.to_ndarray().astype(np.float32).ravel() / 32767.0
        pcm[:n] += self.gain * echo[:n]
        if echo[:n].any():
            self.echoed_s += n / MIC_SAMPLE_RATE_HZ
        mixed = av.AudioFrame.from_ndarray(
            (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1), format="s16",
            layout="mono")
        mixed.sample_rate, mixed.pts, mixed.time_base = frame.sample_rate, frame.pts, frame.time_base
        return mixed


@dataclass
class Received:
    video_times: list[float] = field(default_factory=list)
    video_rtp: list[int] = field(default_factory=list)  # RTP timestamp (90 kHz) of each frame
    video: list[np.ndarray] = field(default_factory=list)  # RGB frames (or the kept region)
    audio_times: list[float] = field(default_factory=list)
    audio_rms: list[float] = field(default_factory=list)  # per received audio frame
    audio: list[np.ndarray] = field(default_factory=list)  # mono float32 at 48 kHz


class EncodedFrameCounter:
    """Stands in for an aiortc receiver's decoder queue: notes each complete encoded frame its
    jitter buffer hands over (arrival time, RTP timestamp) instead of decoding it.

    aiortc 1.x reassembles RTP packets into whole frames in `RTCRtpReceiver._handle_rtp_packet`
    and `put`s `(codec, JitterFrame)` on this queue for its decoder thread; `None` tells that
    thread (blocked in `get`) to end, which ends the remote track.
    """

    def __init__(self, times: list[float], rtp_timestamps: list[int]) -> None:
        self._times = times
        self._rtp_timestamps = rtp_timestamps
        self._end: queue.Queue = queue.Queue()

    def put(self, item) -> None:
        if item is None:
            self._end.put(None)
            return
        _codec, frame = item
        self._times.append(time.monotonic())
        self._rtp_timestamps.append(frame.timestamp)

    def get(self):
        return self._end.get()


DECODER_QUEUE_ATTRIBUTE = "_RTCRtpReceiver__decoder_queue"  # aiortc 1.x, rtcrtpreceiver.py


class AvatarClient:
    """Connects to a livehuman server, keeps every frame with its arrival time.

    `rtc_configuration`: its ICE servers and policy (default: none, host candidates only).
    `decode=False` (a light client, for many sessions per process) decodes nothing: it notes
    each video and audio frame when the jitter buffer has it complete (`video_times`,
    `video_rtp`, `audio_times`); `video`, `audio` and `audio_rms` stay empty.
    """

    def __init__(self, base_url: str, keep_video: bool = True,
                 video_region: tuple[slice, slice] | None = None,
                 token: str | None = None, microphone: Microphone | None = None,
                 video_codecs: tuple[str, ...] = (), decode: bool = True,
                 rtc_configuration: RTCConfiguration | None = None) -> None:
        self.base_url = base_url
        self.decode = decode
        # Sent to the server as the user's voice (a sendrecv audio offer) when given.
        self.microphone = microphone
        self.keep_video = keep_video
        # Keep only this (rows, cols) part of each frame: long runs without gigabytes of video.
        self.video_region = video_region
        # Offer only these video codecs ("video/H264", "video/VP8"; setCodecPreferences); all
        # of aiortc's when empty.
        self.video_codecs = video_codecs
        # ICE: no STUN/TURN server unless given (e.g. a TURN server and
        # iceTransportPolicy=RELAY, every packet through the relay: docs/DEPLOY.md).
        self.pc = RTCPeerConnection(rtc_configuration or RTCConfiguration(iceServers=[]))
        self.received = Received()
        self.sessionid: int | None = None
        self._tasks: list[asyncio.Task] = []
        # The server's access token (--api-token), sent on every request; requests are JSON
        # with Content-Type: application/json (the server refuses other types cross-site).
        self.http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"} if token else None)

    async def connect(self, **offer_fields) -> dict:
        video = self.pc.addTransceiver("video", direction="recvonly")
        if self.video_codecs:
            wanted = {c.lower() for c in self.video_codecs}
            video.setCodecPreferences([
                c for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType.lower() in wanted])
        if self.microphone is not None:
            self.pc.addTransceiver(self.microphone, direction="sendrecv")
        else:
            self.pc.addTransceiver("audio", direction="recvonly")

        if self.decode:
            @self.pc.on("track")
            def on_track(track) -> None:
                self._tasks.append(asyncio.create_task(self._consume(track)))
        else:
            self._count_encoded_frames()

        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"type": "offer", "sdp": self.pc.localDescription.sdp, **offer_fields}
        async with self.http.post(f"{self.base_url}/offer", json=body) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"/offer failed: {resp.status} {answer}")
        self.sessionid = answer["sessionid"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return answer

    def _count_encoded_frames(self) -> None:
        """Replace each receiver's decoder queue before its decoder thread starts (in
        setRemoteDescription)."""
        r = self.received
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if not hasattr(receiver, DECODER_QUEUE_ATTRIBUTE):
                raise RuntimeError("this aiortc version has no receiver decoder queue: "
                                   "use decode=True")
            counter = (EncodedFrameCounter(r.video_times, r.video_rtp)
                       if transceiver.kind == "video"
                       else EncodedFrameCounter(r.audio_times, []))
            setattr(receiver, DECODER_QUEUE_ATTRIBUTE, counter)

    async def end_turn(self) -> bool:
        """Push-to-talk released: the server answers what the microphone said without waiting
        for the end-of-turn silence. True when the user was speaking; RuntimeError otherwise
        than 200 (e.g. 409: no microphone track)."""
        status, answer = await self.post("/end_turn")
        if status != 200:
            raise RuntimeError(f"/end_turn: {status} {answer.get('msg')}")
        return bool(answer["data"])

    async def post(self, path: str, **body) -> tuple[int, dict]:
        body.setdefault("sessionid", self.sessionid)
        async with self.http.post(f"{self.base_url}{path}", json=body) as resp:
            return resp.status, await resp.json()

    async def _consume(self, track) -> None:
        r = self.received
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if track.kind == "video":
                r.video_times.append(now)
                r.video_rtp.append(frame.pts)
                if self.keep_video:
                    image = frame.to_ndarray(format="rgb24")
                    r.video.append(image[self.video_region] if self.video_region else image)
            else:
                pcm = frame.to_ndarray().astype(np.float32) / 32768.0
                channels = len(frame.layout.channels)
                mono = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm.ravel()
                r.audio_times.append(now)
                r.audio_rms.append(float(np.sqrt(np.mean(mono**2))))
                r.audio.append(mono)

    async def wait_for_video(self, frames: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received.video_times) < frames:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.received.video_times)} video frames")
            await asyncio.sleep(0.02)

    async def wait_for_speech(self, since: float, threshold: float = 0.01,
                              timeout: float = 10.0) -> float:
        """Arrival time of the first audio frame after `since` with speech energy."""
        deadline = time.monotonic() + timeout
        r = self.received
        checked = 0
        while time.monotonic() < deadline:
            for i in range(checked, len(r.audio_times)):
                if r.audio_times[i] >= since and r.audio_rms[i] > threshold:
                    return r.audio_times[i]
            checked = len(r.audio_times)
            await asyncio.sleep(0.005)
        raise TimeoutError("no speech audio arrived")

    async def close(self) -> None:
        if self.microphone is not None:
            self.microphone.stop()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.close()


class WhepClient(AvatarClient):
    """A WHEP client (--transport whep; docs/OUTPUTS.md): recvonly audio and video, the offer
    POSTed as application/sdp, the answer's `Location` DELETEd to leave. With `sessionid` (0:
    the server session) it views that session; without, the server opens a session of its own
    for it (its id from the `X-Session-ID` answer header)."""

    def __init__(self, base_url: str, sessionid: int | None = None, keep_video: bool = True,
                 token: str | None = None) -> None:
        super().__init__(base_url, keep_video=keep_video, token=token)
        self.sessionid = sessionid
        self.location: str | None = None  # the WHEP resource, from the 201's Location

    async def connect(self, **query) -> dict:
        """`query`: /offer's optional fields for a session of its own (avatar, refaudio...)."""
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def on_track(track) -> None:
            self._tasks.append(asyncio.create_task(self._consume(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        if self.sessionid is not None:
            query["sessionid"] = str(self.sessionid)
        async with self.http.post(f"{self.base_url}/whep", params=query,
                                  data=self.pc.localDescription.sdp,
                                  headers={"Content-Type": "application/sdp"}) as resp:
            if resp.status != 201:
                raise RuntimeError(f"/whep failed: {resp.status} {await resp.text()}")
            answer = await resp.text()
            self.location = resp.headers["Location"]
            self.sessionid = int(resp.headers["X-Session-ID"])
            headers = dict(resp.headers)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        return {"sdp": answer, "headers": headers}

    async def delete(self) -> int:
        """Leave: DELETE the WHEP resource; the status."""
        assert self.location is not None, "not connected"
        async with self.http.delete(f"{self.base_url}{self.location}") as resp:
            return resp.status


def fps(times: list[float], start: float, stop: float) -> float:
    n = sum(1 for t in times if start <= t < stop)
    return n / (stop - start)


def mouth_window(avatar) -> tuple[slice, slice]:
    """Frame rows/cols around an avatar's mouth, open jaw included (idle motion is sub-pixel)."""
    x0, y0, x1, y1 = avatar.boxes.mean(axis=0)
    cx, cy, w, _ = avatar.mouth.mean(axis=0)
    mx, my, mw = x0 + cx * (x1 - x0), y0 + cy * (y1 - y0), w * (x1 - x0)
    return slice(int(my - 0.15 * mw), int(my + 0.6 * mw)), slice(int(mx - 0.5 * mw), int(mx + 0.5 * mw))


def mouth_motion(frames: list[np.ndarray], window: tuple[slice, slice],
                 reference: np.ndarray) -> np.ndarray:
    """Mean absolute change of the mouth window against a reference (closed-mouth) picture."""
    rows, cols = window
    return np.array([np.abs(f[rows, cols].astype(np.float32) - reference).mean() for f in frames])


def mean_window(frames: list[np.ndarray], window: tuple[slice, slice]) -> np.ndarray:
    rows, cols = window
    return np.mean([f[rows, cols].astype(np.float32) for f in frames], axis=0)


def loudness_per_video_frame(received: Received) -> np.ndarray:
    """Audio level in dB for each received video frame, matched by media time, not arrival.

    Both tracks run continuously from the session's first tick (two 20 ms audio frames per 40 ms
    video frame), so frame indices are media time; arrival times would add the peer's jitter
    buffering to any comparison.
    """
    db = 20 * np.log10(np.array(received.audio_rms) + 1e-3)
    n = min(len(received.video_times), len(db) // 2)
    return (db[0 : 2 * n : 2] + db[1 : 2 * n : 2]) / 2


def smooth(x: np.ndarray, frames: int = 3) -> np.ndarray:
    return np.convolve(x, np.ones(frames) / frames, mode="valid")


def lagged_correlations(video: np.ndarray, audio: np.ndarray, start: int, stop: int,
                        lags: range) -> dict[int, float]:
    """Correlation of video[start:stop] with audio shifted by each lag (frames), both smoothed.

    A positive best lag means the audio of a moment arrives that many frames after its video.
    """
    window = smooth(video[start:stop])
    return {lag: float(np.corrcoef(window, smooth(audio[start + lag : stop + lag]))[0, 1])
            for lag in lags if start + lag >= 0 and stop + lag <= len(audio)}


async def _main(base_url: str, say: str | None, seconds: float, token: str | None) -> None:
    client = AvatarClient(base_url, keep_video=False, token=token)
    try:
        await client.connect()
        await client.wait_for_video(1)
        print(json.dumps({"sessionid": client.sessionid}), flush=True)
        started = time.monotonic()
        if say:
            status, answer = await client.post("/human", type="echo", text=say)
            print(json.dumps({"human": status, "answer": answer}, ensure_ascii=False), flush=True)
        await asyncio.sleep(seconds)
        r = client.received
        print(json.dumps({"video_fps": fps(r.video_times, started, time.monotonic()),
                          "audio_frames": len(r.audio_times),
                          "max_audio_rms": max(r.audio_rms, default=0.0)}), flush=True)
    finally:
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m orchestrator.client",
                                     description="Connect to a livehuman server and report what arrives.")
    parser.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8010")
    parser.add_argument("--say", help="text to echo once connected")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to stay (default 5)")
    parser.add_argument("--token", default=os.environ.get("LIVEHUMAN_API_TOKEN") or None,
                        help="the server's access token (default: LIVEHUMAN_API_TOKEN)")
    args = parser.parse_args()
    try:
        asyncio.run(_main(args.url, args.say, args.seconds, args.token))
    except KeyboardInterrupt:
        sys.exit(130)
    except (RuntimeError, OSError, TimeoutError) as exc:  # refused offer, no server, no video
        sys.exit(f"error: {exc}")
