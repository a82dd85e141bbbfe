"""Graceful drain (orchestrator/drain.py) of a real server process, as Kubernetes stops a pod:
SIGTERM while a session is connected. New sessions are refused (503, JSON, Retry-After) and
/healthz reports draining, the live session goes on streaming and speaking, and the process
exits once that session has closed — or closes it when --drain-timeout has passed."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from orchestrator_process import SSE, health, start_orchestrator

from orchestrator.client import AvatarClient
from orchestrator.drain import DEADLINE_REASON

pytestmark = pytest.mark.timeout(400)

SPEECH_RMS = 0.01
WAIT_S = 30.0  # generous bound for what must happen "soon" on a busy 2-core machine
# Far beyond anything the first test waits for: an exit before it is the session's doing.
LONG_DRAIN_S = 300
SHORT_DRAIN_S = 4.0
VIDEO_FRAMES_WHILE_DRAINING = 25  # one second of video


def server_args(triton_url: str, drain_timeout_s: float) -> list[str]:
    # --setup-timeout: a peer may take long to connect on a machine busy with other test runs.
    return ["--triton-url", triton_url, "--drain-timeout", str(drain_timeout_s), "--tts",
            "espeak", "--no-voice-input", "--setup-timeout", "60", "--log-level", "INFO"]


async def offer_sdp() -> str:
    """A real client offer (the server parses it before it checks for a free slot)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def post_offer(base_url: str) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a fresh /offer."""
    body = {"type": "offer", "sdp": await offer_sdp()}
    async with aiohttp.ClientSession() as http, http.post(f"{base_url}/offer", json=body) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def wait_draining(base_url: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while True:
        status, answer = await health(base_url)
        if status == 503 and answer["data"]["draining"]:
            return answer
        assert time.monotonic() < deadline, f"/healthz does not report draining: {answer}"
        await asyncio.sleep(0.05)


async def assert_refuses_new_sessions(base_url: str) -> None:
    status, headers, answer = await post_offer(base_url)
    assert status == 503 and answer["code"] == 503, answer
    assert "shutting down" in answer["msg"], answer
    assert int(headers["Retry-After"]) > 0, headers
    assert headers["Content-Type"].startswith("application/json"), headers


async def assert_goes_on(client: AvatarClient, sse: SSE) -> None:
    """The live session streams video and speaks a new utterance to its end."""
    have = len(client.received.video_times)
    sent = time.monotonic()
    status, answer = await client.post("/human", type="echo", text="I am still here for you.")
    assert status == 200, answer
    utterance = answer["data"]["utterance_id"]
    await client.wait_for_speech(sent, SPEECH_RMS, timeout=WAIT_S)
    await sse.wait_for("end", utterance_id=utterance)
    await client.wait_for_video(have + VIDEO_FRAMES_WHILE_DRAINING, timeout=WAIT_S)


async def test_sigterm_drains_then_exits_when_the_last_session_closes(triton, tmp_path):
    server = await start_orchestrator(tmp_path / "server.log",
                                      *server_args(triton.url, LONG_DRAIN_S))
    client = AvatarClient(server.base_url, keep_video=False)
    sse = None
    try:
        await client.connect()
        await client.wait_for_video(10)
        sse = SSE(server.base_url, client.sessionid)
        server.process.send_signal(signal.SIGTERM)

        answer = await wait_draining(server.base_url)
        assert answer["msg"] == "draining" and answer["data"]["sessions"] == 1, answer
        await assert_refuses_new_sessions(server.base_url)
        await assert_goes_on(client, sse)
        assert server.process.poll() is None, "exited while a session was live"
        await sse.close()
        sse = None
        await client.close()  # the user hangs up: the server is free to go

        # Well before the drain deadline: it left because its last session ended.
        assert await server.wait_exit(LONG_DRAIN_S / 2) == 0, server.log_tail()
        log = server.log_tail(20000)
        assert "drained: every session ended" in log, log
        assert "drain timeout" not in log, log
    finally:
        if sse is not None:
            await sse.close()
        await client.close()
        server.kill()


async def test_sigterm_closes_sessions_left_at_the_drain_deadline(triton, tmp_path):
    server = await start_orchestrator(tmp_path / "server.log",
                                      *server_args(triton.url, SHORT_DRAIN_S))
    client = AvatarClient(server.base_url, keep_video=False)
    sse = None
    try:
        await client.connect()
        await client.wait_for_video(10)
        sse = SSE(server.base_url, client.sessionid)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        await wait_draining(server.base_url)
        await assert_refuses_new_sessions(server.base_url)

        closed = await sse.wait_for("closed", timeout_s=SHORT_DRAIN_S + WAIT_S)
        assert closed["reason"] == DEADLINE_REASON, closed
        # Not cut short: the session was given its whole drain time.
        assert time.monotonic() - signalled >= SHORT_DRAIN_S
        assert await server.wait_exit() == 0, server.log_tail()
        assert "drain timeout" in server.log_tail(20000)
    finally:
        if sse is not None:
            await sse.close()
        await client.close()
        server.kill()


async def test_second_sigterm_stops_at_once(triton, tmp_path):
    server = await start_orchestrator(tmp_path / "server.log",
                                      *server_args(triton.url, LONG_DRAIN_S))
    client = AvatarClient(server.base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(10)
        server.process.send_signal(signal.SIGTERM)
        await wait_draining(server.base_url)
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait_exit() == 0, server.log_tail()
    finally:
        await client.close()
        server.kill()
