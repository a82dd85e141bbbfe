"""The Kubernetes topology on one machine (docker/k8s/livehuman, docs/DEPLOY.md): one standalone
tritonserver, as the Triton Deployment's pod, and two orchestrator processes that reach it with
--triton-url, as two orchestrator pods through the Triton Service.

Both sessions speak at the same time; each client receives speech and lip-synced frames, and
Triton's statistics show lip-sync requests of the two orchestrators executed together. Why a
merged execution proves that: each orchestrator here holds one session, and a session has at
most one lip-sync request in flight (its speech pipeline awaits each chunk), so two requests in
one execution come from two sessions, that is from both orchestrators.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from conftest import LIPSYNC_MODEL, MODEL_REPOSITORY, TTS_MODEL, ensure_lipsync_onnx
from orchestrator_process import PROJECT_ROOT, SSE, free_port, start_orchestrator

from orchestrator.avatar.store import AvatarStore
from orchestrator.client import (
    AvatarClient,
    lagged_correlations,
    loudness_per_video_frame,
    mean_window,
    mouth_motion,
    mouth_window,
)
from orchestrator.http.instance_forward import FORWARDED_BY_HEADER
from orchestrator.session.ids import LOCAL_ID_BITS, instance_of
from orchestrator.triton.server import EmbeddedTriton

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(600)

INSTANCES = [1, 2]  # orchestrator instance ids; instance N listens on 127.0.0.N
PEER_URL = "http://127.0.0.{{instance}}:{port}"  # --peer-url, as the chart's pod DNS names
SPEECH_RMS = 0.01
SENTENCE = ("Hello! I am livehuman, a talking avatar. Two of us are speaking at the same time "
            "through one Triton server.")
SPEAK_S = 5.0  # of each sentence's speech, looked at
WAIT_S = 60.0
# A peer gets this long to connect (default 15 s): ICE on a machine busy with other test runs.
SETUP_TIMEOUT_S = 60.0
# The local lip-sync config waits 1 ms for more requests (tuned for latency on a CPU). Here
# the batcher waits up to one video frame (40 ms at 25 fps) so that the two orchestrators'
# requests meet whatever the scheduling of this busy 2-core machine; a request still has to
# come from each orchestrator within that window to be batched with the other's.
QUEUE_DELAY_US = 40_000


def peer_host(instance: int) -> str:
    return f"127.0.0.{instance}"


def pool_repository(directory):
    """A model repository with only what the orchestrators use (eSpeak and lip-sync), the
    models linked from the project's, lip-sync with QUEUE_DELAY_US."""
    directory.mkdir(exist_ok=True)
    (directory / TTS_MODEL).symlink_to(MODEL_REPOSITORY / TTS_MODEL)
    lipsync = directory / LIPSYNC_MODEL
    (lipsync / "configs").mkdir(parents=True)
    (lipsync / "1").symlink_to(MODEL_REPOSITORY / LIPSYNC_MODEL / "1")
    (lipsync / "config.pbtxt").symlink_to(MODEL_REPOSITORY / LIPSYNC_MODEL / "config.pbtxt")
    local = (MODEL_REPOSITORY / LIPSYNC_MODEL / "configs" / "local.pbtxt").read_text()
    local, replaced = re.subn(r"max_queue_delay_microseconds: \d+",
                              f"max_queue_delay_microseconds: {QUEUE_DELAY_US}", local)
    assert replaced == 1, "the local lip-sync config has no max_queue_delay_microseconds"
    (lipsync / "configs" / "local.pbtxt").write_text(local)
    return directory


@pytest.fixture(scope="module")
async def pool(tmp_path_factory):
    """(standalone Triton, [orchestrator processes of INSTANCES])."""
    assert ensure_lipsync_onnx(), "the default lip-sync model is needed"
    tmp = tmp_path_factory.mktemp("pool")
    triton = EmbeddedTriton(pool_repository(tmp / "models"), [TTS_MODEL, LIPSYNC_MODEL])
    await triton.start()
    servers = []
    try:
        # Like the StatefulSet's pods: the same port, one name (here a loopback address) each.
        port = free_port()
        started = await asyncio.gather(
            *(start_orchestrator(tmp / f"orchestrator-{i}.log", "--triton-url", triton.url,
                                 "--instance-id", str(i), "--peer-url", PEER_URL.format(port=port),
                                 "--tts", "espeak", "--no-voice-input", "--setup-timeout",
                                 str(SETUP_TIMEOUT_S), host=peer_host(i),
                                 port=port)
              for i in INSTANCES), return_exceptions=True)
        servers = [s for s in started if not isinstance(s, BaseException)]
        for failure in started:
            if isinstance(failure, BaseException):
                raise failure
        yield triton, servers
    finally:
        for server in servers:
            server.process.send_signal(signal.SIGINT)
        for server in servers:
            try:
                await server.wait_exit()
            finally:
                server.kill()
        await triton.stop()


async def lipsync_stats(url: str) -> dict:
    """(requests, executions, {batch size: executions}) of the lip-sync model so far."""
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = await client.get_inference_statistics(LIPSYNC_MODEL, as_json=True)
    finally:
        await client.close()
    model = stats["model_stats"][0]
    return {"requests": int(model["inference_stats"].get("success", {}).get("count", 0)),
            "executions": int(model.get("execution_count", 0)),
            "batches": {int(b["batch_size"]): int(b["compute_infer"]["count"])
                        for b in model.get("batch_stats", [])}}


