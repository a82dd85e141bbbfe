"""TURN for clients behind NAT (docs/DEPLOY.md, "NAT and TURN"): a real coturn on loopback with a
static user; an aiortc client and the web page in headless Chromium, both forced to relay
(iceTransportPolicy "relay": every packet through the TURN server), get the avatar's media; the
selected candidate pair is relay on the client's side and coturn granted the allocation and
counted the bytes. The server's own --turn gathers a relayed candidate from it too."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from chromium import CHROMIUM, CHROMIUM_ARGS
from server_fixtures import livehuman  # noqa: F401  (fixture)
from turn_server import PASSWORD, USERNAME, Coturn, requires_coturn

from orchestrator.client import AvatarClient
from orchestrator.media.ice import rtc_configuration
from orchestrator.settings import Settings

pytestmark = requires_coturn

RELAYED_BYTES_MIN = 20_000  # a second of the avatar's video and sound is more


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    server = Coturn(tmp_path_factory.mktemp("coturn"))
    server.start()
    yield server
    server.stop()


def relay_only(coturn: Coturn) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=coturn.url, username=USERNAME, credential=PASSWORD)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY)


def selected_pair_types(pc: RTCPeerConnection) -> set[tuple[str, str]]:
    """(local, remote) candidate types of the pairs aiortc's ICE agent nominated (aioice's
    `Connection._nominated`, read defensively)."""
    types = set()
    for transceiver in pc.getTransceivers():
        ice = transceiver.receiver.transport.transport
        for pair in getattr(ice._connection, "_nominated", {}).values():
            types.add((pair.local_candidate.type, pair.remote_candidate.type))
    return types


async def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)


@pytest.mark.timeout(90)
async def test_an_aiortc_client_forced_to_relay_gets_the_media_through_coturn(
        livehuman, coturn):  # noqa: F811
    base_url, _ = livehuman
    allocations, relayed = coturn.allocations(), coturn.relayed_bytes()
    client = AvatarClient(base_url, keep_video=False, rtc_configuration=relay_only(coturn))
    try:
        await client.connect()
        offer = client.pc.localDescription.sdp
        assert "typ relay" in offer and "typ host" not in offer, offer  # relay only
        await client.wait_for_video(25, timeout=30)
        assert len(client.received.audio_times) >= 25
        assert selected_pair_types(client.pc) == {("relay", "host")}  # through coturn
        assert coturn.allocations() > allocations, coturn.log()[-2000:]
    finally:
        await client.close()
    # The client deallocates as it closes; coturn then logs what the allocation carried.
    await wait_until(lambda: coturn.relayed_bytes() - relayed > RELAYED_BYTES_MIN, 15,
                     f"coturn relayed too little: {coturn.log()[-1500:]}")
    print(f"aiortc client through coturn: {len(client.received.video_times)} frames, "
          f"{coturn.relayed_bytes() - relayed} bytes relayed")


@pytest.mark.timeout(60)
async def test_the_servers_own_turn_setting_gathers_a_relayed_candidate(coturn):
    settings = replace(Settings(), turn=(coturn.url,), turn_username=USERNAME,
                       turn_password=PASSWORD)
    pc = RTCPeerConnection(rtc_configuration(settings))
    try:
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        assert "typ relay" in pc.localDescription.sdp, pc.localDescription.sdp
    finally:
        await pc.close()


PAGE_PATH_JS = "() => state.path"
FRAMES_DECODED_JS = """async () => {
  const stats = await state.pc.getStats();
  let n = 0;
  stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') n = s.framesDecoded || 0; });
  return n;
}"""



async def frames_decoded(page, at_least: int, timeout_s: float = 10.0) -> int:
    """The page's decoded video frames once there are `at_least` (getStats, polled: a
    predicate that returns a Promise is truthy to Playwright's wait_for_function)."""
    deadline = time.monotonic() + timeout_s
    while (n := await page.evaluate(FRAMES_DECODED_JS)) < at_least:
        assert time.monotonic() < deadline, f"{n} video frames decoded, not {at_least}"
        await asyncio.sleep(0.1)
    return n
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make test installs it)")
@pytest.mark.timeout(90)
async def test_the_web_page_with_relay_1_gets_the_media_through_coturn(livehuman, coturn):  # noqa: F811
    from playwright.async_api import async_playwright

    base_url, _ = livehuman
    allocations = coturn.allocations()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(base_url + "/?relay=1")
            await page.click("text=Connection settings")
            assert await page.is_checked("#relay")  # ?relay=1 ticks "force TURN relay"
            await page.fill("#stun", coturn.url)
            await page.fill("#turn-user", USERNAME)
            await page.fill("#turn-pass", PASSWORD)
            await page.click("#connect")
            await page.wait_for_function("document.getElementById('video').videoWidth > 0",
                                         timeout=30000)
            await page.wait_for_function(PAGE_PATH_JS, timeout=10000)
            path = await page.evaluate(PAGE_PATH_JS)
            assert path["local"] == "relay", path  # the browser's side: a TURN relay
            # frames keep coming through the relay (polled: on 2 loaded cores Chromium's stats
            # have lagged the first rendered frame by over a second)
            first = await frames_decoded(page, at_least=1)
            await frames_decoded(page, at_least=first + 25)  # a second's worth more
            log = await page.inner_text("#log")
            assert "media path: relay" in log, log
            assert coturn.allocations() > allocations, coturn.log()[-2000:]
            await page.click("#disconnect")
            assert not errors, errors
            print(f"chromium through coturn: media path {path}, "
                  f"{coturn.allocations() - allocations} allocations")
        finally:
            await browser.close()
