"""Outputs beyond one browser (docs/OUTPUTS.md), end to end: a server with `--transport
webrtc,rtmp,whep` opens its own session (sessionid 0) at start, pushes it to a real nginx-rtmp
(read back with PyAV as a viewer would) and serves it to WHEP viewers (aiortc, plain HTTP);
`/human` with sessionid 0 is heard on both. The push survives the RTMP server's restart. A WHEP
client may also open a session of its own (LiveTalking's /whep)."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import aiohttp
import av
import pytest
from rtmp_server import NginxRtmp, read_stream, requires_nginx_rtmp
from server_fixtures import running_server, server_settings

from orchestrator.client import AvatarClient, WhepClient
from orchestrator.outputs.rtmp import RtmpPush

pytestmark = requires_nginx_rtmp

TOKEN = "outputs-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALLOWED_ORIGIN = "http://allowed.example"
SETUP_TIMEOUT_S = 2.0
SPEECH = "Hello from the server session, live on every output."
SILENT_RMS = 0.003  # AAC of the idle loop's silence
SPOKEN_RMS = 0.02
SDP = {"Content-Type": "application/sdp", **AUTH}


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    server = NginxRtmp(tmp_path_factory.mktemp("nginx-rtmp"))
    server.start()
    yield server
    if server.process is not None:
        server.stop()


@pytest.fixture(scope="module")
async def outputs_server(triton, nginx):
    """(base_url, services) of a server with every transport, a token and a CORS origin."""
    settings = server_settings(triton, transports=("webrtc", "rtmp", "whep"),
                               push_urls=(nginx.url("show"),), api_token=TOKEN,
                               cors_origins=(ALLOWED_ORIGIN,), setup_timeout_s=SETUP_TIMEOUT_S,
                               max_whep_viewers=2)
    async with running_server(settings) as server:
        yield server


def server_session(services):
    session = services.registry.server_session()
    assert session is not None
    return session


def rtmp_push(services) -> RtmpPush:
    return next(s for s in server_session(services).sinks if isinstance(s, RtmpPush))


async def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def say(base_url: str, text: str) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.post(f"{base_url}/human", json={"sessionid": 0, "type": "echo",
                                                         "text": text}) as resp:
            assert resp.status == 200, await resp.text()


async def admin_sessions(base_url: str) -> list[dict]:
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(f"{base_url}/api/admin/sessions") as resp:
            assert resp.status == 200
            return (await resp.json())["data"]["sessions"]


async def metric(base_url: str, name: str) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/metrics") as resp:
            text = await resp.text()
    lines = [line for line in text.splitlines() if line.startswith(name)]
    assert len(lines) == 1, (name, lines)
    return float(lines[0].rsplit(" ", 1)[1])


@pytest.mark.timeout(120)
async def test_the_server_session_plays_without_a_peer_and_never_times_out(outputs_server):
    base_url, services = outputs_server
    session = server_session(services)
    assert session.pc is None
    await asyncio.sleep(SETUP_TIMEOUT_S + 1.0)  # past the setup timeout an /offer peer has
    frames = session.frames_sent
    await asyncio.sleep(1.0)
    assert not session.closed and session.frames_sent - frames >= 10  # playing at 25 fps
    listed = [s for s in await admin_sessions(base_url) if s["sessionid"] == 0]
    assert len(listed) == 1, listed
    assert listed[0]["state"] == "playing" and listed[0]["transport"] == "rtmp,whep"
    [push] = [o for o in listed[0]["outputs"] if o["type"] == "rtmp"]
    assert push["url"].endswith("/live/***") and "show" not in str(listed)  # stream key hidden
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(f"{base_url}/api/admin/config") as resp:
            config = (await resp.json())["data"]["config"]
    assert config["transport"] == "webrtc,rtmp,whep" and config["push_url"].endswith("/live/***")


@pytest.mark.timeout(180)
async def test_rtmp_push_reads_back_with_the_avatar_and_its_speech(outputs_server, nginx):
    base_url, services = outputs_server
    session = server_session(services)
    push = rtmp_push(services)
    await wait_until(lambda: push.up, 30, f"push never connected: {nginx.log()}")
    # A viewer plays 8 s of the stream; /human speaks once it is watching.
    result: dict = {}
    reader = threading.Thread(target=lambda: result.update(got=read_stream(
        nginx.url("show"), 8.0, 25)))
    reader.start()
    await asyncio.sleep(2.5)  # connected, at a keyframe, 1-2 s of idle audio
    await say(base_url, SPEECH)
    await asyncio.to_thread(reader.join, 60)
    got = result["got"]
    size = (session.avatar.width, session.avatar.height)
    print(f"rtmp read back: {len(got.video_sizes)} video frames of {set(got.video_sizes)}, "
          f"{got.audio_seconds:.1f} s of audio at {got.audio_rate_hz} Hz, rms first "
          f"{got.audio_rms[0]:.4f} loudest {got.loudest:.3f}")
    assert set(got.video_sizes) == {size}, (set(got.video_sizes), size)
    assert got.audio_rate_hz == 44100 and got.audio_seconds >= 8.0
    assert max(got.audio_rms[:20]) < SILENT_RMS, got.audio_rms[:20]  # idle: silence
    assert got.loudest > SPOKEN_RMS, got.loudest  # then the speech


@pytest.mark.timeout(180)
async def test_rtmp_push_reconnects_when_the_server_comes_back(outputs_server, nginx):
    base_url, services = outputs_server
    push = rtmp_push(services)
    await wait_until(lambda: push.up, 30, f"push never connected: {nginx.log()}")
    label = f'output="{push.label}"'
    outages, connections = push.outages, push.connections
    nginx.stop()
    await wait_until(lambda: push.state == "down", 30, "the push did not notice the outage")
    assert await metric(base_url, f"livehuman_output_up{{{label}}}") == 0.0
    assert await metric(base_url, f"livehuman_output_outages_total{{{label}}}") == outages + 1
    await asyncio.sleep(2.0)  # a few reconnects fail meanwhile: still one outage
    nginx.start()
    await wait_until(lambda: push.up, 30, f"push never came back: {nginx.log()}")
    assert push.outages == outages + 1 and push.connections == connections + 1
    assert await metric(base_url, f"livehuman_output_up{{{label}}}") == 1.0
    got = await asyncio.to_thread(read_stream, nginx.url("show"), 1.0, 5)
    session = server_session(services)
    assert set(got.video_sizes) == {(session.avatar.width, session.avatar.height)}
    print(f"rtmp after restart: {len(got.video_sizes)} frames {set(got.video_sizes)}, "
          f"{got.audio_seconds:.1f} s audio; outages {push.outages}, connections "
          f"{push.connections}")


@pytest.mark.timeout(120)
async def test_a_whep_viewer_sees_and_hears_the_server_session(outputs_server):
    base_url, services = outputs_server
    session = server_session(services)
    viewer = WhepClient(base_url, sessionid=0, token=TOKEN)
    try:
        answer = await viewer.connect()
        headers = answer["headers"]
        assert headers["Content-Type"].startswith("application/sdp")
        assert headers["X-Session-ID"] == "0"
        assert viewer.location.startswith("/whep/") and len(viewer.location) > 20
        assert "a=setup:active" in answer["sdp"] or "a=setup:passive" in answer["sdp"]
        await viewer.wait_for_video(10, timeout=30)
        frame = viewer.received.video[-1]
        assert frame.shape == (session.avatar.height, session.avatar.width, 3)
        assert len(viewer.received.audio_times) >= 10
        listed = [s for s in await admin_sessions(base_url) if s["sessionid"] == 0][0]
        assert [o["state"] for o in listed["outputs"] if o["type"] == "whep"] == ["connected"]
        since = time.monotonic()
        await say(base_url, SPEECH)
        heard = await viewer.wait_for_speech(since, threshold=SPOKEN_RMS, timeout=30)
        print(f"whep viewer {viewer.location[:14]}...: {len(viewer.received.video)} frames of "
              f"{frame.shape[1]}x{frame.shape[0]}, {len(viewer.received.audio_times)} audio "
              f"frames, speech {heard - since:.2f} s after /human")
        assert await viewer.delete() == 200
        listed = [s for s in await admin_sessions(base_url) if s["sessionid"] == 0][0]
        assert not [o for o in listed["outputs"] if o["type"] == "whep"]  # freed
        assert await viewer.delete() == 404
    finally:
        await viewer.close()


@pytest.mark.timeout(120)
async def test_a_whep_client_may_open_a_session_of_its_own(outputs_server):
    """LiveTalking's /whep: no sessionid in the query, a new session whose id the answer's
    X-Session-ID names; /human drives it, DELETE ends it."""
    base_url, services = outputs_server
    client = WhepClient(base_url, token=TOKEN)
    try:
        await client.connect(refaudio="en-us")
        sessionid = client.sessionid
        assert sessionid not in (None, 0)
        session = services.registry.get(sessionid)
        assert session.options.refaudio == "en-us" and session.pc is not None
        await client.wait_for_video(5, timeout=30)
        listed = [s for s in await admin_sessions(base_url) if s["sessionid"] == sessionid]
        assert listed and listed[0]["transport"] == "whep" and listed[0]["state"] == "connected"
        since = time.monotonic()
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.post(f"{base_url}/human", json={
                    "sessionid": str(sessionid), "type": "echo", "text": SPEECH}) as resp:
                assert resp.status == 200, await resp.text()
        await client.wait_for_speech(since, threshold=SPOKEN_RMS, timeout=30)
        # Its id is a session like any: a viewer may watch it, and ends with it.
        mirror = WhepClient(base_url, sessionid=sessionid, token=TOKEN, keep_video=False)
        try:
            await mirror.connect()
            await mirror.wait_for_video(5, timeout=30)
            assert await client.delete() == 200
            assert session.closed
            assert await mirror.delete() == 404  # gone with the session it watched
        finally:
            await mirror.close()
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.post(f"{base_url}/human", json={
                    "sessionid": sessionid, "type": "echo", "text": "gone"}) as resp:
                assert resp.status == 404
        assert await client.delete() == 404
    finally:
        await client.close()


@pytest.mark.timeout(120)
async def test_whep_refuses_what_is_not_a_viewer_offer(outputs_server):
    base_url, _ = outputs_server
    probe = WhepClient(base_url, token=TOKEN)
    probe.pc.addTransceiver("video", direction="recvonly")
    probe.pc.addTransceiver("audio", direction="recvonly")
    await probe.pc.setLocalDescription(await probe.pc.createOffer())
    offer = probe.pc.localDescription.sdp
    await probe.close()
    view = {"sessionid": "0"}
    bad = {  # name: (headers, body, query, status, words in the message)
        "wrong content type": ({"Content-Type": "application/json", **AUTH}, offer, view, 415,
                               "application/sdp"),
        "empty": (SDP, "", view, 400, "empty body"),
        "not SDP": (SDP, "hello", view, 400, "not an SDP offer"),
        "an answer": (SDP, offer.replace("a=setup:actpass", "a=setup:active"), view, 400,
                      "answer"),
        "sendonly": (SDP, offer.replace("a=recvonly", "a=sendonly"), view, 400, "sendonly"),
        "malformed": (SDP, re.sub(r"m=video \d+", "m=video x", offer), view, 400,
                      "not a valid SDP"),
        "no rtcp-mux": (SDP, offer.replace("a=rtcp-mux\r\n", ""), view, 400, "rtcp-mux"),
        "no fingerprint": (SDP, "\r\n".join(line for line in offer.split("\r\n")
                                            if not line.startswith("a=fingerprint")),
                           view, 400, "fingerprint"),
        "no token": ({"Content-Type": "application/sdp"}, offer, view, 401, "token"),
        "unknown session": (SDP, offer, {"sessionid": "987654321"}, 404,
                            "unknown sessionid 987654321"),
        "not a session id": (SDP, offer, {"sessionid": "abc"}, 404, "unknown sessionid"),
        "bad field": (SDP, offer, {"voice_mode": "loud"}, 400, "voice_mode"),
        "unknown avatar": (SDP, offer, {"avatar": "nobody"}, 404, "avatar"),
    }
    async with aiohttp.ClientSession() as http:
        for name, (headers, body, query, status, words) in bad.items():
            async with http.post(f"{base_url}/whep", data=body.encode(), headers=headers,
                                 params=query) as r:
                answer = await r.json()
                assert (r.status, answer["code"]) == (status, status), (name, answer)
                assert words in answer["msg"], (name, answer)
        async with http.get(f"{base_url}/whep", headers=AUTH) as r:
            assert r.status == 405 and "POST" in r.headers["Allow"], r.headers
        async with http.patch(f"{base_url}/whep/nobody", headers={
                "Content-Type": "application/trickle-ice-sdpfrag", **AUTH}, data=b"a=x") as r:
            assert r.status == 404
        async with http.options(f"{base_url}/whep", headers={
                "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type"}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN

    viewers = [WhepClient(base_url, sessionid=0, token=TOKEN) for _ in range(3)]
    try:
        for viewer in viewers[:2]:  # --max-whep-viewers 2
            await viewer.connect()
        with pytest.raises(RuntimeError, match="503"):
            await viewers[2].connect()
        async with aiohttp.ClientSession() as http:
            # issue 22: the viewer limit's 503 says when to retry
            async with http.post(f"{base_url}/whep", params=view, data=offer.encode(),
                                 headers=SDP) as r:
                assert r.status == 503 and int(r.headers["Retry-After"]) > 0, r.headers
            # issue 22: OPTIONS on a resource answers like the collection (it was a 403)
            resource = f"{base_url}{viewers[0].location}"
            answers = {}
            for url, method in ((f"{base_url}/whep", "POST"), (resource, "DELETE")):
                preflight = {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": method,
                             "Access-Control-Request-Headers": "authorization,content-type"}
                async with http.options(url, headers=preflight) as r:
                    cors = (r.status, r.headers.get("Access-Control-Allow-Origin"))
                async with http.options(url) as r:  # a WHEP client's own OPTIONS: no Origin
                    plain = (r.status, r.headers.get("Allow", ""))
                answers[method] = cors, plain
            (cors, plain), (resource_cors, resource_plain) = answers["POST"], answers["DELETE"]
            assert cors == resource_cors == (200, ALLOWED_ORIGIN), answers
            assert plain[0] == resource_plain[0] < 300, answers
            assert "POST" in plain[1] and "DELETE" in resource_plain[1], answers
        async with aiohttp.ClientSession(headers=AUTH) as http:
            url = f"{base_url}{viewers[0].location}"
            async with http.patch(url, data=b"a=ice-ufrag:x", headers={
                    "Content-Type": "application/trickle-ice-sdpfrag"}) as r:
                assert r.status == 405 and r.headers["Allow"] == "DELETE, OPTIONS"
                assert "trickle ICE" in (await r.json())["msg"]
            async with http.patch(url, data=b"x") as r:  # any body: the method is what's wrong
                assert r.status == 405 and r.headers["Allow"] == "DELETE, OPTIONS", r.status
            async with http.get(url) as r:
                assert r.status == 405 and "DELETE" in r.headers["Allow"]
        for viewer in viewers[:2]:
            assert await viewer.delete() == 200
    finally:
        for viewer in viewers:
            await viewer.close()


@pytest.mark.timeout(180)
async def test_push_only_server_refuses_offers_and_ends_its_session_when_it_stops(triton, nginx):
    settings = server_settings(triton, transports=("rtmp",), push_urls=(nginx.url("solo"),))
    async with running_server(settings) as (base_url, services):
        session = server_session(services)
        push = rtmp_push(services)
        await wait_until(lambda: push.up, 30, f"push never connected: {nginx.log()}")
        client = AvatarClient(base_url)
        try:
            with pytest.raises(RuntimeError, match="404.*--transport rtmp"):
                await client.connect()
        finally:
            await client.close()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}/whep", data=b"v=0",
                                 headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 404 and "--transport whep" in (await r.json())["msg"]
        got = await asyncio.to_thread(read_stream, nginx.url("solo"), 0.5, 1)
        assert got.video_sizes
    assert session.closed and push.state == "down"
    with pytest.raises(av.error.FFmpegError):  # the stream ended with the server: no data
        await asyncio.to_thread(read_stream, nginx.url("solo"), 0.5, 1)