def assert_lip_synced(client: AvatarClient, first_speech: float, idle_end: int,
                      reference: np.ndarray, region) -> None:
    """The mouth moves while the avatar speaks, well beyond its idle motion, and follows the
    loudness of the audio that plays with it (as tests/session/test_session_e2e.py checks one server)."""
    r = client.received
    full = (slice(None), slice(None))  # the client kept only the mouth window
    idle_motion = mouth_motion(r.video[:idle_end], full, reference)
    start = int(np.searchsorted(r.video_times, first_speech)) - 5
    stop = min(start + int(SPEAK_S * 25), len(r.video))
    motion = mouth_motion(r.video, full, reference)
    assert motion[start:stop].max() > 4 * max(idle_motion.max(), 0.5), (
        f"mouth motion {motion[start:stop].max():.2f}, idle {idle_motion.max():.2f}")
    loudness = loudness_per_video_frame(r)
    best = max(lagged_correlations(motion, loudness, start, stop, range(-2, 3)).values())
    assert best > 0.5, f"mouth/audio correlation {best:.2f}"


async def test_two_orchestrators_share_one_triton_and_its_batches(pool):
    triton, servers = pool
    avatar = AvatarStore(PROJECT_ROOT / "data" / "avatars").load("default")
    region = mouth_window(avatar)
    clients = [AvatarClient(s.base_url, video_region=region) for s in servers]
    try:
        for instance, client in zip(INSTANCES, clients):
            await client.connect()
            assert instance_of(client.sessionid) == instance  # its orchestrator's session
        for client in clients:
            await client.wait_for_video(25, timeout=WAIT_S)
        await asyncio.sleep(1.0)
        idle_ends = [len(c.received.video) for c in clients]
        references = [mean_window(c.received.video[:n], (slice(None), slice(None)))
                      for c, n in zip(clients, idle_ends)]
        before = await lipsync_stats(triton.url)

        sent = time.monotonic()
        answers = await asyncio.gather(*(c.post("/human", type="echo", text=SENTENCE)
                                         for c in clients))
        assert all(status == 200 for status, _ in answers), answers
        firsts = await asyncio.gather(*(c.wait_for_speech(sent, SPEECH_RMS, timeout=WAIT_S)
                                        for c in clients))
        await asyncio.sleep(SPEAK_S + 1.0)
        after = await lipsync_stats(triton.url)

        for client, first, idle_end, reference in zip(clients, firsts, idle_ends, references):
            assert_lip_synced(client, first, idle_end, reference, region)
        requests = after["requests"] - before["requests"]
        executions = after["executions"] - before["executions"]
        batches = {size: count - before["batches"].get(size, 0)
                   for size, count in after["batches"].items()
                   if count > before["batches"].get(size, 0)}
        log.info("lip-sync while both spoke: %d requests in %d executions, batch sizes %s",
                 requests, executions, dict(sorted(batches.items())))
        assert requests > 0, after
        assert executions < requests, (
            f"no two lip-sync requests were executed together: {requests} requests, "
            f"{executions} executions, batch sizes {batches}")
    finally:
        for client in clients:
            await client.close()


async def post(base_url: str, path: str, headers: dict | None = None, **body) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.post(f"{base_url}{path}", json=body,
                                                          headers=headers) as resp:
        return resp.status, await resp.json()


async def test_any_orchestrator_forwards_session_requests_to_the_sessions_own(pool):
    """A Service spreads a session's requests over every orchestrator: the one that gets a
    request for another instance's session (--peer-url) sends it on, SSE streamed too."""
    _, (owner, other) = pool
    client = AvatarClient(owner.base_url, keep_video=False)
    sse = None
    try:
        await client.connect()
        await client.wait_for_video(10, timeout=WAIT_S)
        sessionid = client.sessionid
        sse = SSE(other.base_url, sessionid)  # the session's events, through the other
        sent = time.monotonic()
        status, answer = await post(other.base_url, "/human", sessionid=str(sessionid),
                                    type="echo", text="You reached me through my neighbour.")
        assert status == 200 and answer["code"] == 0, answer
        utterance = answer["data"]["utterance_id"]
        await client.wait_for_speech(sent, SPEECH_RMS, timeout=WAIT_S)  # the owner spoke it
        await sse.wait_for("end", utterance_id=utterance)
        status, answer = await post(other.base_url, "/is_speaking", sessionid=sessionid)
        assert status == 200 and answer["data"] is False, answer
        status, answer = await post(other.base_url, "/interrupt_talk", sessionid=sessionid)
        assert status == 200, answer

        # An id of the owner's instance that names no session: the owner's 404, passed back.
        unknown = (INSTANCES[0] << LOCAL_ID_BITS) | 12345
        status, answer = await post(other.base_url, "/is_speaking", sessionid=unknown)
        assert status == 404 and "unknown sessionid" in answer["msg"], answer
        # A request already forwarded once is never forwarded again (no loops).
        status, answer = await post(other.base_url, "/is_speaking", sessionid=sessionid,
                                    headers={FORWARDED_BY_HEADER: "9"})
        assert status == 421 and f"instance {INSTANCES[0]}" in answer["msg"], answer
        # Uploads are read part by part and cannot be replayed: 421 naming the owner.
        form = aiohttp.FormData()
        form.add_field("sessionid", str(sessionid))
        form.add_field("file", b"RIFF....WAVE", filename="a.wav")
        async with aiohttp.ClientSession() as http, http.post(f"{other.base_url}/humanaudio",
                                                              data=form) as resp:
            answer = await resp.json()
            assert resp.status == 421 and "not forwarded" in answer["msg"], answer
    finally:
        if sse is not None:
            await sse.close()
        await client.close()
