"""The web page in a real headless Chromium: connect, echo, decoded video, SSE events."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS
from server_fixtures import livehuman  # noqa: F401  (fixture)
from skimage import data

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

FRAMES_DECODED_JS = """async () => {
  if (!state.pc) return 0;
  const stats = await state.pc.getStats();
  let n = 0;
  stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') n = s.framesDecoded || 0; });
  return n;
}"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make test installs it)")
async def test_page_connects_echoes_and_decodes_video(livehuman):  # noqa: F811
    from playwright.async_api import async_playwright

    base_url, services = livehuman
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(base_url + "/")
            await page.click("#connect")
            await page.wait_for_function("document.getElementById('video').videoWidth > 0",
                                         timeout=20000)
            first = await page.evaluate(FRAMES_DECODED_JS)
            await asyncio.sleep(1.0)
            second = await page.evaluate(FRAMES_DECODED_JS)
            assert second > first > 0, (first, second)
            assert await page.evaluate("document.getElementById('video').videoWidth") == 512

            await page.fill("#text", "Hello from the browser test.")
            await page.click("#echo")
            await page.wait_for_function(
                "[...document.querySelectorAll('#log li')].some(li => li.textContent.includes('start: Hello from the browser'))",
                timeout=15000)
            await asyncio.sleep(0.6)
            await page.screenshot(path=str(ARTIFACTS / "web_client.png"))
            await page.wait_for_function(
                "[...document.querySelectorAll('#log li')].some(li => li.textContent.includes('end: Hello from the browser'))",
                timeout=15000)

            # "Speak from a file as a stream": the page decodes a clip and streams it over
            # /audio_stream at real time; the server plays it to its end.
            clip = ARTIFACTS / "stream.wav"
            write_buzz_wav(clip, seconds=1.0)
            await page.set_input_files("#stream-file", str(clip))
            await page.click("#stream-play")
            await page.wait_for_function(
                "[...document.querySelectorAll('#log li')].some(li => li.textContent.includes('audio_stream: playback_finished at'))",
                timeout=20000)
            streamed = [e for e in services.registry.get(
                await page.evaluate("state.sessionid")).events.history
                if e["event"] == "end" and e.get("kind") == "stream"]
            assert streamed and abs(streamed[-1]["played_s"] - 1.0) <= 0.04 + 1e-6, streamed
            await page.click("#disconnect")

            # The avatar builder from the page: upload a photo, the job runs, the id is offered.
            photo = ARTIFACTS / "upload.png"
            av.VideoFrame.from_ndarray(data.astronaut(), format="rgb24").to_image().save(photo)
            avatar_id = f"web{int(time.time() * 1000) % 10**9}"
            await page.click("text=New avatar from a photo or video")
            await page.fill("#new-avatar-id", avatar_id)
            await page.set_input_files("#new-avatar-file", str(photo))
            await page.click("#new-avatar-build")
            await page.wait_for_function(
                f"[...document.querySelectorAll('#log li')].some(li => li.textContent.includes(\"avatar '{avatar_id}' ready\"))",
                timeout=60000)
            try:
                assert services.avatars.load(avatar_id).frames.shape[1:] == (512, 512, 3)
            finally:
                shutil.rmtree(services.avatars.directory / avatar_id)
            assert not errors, errors
        finally:
            await browser.close()


def write_buzz_wav(path, seconds: float, rate: int = 22050) -> None:
    """A vowel-like buzz with a syllable envelope, as 16-bit WAV (written with PyAV)."""
    t = np.arange(int(rate * seconds)) / rate
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None)
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 700), 1))
    pcm = (0.4 * envelope * voice / 1.9 * 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


OFFER_WITH_CODEC_JS = """async (codec) => {
  const pc = new RTCPeerConnection();
  const video = pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  video.setCodecPreferences(RTCRtpReceiver.getCapabilities('video').codecs
    .filter((c) => c.mimeType.toLowerCase() === codec.toLowerCase()));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === 'complete') return done();
    pc.addEventListener('icegatheringstatechange',
      () => pc.iceGatheringState === 'complete' && done());
  });
  const answer = await (await fetch('/offer', {method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({type: 'offer', sdp: pc.localDescription.sdp})})).json();
  await pc.setRemoteDescription(answer);
  window.testPc = pc;
  return answer.sessionid;
}"""

VIDEO_STATS_JS = """async () => {
  const stats = await window.testPc.getStats();
  let video = null, codecs = {};
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') video = s;
    if (s.type === 'codec') codecs[s.id] = s.mimeType;
  });
  return video && {decoded: video.framesDecoded || 0, keyframes: video.keyFramesDecoded || 0,
                   pli: video.pliCount || 0, codec: codecs[video.codecId] || null};
}"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make test installs it)")
@pytest.mark.parametrize("codec", ["video/H264", "video/VP8"])
async def test_chromium_decodes_our_encoders_across_idle_speech_switches(livehuman, codec):  # noqa: F811
    """Chromium offering one codec: our encoder's frames (shared idle stream, the session's own
    while it speaks, and back) decode without a single picture loss report."""
    from playwright.async_api import async_playwright

    base_url, services = livehuman
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(base_url + "/")
            sessionid = await page.evaluate(OFFER_WITH_CODEC_JS, codec)
            session = services.registry.get(sessionid)
            assert session.video.mime_type.lower() == codec.lower()
            await page.wait_for_function(f"({VIDEO_STATS_JS})().then((s) => s && s.decoded > 25)",
                                         timeout=20000)
            session.say("One sentence, and the picture switches encoders twice.")
            deadline = time.monotonic() + 20
            while (session.speaking or session.video.frames_shared == 0) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            shared = session.video.frames_shared
            while session.video.frames_shared < shared + 25 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            stats = await page.evaluate(VIDEO_STATS_JS)
            assert stats["codec"].lower() == codec.lower()
            track = session.video
            assert track.switches >= 3 and track.frames_own > 25, (track.switches, track.frames_own)
            assert stats["pli"] == 0, stats
            assert stats["decoded"] >= session.frames_sent - 10, (stats, session.frames_sent)
            await page.evaluate("window.testPc.close()")  # else it lingers until ICE gives up
            async with asyncio.timeout(10):
                await session.wait_closed()
        finally:
            await browser.close()
