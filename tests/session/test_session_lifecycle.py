"""Session lifetime against real peers: slots come back, one speech task, bounded queues, every
utterance ends with an event, and a closed Session is freed at once."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import weakref
from collections.abc import Callable
from dataclasses import replace

import aiohttp
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from fake_openai import fake_openai_fixture  # noqa: F401  (fixture)
from server_fixtures import running_server, server_settings

from orchestrator.client import AvatarClient
from orchestrator.media.wav_file import wav_bytes

pytestmark = pytest.mark.timeout(180)

SETUP_TIMEOUT_S = 3.0  # shortened for the tests; long enough for a loopback peer to connect
MAX_QUEUED_UTTERANCES = 5
MAX_QUEUED_SPEECH_S = 40.0
WAIT_S = 30.0  # generous bound for anything that must happen "soon"
LONG_TEXT = "This sentence goes on for a long while so that there is time to act on it. " * 3


@pytest.fixture(scope="module")
async def server(triton, tmp_path_factory):
    """(base_url, services, knowledge_dir) of a one-slot server with short limits."""
    knowledge_dir = tmp_path_factory.mktemp("knowledge")
    settings = replace(server_settings(triton, knowledge_dir=knowledge_dir), max_sessions=1,
                       setup_timeout_s=SETUP_TIMEOUT_S,
                       max_queued_utterances=MAX_QUEUED_UTTERANCES,
                       max_queued_speech_s=MAX_QUEUED_SPEECH_S)
    async with running_server(settings) as (url, services):
        yield url, services, knowledge_dir


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def free_slot(services) -> None:
    """The previous test's session finishes closing first (one-slot server)."""
    await wait_until(lambda: len(services.registry) == 0, "the slot is free")


def speech_tasks(sessionid: int) -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == f"speech-{sessionid}"]


async def post_offer(base_url: str, sdp: str, **fields) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        body = {"type": "offer", "sdp": sdp, **fields}
        async with http.post(f"{base_url}/offer", json=body) as resp:
            return resp.status, await resp.json()


