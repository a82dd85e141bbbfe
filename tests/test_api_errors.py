"""Bad input gets the contract's 4xx answers naming the field, and the server keeps serving."""

from __future__ import annotations

import aiohttp
import pytest
from server_fixtures import TEST_MAX_SESSIONS, livehuman  # noqa: F401  (fixture)

from orchestrator.client import AvatarClient

UNKNOWN_SESSION = 987654


async def post(base_url: str, path: str, body) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        # Raw bodies are sent as JSON too: other types are refused (415) before parsing.
        kwargs = ({"data": body, "headers": {"Content-Type": "application/json"}}
                  if isinstance(body, (bytes, str)) else {"json": body})
        async with http.post(f"{base_url}{path}", **kwargs) as resp:
            return resp.status, await resp.json()


@pytest.mark.parametrize(
    "path, body, status, names",
    [
        ("/offer", b"{not json", 400, "JSON"),
        ("/offer", [1, 2], 400, "object"),
        ("/offer", {"sdp": "v=0"}, 400, "type"),
        ("/offer", {"type": "answer", "sdp": "v=0"}, 400, "type"),
        ("/offer", {"type": "offer"}, 400, "sdp"),
        ("/offer", {"type": "offer", "sdp": 5}, 400, "sdp"),
        ("/offer", {"type": "offer", "sdp": "garbage"}, 400, "sdp"),
        ("/offer", {"type": "offer", "sdp": "v=0\r\nm=video", "avatar": "nobody"}, 404, "avatar"),
        ("/offer", {"type": "offer", "sdp": "v=0\r\nm=video", "avatar": "../etc"}, 400, "avatar"),
        ("/offer", {"type": "offer", "sdp": "v=0\r\nm=video", "refaudio": "xx-nonexistent"}, 404,
         "refaudio"),
        ("/offer", {"type": "offer", "sdp": "v=0\r\nm=video", "custom_config": "{oops"}, 400,
         "custom_config"),
        ("/offer", {"type": "offer", "sdp": "v=0\r\nm=video", "multiavatar_config": "[1]"}, 400,
         "multiavatar_config"),
        ("/human", {"type": "echo", "text": "hi"}, 400, "sessionid"),
        ("/human", {"sessionid": "1", "type": "echo", "text": "hi"}, 400, "sessionid"),
        ("/human", {"sessionid": True, "type": "echo", "text": "hi"}, 400, "sessionid"),
        ("/human", {"sessionid": UNKNOWN_SESSION, "type": "echo", "text": "hi"}, 404, "sessionid"),
        ("/interrupt_talk", {}, 400, "sessionid"),
        ("/interrupt_talk", {"sessionid": UNKNOWN_SESSION}, 404, "sessionid"),
        ("/is_speaking", {"sessionid": UNKNOWN_SESSION}, 404, "sessionid"),
        ("/is_speaking", b"", 400, "JSON"),
    ],
)
async def test_bad_requests(livehuman, path, body, status, names):  # noqa: F811
    base_url, _ = livehuman
    got, answer = await post(base_url, path, body)
    assert got == status, answer
    assert answer["code"] != 0
    assert names in answer["msg"]


async def test_bad_human_fields_on_a_live_session(livehuman):  # noqa: F811
    base_url, services = livehuman
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        cases = [
            ({"type": "sing", "text": "x"}, 400, "type"),
            ({"type": "echo"}, 400, "text"),
            ({"type": "echo", "text": "   "}, 400, "text"),
            ({"type": "echo", "text": 3}, 400, "text"),
            ({"type": "echo", "text": "x" * 6000}, 413, "text"),
            ({"type": "echo", "text": "x", "interrupt": "yes"}, 400, "interrupt"),
            ({"type": "echo", "text": "x", "avatarid": "other"}, 404, "avatarid"),
            ({"type": "echo", "text": "x", "tts": "voice"}, 400, "tts"),
            ({"type": "echo", "text": "x", "tts": {"ref_file": "zz-none"}}, 404, "ref_file"),
            ({"type": "chat", "text": ""}, 400, "text"),
            ({"type": "chat", "text": "x", "tts": {"ref_file": "../x"}}, 400, "ref_file"),
        ]
        for body, status, names in cases:
            got, answer = await client.post("/human", **body)
            assert got == status, (body, answer)
            assert answer["code"] != 0 and names in answer["msg"], (body, answer)
        # the session survived all of it
        got, answer = await client.post("/human", type="echo", text="still here")
        assert got == 200 and answer["code"] == 0
    finally:
        await client.close()


async def test_body_too_large(livehuman):  # noqa: F811
    base_url, _ = livehuman
    got, answer = await post(base_url, "/human", b"{" + b" " * (2 << 20) + b"}")
    assert got == 413 and answer["code"] == 413


async def test_session_limit(livehuman):  # noqa: F811
    base_url, services = livehuman
    clients = []
    try:
        while len(services.registry) < TEST_MAX_SESSIONS:
            client = AvatarClient(base_url, keep_video=False)
            clients.append(client)
            await client.connect()
        extra = AvatarClient(base_url, keep_video=False)
        clients.append(extra)
        with pytest.raises(RuntimeError, match="503.*session limit"):
            await extra.connect()
    finally:
        for client in clients:
            await client.close()


async def test_healthz(livehuman):  # noqa: F811
    base_url, _ = livehuman
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/healthz") as resp:
            assert resp.status == 200
            health = await resp.json()
    models = health["data"]["triton"]["models"]
    assert models["tts_espeak"] is True and models["lipsync_default"] is True
