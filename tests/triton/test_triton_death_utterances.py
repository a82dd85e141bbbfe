"""Triton dying under accepted utterances (issue 22, item 7): every `/human` that was answered
200 ends with an event: spoken (tried once more when Triton is back within 15 s) or an `error`
naming Triton, never silence.

The test starts its own server with its own embedded tritonserver and kills that process by the
PID it started (the session-wide `triton` fixture is shared and must not be killed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import replace

import pytest
from conftest import ensure_lipsync_onnx
from orchestrator_process import SSE
from server_fixtures import running_server

from orchestrator.client import AvatarClient
from orchestrator.settings import Settings

SPEECH_RMS = 0.01
# The retry waits up to 15 s for Triton; then an event must come (a bound, not a speed).
EVENT_WITHIN_S = 60.0
RESTART_WAIT_S = 120.0
pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
async def supervised():
    """(base_url, services) of a server with its own embedded Triton, for killing (no voice
    input: fewer models to load on a busy machine)."""
    assert ensure_lipsync_onnx(), "the default lip-sync model is needed"
    settings = replace(Settings(), ice_hosts=("127.0.0.1",), max_sessions=2, voice_input=False)
    async with running_server(settings) as server:
        yield server


async def ended(sse: SSE, utterance: str, timeout_s: float) -> dict:
    """The `end` or `error` event of `utterance`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in sse.events:
            if event.get("utterance_id") == utterance and event["event"] in ("end", "error",
                                                                            "interrupted"):
                return event
        await asyncio.sleep(0.05)
    raise AssertionError(f"utterance {utterance} never ended: {sse.events}")


async def ready_again(services) -> None:
    deadline = time.monotonic() + RESTART_WAIT_S
    while not services.triton.ready:
        assert time.monotonic() < deadline, "Triton was not restarted"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("when", ["just_before",  # CI: just_before
                                  pytest.param("just_after", marks=pytest.mark.slow)])
async def test_every_accepted_utterance_ends_with_an_event_when_triton_dies(supervised, when):
    """`just_before`: /human answered, then Triton killed; `just_after`: killed, then /human in
    the second before the supervisor notices."""
    base_url, services = supervised
    await ready_again(services)
    client = AvatarClient(base_url, keep_video=False)
    sse = None
    try:
        await client.connect()
        await client.wait_for_video(10)
        sse = SSE(base_url, client.sessionid)
        pid = services.embedded_triton.pid  # the tritonserver this test's server started
        accepted = []
        if when == "just_after":
            os.kill(pid, signal.SIGKILL)
        for text in ("Said as Triton dies.", "And this one after it."):
            status, answer = await client.post("/human", type="echo", text=text)
            if status == 200:
                accepted.append(answer["data"]["utterance_id"])
            else:
                assert status == 503 and "Triton" in answer["msg"], answer
            if when == "just_before" and text.startswith("Said"):
                os.kill(pid, signal.SIGKILL)
        assert accepted or when == "just_after"
        for utterance in accepted:
            event = await ended(sse, utterance, EVENT_WITHIN_S)
            assert event["event"] in ("end", "error"), event
            if event["event"] == "error":
                assert "Triton" in event["msg"], event
        deadline = time.monotonic() + RESTART_WAIT_S
        while services.embedded_triton.pid == pid:  # restarted (a new process)...
            assert time.monotonic() < deadline, "Triton was not restarted"
            await asyncio.sleep(0.2)
        await ready_again(services)  # ...and ready
        sent = time.monotonic()
        status, answer = await client.post("/human", type="echo", text="Back again.")
        assert status == 200, answer
        assert (await ended(sse, answer["data"]["utterance_id"], EVENT_WITHIN_S))["event"] \
            == "end"
        try:
            await client.wait_for_speech(sent, SPEECH_RMS, timeout=EVENT_WITHIN_S)
        except TimeoutError:
            r = client.received
            heard = [round(x, 3) for t, x in zip(r.audio_times, r.audio_rms) if t >= sent]
            raise AssertionError(f"no speech heard: {len(heard)} audio frames since, rms max "
                                 f"{max(heard, default=0)}; {sse.events}") from None
    finally:
        if sse is not None:
            await sse.close()
        await client.close()