async def offer_sdp() -> tuple[RTCPeerConnection, str]:
    """A real aiortc offer (fully gathered), from a peer that will never apply the answer."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def without_end_of_candidates(sdp: str) -> str:
    """As Chromium sends a fully gathered offer: no `a=end-of-candidates`, so ICE never fails."""
    stripped = "".join(line for line in sdp.splitlines(keepends=True)
                       if not line.startswith("a=end-of-candidates"))
    assert stripped != sdp, "the offer had no end-of-candidates line to strip"
    return stripped


async def connected_client(base_url: str, **fields) -> AvatarClient:
    client = AvatarClient(base_url, keep_video=False)
    await client.connect(**fields)
    await client.wait_for_video(5, timeout=WAIT_S)
    return client


@pytest.mark.parametrize("strip", [False, True], ids=["abandoned", "no-end-of-candidates"])
async def test_offer_that_never_connects_frees_its_slot(server, strip):
    base_url, services, _ = server
    await free_slot(services)
    pc, sdp = await offer_sdp()
    gc.disable()  # the Session must go by reference counting alone
    try:
        status, answer = await post_offer(base_url, without_end_of_candidates(sdp) if strip else sdp)
        assert status == 200, answer
        await pc.close()  # the page went away before it could connect
        session = weakref.ref(services.registry.get(answer["sessionid"]))
        # the one slot is taken...
        status, refused = await post_offer(base_url, sdp)
        assert status == 503 and "session limit" in refused["msg"], refused
        # ...until the setup timeout closes the session that never connected
        await wait_until(lambda: len(services.registry) == 0, "unconnected session released")
        await wait_until(lambda: session() is None, "closed Session freed without a gc pass")
        assert not speech_tasks(answer["sessionid"])
    finally:
        gc.enable()
    client = await connected_client(base_url)  # a new user gets the slot
    await client.close()


async def test_connected_session_outlives_the_setup_timeout_and_is_freed_when_the_peer_leaves(server):
    base_url, services, _ = server
    await free_slot(services)
    gc.disable()
    try:
        client = await connected_client(base_url)
        sessionid = client.sessionid
        session = weakref.ref(services.registry.get(sessionid))
        status, _ = await client.post("/human", type="echo", text=LONG_TEXT)
        assert status == 200
        await wait_until(lambda: any(e["event"] == "start" for e in session().events.history),
                         "speech started")
        await asyncio.sleep(SETUP_TIMEOUT_S + 1.0)
        assert not services.registry.get(sessionid).closed, "a connected session was closed"
        await client.post("/interrupt_talk")
        await client.close()
        await wait_until(lambda: len(services.registry) == 0, "session released")
        await wait_until(lambda: session() is None, "closed Session freed without a gc pass")
        assert not speech_tasks(sessionid)
    finally:
        gc.enable()


async def test_session_limit_is_checked_before_the_offer_is_loaded(server):
    base_url, services, _ = server
    await free_slot(services)
    pc, sdp = await offer_sdp()  # well-formed: what is refused is the field named
    await pc.close()
    # failing offers give their reserved slot back, whatever fails
    for fields in ({"avatar": "nobody"}, {"refaudio": "xx-nonexistent"}, {"llmid": "nobody"},
                   {"custom_config": json.dumps([{"audiotype": 2, "imgpath": "no/such/dir"}])}):
        status, answer = await post_offer(base_url, sdp, **fields)
        assert 400 <= status < 500, (fields, answer)
    client = await connected_client(base_url)
    try:
        # full: refused before the avatar (or anything else named) is even looked at
        status, answer = await post_offer(base_url, sdp, avatar="nobody")
        assert status == 503 and "session limit" in answer["msg"], answer
    finally:
        await client.close()


async def sse_events(base_url: str, sessionid: int, into: list[dict]) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/sse", params={"sessionid": str(sessionid)}) as resp:
            async for line in resp.content:
                if line.startswith(b"data: "):
                    into.append(json.loads(line[6:]))


def assert_never_two_at_once(events: list[dict]) -> None:
    """start ... end/error/interrupted of one utterance before the next one starts."""
    playing = None
    for event in events:
        if event["event"] == "start":
            assert playing is None, f"{event['utterance_id']} started while {playing} played"
            playing = event["utterance_id"]
        elif event["event"] in ("end", "error", "interrupted") and event.get("utterance_id") == playing:
            playing = None


async def test_interrupt_storm_keeps_exactly_one_speech_task(server):
    base_url, services, _ = server
    await free_slot(services)
    client = await connected_client(base_url)
    sessionid = client.sessionid
    events: list[dict] = []
    reader = asyncio.create_task(sse_events(base_url, sessionid, events))
    try:
        await client.post("/human", type="echo", text=LONG_TEXT)
        await wait_until(lambda: any(e["event"] == "start" for e in events), "speech started")
        storm = []
        for i in range(60):
            storm.append(client.post("/interrupt_talk"))
            if i % 3 == 0:
                storm.append(client.post("/human", type="echo", text=f"Number {i}.",
                                         interrupt=i % 2 == 0))
        answers = await asyncio.gather(*storm)
        assert all(status in (200, 429) for status, _ in answers), answers
        assert len(speech_tasks(sessionid)) == 1
        status, last = await client.post("/human", type="echo", text="Done now.", interrupt=True)
        assert status == 200
        await wait_until(lambda: any(e["event"] == "end" and e["utterance_id"] ==
                                     last["data"]["utterance_id"] for e in events),
                         "the last utterance ended")
        assert len(speech_tasks(sessionid)) == 1
        assert_never_two_at_once(events)
    finally:
        await client.close()
    await wait_until(lambda: len(services.registry) == 0, "session released")
    await wait_until(lambda: not speech_tasks(sessionid), "no speech task after close")
    await asyncio.wait_for(reader, WAIT_S)  # the stream ends with the session


def tone_wav(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return wav_bytes(0.3 * np.sin(2 * np.pi * 220 * t), rate)


async def post_audio(client: AvatarClient, seconds: float) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("sessionid", str(client.sessionid))
    form.add_field("file", tone_wav(seconds), filename="speech.wav", content_type="audio/wav")
    async with client.http.post(f"{client.base_url}/humanaudio", data=form) as resp:
        return resp.status, await resp.json()


async def test_speech_queue_is_bounded(server):
    base_url, services, _ = server
    await free_slot(services)
    client = await connected_client(base_url)
    try:
        for _ in range(MAX_QUEUED_UTTERANCES):
            status, answer = await client.post("/human", type="echo", text="Hello there, friend.")
            assert status == 200, answer
        for body in ({"type": "echo", "text": "One more."}, {"type": "chat", "text": "Hi?"}):
            status, answer = await client.post("/human", **body)
            assert status == 429 and "--max-queued-utterances" in answer["msg"], answer
        status, answer = await post_audio(client, 1.0)
        assert status == 429 and "--max-queued-utterances" in answer["msg"], answer
        # interrupt empties the queue; then seconds are the limit
        await client.post("/interrupt_talk")
        status, answer = await post_audio(client, MAX_QUEUED_SPEECH_S - 5.0)
        assert status == 200, answer
        status, answer = await post_audio(client, 10.0)  # exact length of uploads
        assert status == 429 and "--max-queued-speech" in answer["msg"], answer
        status, answer = await client.post("/human", type="echo", text=LONG_TEXT * 3)
        assert status == 429 and "--max-queued-speech" in answer["msg"], answer
        # the queue gauge of /metrics sees what is waiting
        metrics = await scrape(base_url)
        assert metrics["livehuman_speech_queue_seconds"] >= MAX_QUEUED_SPEECH_S - 5.0
        # with interrupt the new text replaces the queue, so it fits
        status, answer = await client.post("/human", type="echo", text="Fits now.", interrupt=True)
        assert status == 200, answer
    finally:
        await client.close()


async def scrape(base_url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line and not line.startswith("#") and "{" not in line}


async def test_metrics_gauges_count_tasks_and_speech_tasks(server):
    base_url, services, _ = server
    await free_slot(services)
    idle = await scrape(base_url)
    assert idle["livehuman_speech_tasks"] == 0 and idle["livehuman_tasks"] >= 1
    client = await connected_client(base_url)
    try:
        talking = await scrape(base_url)
        assert talking["livehuman_speech_tasks"] == 1
        assert talking["livehuman_tasks"] > idle["livehuman_tasks"]
    finally:
        await client.close()


@pytest.mark.parametrize("text", ["😀", "!!!", "。。。！", "\u200b", "\u00a0", " \u200b\u00a0!"])
async def test_echo_with_nothing_speakable_is_refused(server, text):
    base_url, services, _ = server
    await free_slot(services)
    client = await connected_client(base_url)
    try:
        status, answer = await client.post("/human", type="echo", text=text)
        assert status == 400 and "'text'" in answer["msg"], answer
        if text.strip():
            assert "nothing speakable" in answer["msg"], answer
    finally:
        await client.close()


async def test_chat_answer_with_nothing_speakable_still_ends(server, fake_openai):  # noqa: F811
    base_url, services, knowledge_dir = server
    fake, llm_url = fake_openai
    fake.reply = "😀 !!! 。。。"
    (knowledge_dir / "emoji").mkdir()
    (knowledge_dir / "emoji" / "profile.json").write_text(
        json.dumps({"base_url": llm_url, "model": "emoji-model"}))
    await free_slot(services)
    client = await connected_client(base_url, llmid="emoji")
    try:
        status, answer = await client.post("/human", type="chat", text="Smile for me?")
        assert status == 200, answer
        utterance_id = answer["data"]["utterance_id"]
        session = services.registry.get(client.sessionid)
        await wait_until(lambda: any(e["event"] in ("end", "error") and
                                     e.get("utterance_id") == utterance_id
                                     for e in session.events.history),
                         "the unspeakable answer ended with an event")
        # and the session still speaks afterwards
        status, answer = await client.post("/human", type="echo", text="Still here.")
        assert status == 200, answer
    finally:
        await client.close()
