"""The transport to Triton (triton/client.py, triton/shm.py): one gRPC channel per URL, server
status, and frame tensors through system shared memory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from conftest import TTS_MODEL

from orchestrator.lipsync.default import DefaultLipSyncClient as LipSyncClient
from orchestrator.triton.client import TritonServerClient
from orchestrator.tts.espeak import ESpeakEngine


async def test_server_status_and_shared_channel(triton):
    server, lipsync = TritonServerClient(triton.url), LipSyncClient(triton.url)
    try:
        assert server._client is lipsync._client  # one gRPC channel per Triton URL
        status = await server.server_status([TTS_MODEL, "no_such_model"])
        assert status["live"] and not status["ready"]
        assert status["models"] == {TTS_MODEL: True, "no_such_model": False}
        assert (await server.server_status(triton.models))["ready"]
    finally:
        await server.close()
        await lipsync.close()
    tts = ESpeakEngine(triton.url)
    await tts.close()
    with pytest.raises(RuntimeError, match="closed"):
        await tts.speech("hello", "")


async def test_lipsync_through_shared_memory_matches_grpc(triton):
    """Triton on this host: frame tensors go through registered system shared memory."""
    from orchestrator.triton.shm import on_this_host

    assert on_this_host(triton.url)
    rng = np.random.default_rng(5)
    mel = rng.uniform(-4, 4, (3, 1, 80, 16)).astype(np.float32)
    face = rng.uniform(0, 1, (3, 3, 128, 128)).astype(np.float32)
    mouth = np.tile(np.array([[0.5, 0.62, 0.3, 0.08]], np.float32), (3, 1))
    plain = LipSyncClient(triton.url)
    shared = LipSyncClient(triton.url, shared_memory=True)
    status = await plain._client.get_system_shared_memory_status(as_json=True)
    before = {r["name"] for r in status.get("regions", {}).values()}
    try:
        expected = await plain.infer(mel, face, mouth)
        outputs = await asyncio.gather(*(shared.infer(mel, face, mouth) for _ in range(4)))
        status = await shared._client.get_system_shared_memory_status(as_json=True)
        ours = {r["name"] for r in status.get("regions", {}).values()} - before
        assert shared.shared_memory and ours, "regions registered with Triton"
        for out in outputs:
            np.testing.assert_array_equal(out, expected)
    finally:
        await shared.close()
        await plain.close()
    client = LipSyncClient(triton.url)
    try:
        status = await client._client.get_system_shared_memory_status(as_json=True)
        left = {r["name"] for r in status.get("regions", {}).values()}
        assert not ours & left, "unregistered on close"
        assert not [n for n in ours if (Path("/dev/shm") / n).exists()], "unlinked on close"
    finally:
        await client.close()
