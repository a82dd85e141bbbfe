"""/api/asr speaks FunASR's WebSocket protocol on our ASR: exactly what LiveTalking's
web/asr/main.js and wsconnecter.js send (a JSON configuration, 960-sample PCM16 chunks at 16 kHz,
then `is_speaking: false`), Piper speech transcribed by Whisper on Triton."""

from __future__ import annotations

import re

import aiohttp
import numpy as np
import pytest
from piper_speech import TEST_VOICE
from server_fixtures import running_server, server_settings

from orchestrator.media.wav_file import INT16_FULL_SCALE, wav_bytes
from orchestrator.tts import PiperEngine, synthesize_all

QUESTION = "How many sessions can run at once?"
PAGE_CHUNK_SAMPLES = 960  # main.js: `var chunk_size=960; // for asr chunk_size [5, 10, 5]`
RATE_16K = 16000


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def page_config(mode: str, is_speaking: bool = True, **extra) -> dict:
    return {"chunk_size": [5, 10, 5], "wav_name": "h5", "is_speaking": is_speaking,
            "chunk_interval": 10, "itn": False, "mode": mode, **extra}


@pytest.fixture(scope="module")
async def question_pcm16(triton) -> bytes:
    import scipy.signal

    piper = await PiperEngine.open(triton.url)
    try:
        audio = await synthesize_all(piper, QUESTION, TEST_VOICE)
        rate = piper.sample_rate_hz
    finally:
        await piper.close()
    g = np.gcd(rate, RATE_16K)
    audio = scipy.signal.resample_poly(audio, RATE_16K // g, rate // g)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
async def asr_server(triton):
    async with running_server(server_settings(triton)) as server:
        yield server


async def recognise(base_url: str, mode: str, pcm: bytes, config: dict | None = None) -> dict:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base_url}/api/asr") as ws:
        await ws.send_json(config or page_config(mode))
        step = PAGE_CHUNK_SAMPLES * 2
        for start in range(0, len(pcm), step):
            await ws.send_bytes(pcm[start:start + step])
        await ws.send_json(page_config(mode, is_speaking=False))
        return await ws.receive_json(timeout=60)


@pytest.mark.parametrize("mode,answer_mode", [("2pass", "2pass-offline"), ("offline", "offline"),
                                              ("online", "online")])
async def test_page_speech_gets_a_final_text(asr_server, question_pcm16, mode, answer_mode):
    base_url, _ = asr_server
    got = await recognise(base_url, mode, question_pcm16)
    assert got["mode"] == answer_mode and got["wav_name"] == "h5" and got["is_final"] is True
    assert words(got["text"]) == words(QUESTION), got


async def test_file_mode_wav_at_another_rate(asr_server, question_pcm16):
    """The page's file mode: the whole .wav (header included), wav_format "PCM", audio_fs."""
    import scipy.signal

    samples = np.frombuffer(question_pcm16, "<i2").astype(np.float32)
    at_8k = scipy.signal.resample_poly(samples, 1, 2) / INT16_FULL_SCALE
    base_url, _ = asr_server
    got = await recognise(base_url, "offline", wav_bytes(at_8k, 8000),
                          page_config("offline", wav_format="PCM", audio_fs=8000))
    assert got["mode"] == "offline" and got["is_final"] is True
    assert words(got["text"]) == words(QUESTION), got


@pytest.mark.parametrize("first", [b"not json", "{", "[1, 2]", '"x"',
                                   '{"mode": "nonsense"}', '{"audio_fs": "fast"}',
                                   '{"wav_format": "mp3"}', '{"is_speaking": "yes"}',
                                   '{"wav_name": 5}'])
async def test_malformed_first_message_gets_an_error_and_close(asr_server, first):
    base_url, _ = asr_server
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base_url}/api/asr") as ws:
        if isinstance(first, bytes):
            await ws.send_bytes(first)
        else:
            await ws.send_str(first)
        got = await ws.receive_json(timeout=5)
        assert got["code"] != 0 and got["msg"] and got["is_final"] is True and got["text"] == ""
        closing = await ws.receive(timeout=5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/api/asr") as resp:
        got = await resp.json()
        assert resp.status == 400 and got["code"] != 0 and "WebSocket" in got["msg"]


async def test_silence_gives_no_text_and_a_big_message_is_refused(asr_server):
    base_url, _ = asr_server
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base_url}/api/asr") as ws:
        await ws.send_json(page_config("2pass"))
        await ws.send_bytes(bytes(RATE_16K * 2))
        await ws.send_json(page_config("2pass", is_speaking=False))
        await ws.send_bytes(bytes(1 << 20))  # over the message limit: said why, then closed
        refused = await ws.receive_json(timeout=30)
        assert refused["mode"] == "error" and refused["code"] == 413, refused
        closing = await ws.receive(timeout=30)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing


async def test_without_voice_input_asr_answers_not_configured(triton):
    async with running_server(server_settings(triton, voice_input=False)) as (base_url, _), \
            aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/api/asr") as resp:
            got = await resp.json()
            assert resp.status == 404 and got["code"] == 404 and "not configured" in got["msg"]
        async with http.ws_connect(f"{base_url}/api/asr") as ws:
            await ws.send_json(page_config("2pass"))
            message = await ws.receive_json(timeout=5)
            assert message["code"] != 0 and "not configured" in message["msg"]
            assert message["is_final"] is True and message["text"] == ""
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
