"""`--tts-server` URLs and the TTS server's health (issue 22, item 8): the OpenAI SDK's form
`http://host:port/v1` reaches the same server (it went to /v1/v1/audio/speech, 404); a /v1 URL
for a server whose routes have none is refused at start-up naming the right form; the server is
probed at start and `/healthz` warns (without becoming unready) while it cannot be reached."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import aiohttp
import pytest
from fake_voice_servers import FakeVoice, run_fake_voice_server
from server_fixtures import running_server, server_settings

from orchestrator.settings import Settings
from orchestrator.tts import (
    ENGINES,
    TTSRouter,
    Voice,
    check_tts_server,
    synthesize_all,
    tts_server_url,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("engine", ["openai", "fishtts"])
async def test_the_v1_form_reaches_the_same_server(engine, tmp_path):
    fake = FakeVoice()
    async with run_fake_voice_server(engine, fake) as url:
        settings = replace(Settings(), tts=engine, tts_server=url + "/v1/", data_dir=tmp_path)
        assert tts_server_url(settings) == url
        opened = await ENGINES[engine].open(settings, "unused:8001")
        try:
            voice = Voice.named("alloy") if engine == "openai" else Voice.named("speaker1")
            audio = await synthesize_all(opened, "Hello there.", voice)
            assert audio.size > 0 and len(fake.requests) == 1
        finally:
            await opened.close()


@pytest.mark.parametrize("engine", ["cosyvoice", "gpt-sovits"])
def test_a_v1_url_for_a_server_without_it_is_refused_naming_the_form(engine):
    settings = replace(Settings(), tts=engine, tts_server="http://10.0.0.5:9000/v1")
    with pytest.raises(SystemExit, match=r"without /v1 \(e.g. http://10.0.0.5:9000\)"):
        check_tts_server(settings)
    check_tts_server(replace(settings, tts_server="http://10.0.0.5:9000"))
    check_tts_server(replace(settings, tts_server="http://10.0.0.5:9000/proxy/cosy"))


async def test_the_router_warns_while_the_server_is_unreachable_and_clears_when_it_answers(
        tmp_path):
    port = free_port()
    settings = replace(Settings(), tts="openai", tts_server=f"http://127.0.0.1:{port}",
                       data_dir=tmp_path)
    router = TTSRouter([await ENGINES["openai"].open(settings, "unused:8001")])
    try:
        warnings = await router.probe()
        assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0], warnings
        assert "'openai'" in warnings[0] and "unreachable" in warnings[0]
        async with run_fake_voice_server("openai", FakeVoice(), port=port):
            router.engines[0].server._asked_at -= 60  # as if asked long ago
            router.warnings()  # starts a probe in the background, never waits for it
            for _ in range(100):
                if not router.warnings():
                    break
                await asyncio.sleep(0.05)
            assert router.warnings() == []
    finally:
        await router.close()


async def test_healthz_warns_about_an_unreachable_tts_server_but_stays_ready(triton, tmp_path):
    port = free_port()
    settings = server_settings(triton, tts="openai", tts_server=f"http://127.0.0.1:{port}/v1",
                               data_dir=tmp_path)
    async with running_server(settings) as (base_url, _services), aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/healthz") as resp:
            health = await resp.json()
        assert resp.status == 200, health
        warnings = health["data"]["warnings"]
        assert len(warnings) == 1 and f"'openai' at http://127.0.0.1:{port} " in warnings[0]
