"""The web page in a real headless Chromium: connect, echo, decoded video, SSE events."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import av
import pytest
from server_fixtures import livehuman  # noqa: F401  (fixture)
from skimage import data

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    # WebRTC over loopback: let Chromium use 127.0.0.1 candidates and show real local IPs.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # This machine's network is closed: keep Chromium from calling home.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic",
]

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
