"""/api/asr up to the longest utterance it promises (MAX_UTTERANCE_S, 60 s), longer than
Whisper's 30 s window: streamed as LiveTalking's page streams the microphone, and as its file
mode sends a WAV file; a message over the size limit gets the protocol's error, then the close.
Piper speech, Whisper on Triton."""

from __future__ import annotations

import logging

import aiohttp
import numpy as np
import pytest
from long_speech import piper_sentences, recall, utterance
from server_fixtures import running_server, server_settings

from orchestrator.asr import MAX_UTTERANCE_S
from orchestrator.livetalking.funasr_websocket import MAX_MESSAGE_BYTES
from orchestrator.media.wav_file import wav_bytes

pytestmark = pytest.mark.timeout(300)

PAGE_CHUNK_BYTES = 960 * 2  # web/asr/main.js: 960 samples of PCM16 per message
MIN_RECALL = 0.85  # of the words said (Whisper tiny.en on Piper: a word or two may differ)


def page_config(mode: str, is_speaking: bool = True, **extra) -> dict:
    return {"chunk_size": [5, 10, 5], "wav_name": "h5", "is_speaking": is_speaking,
            "chunk_interval": 10, "itn": False, "mode": mode, **extra}


@pytest.fixture(scope="module")
async def said(triton) -> list[np.ndarray]:
    return await piper_sentences(triton.url)


@pytest.fixture(scope="module")
async def asr_server(triton):
    async with running_server(server_settings(triton)) as server:
        yield server


async def recognise(base_url: str, data: bytes, config: dict) -> list[dict]:
    """Every answer to one utterance sent in the page's chunks (the last one final)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base_url}/api/asr") as ws:
        await ws.send_json(config)
        for start in range(0, len(data), PAGE_CHUNK_BYTES):
            await ws.send_bytes(data[start:start + PAGE_CHUNK_BYTES])
        await ws.send_json(page_config(config["mode"], is_speaking=False))
        answers = []
        while not answers or not answers[-1]["is_final"]:
            answers.append(await ws.receive_json(timeout=120))
        return answers


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.parametrize("seconds", [31.0, 45.0, MAX_UTTERANCE_S])
async def test_utterances_longer_than_whispers_window_get_their_text(asr_server, said, seconds):
    base_url, _ = asr_server
    audio, sentences = utterance(said, seconds)
    answers = await recognise(base_url, pcm16(audio), page_config("2pass"))
    assert len(answers) == 1, answers  # one utterance, one answer: not cut at 30 s
    got = answers[0]
    assert got["mode"] == "2pass-offline" and got["is_final"] is True, got
    assert recall(got["text"], sentences) >= MIN_RECALL, (got["text"], sentences)
    # the words at the end came through too (the last window)
    assert recall(got["text"], sentences[-1:]) >= 0.6, (got["text"], sentences[-1])


async def test_file_mode_sends_a_45_s_wav(asr_server, said):
    """The page's file mode: the whole .wav, header included, at another rate, in chunks."""
    import scipy.signal

    base_url, _ = asr_server
    audio, sentences = utterance(said, 45.0)
    at_8k = scipy.signal.resample_poly(audio, 1, 2).astype(np.float32)
    answers = await recognise(base_url, wav_bytes(at_8k, 8000),
                              page_config("offline", wav_format="PCM", audio_fs=8000))
    assert [a["is_final"] for a in answers] == [True], answers
    assert recall(answers[0]["text"], sentences) >= MIN_RECALL, answers


async def test_a_message_over_the_limit_gets_the_error_then_the_close(asr_server, caplog):
    base_url, _ = asr_server
    caplog.set_level(logging.INFO, logger="orchestrator.livetalking.funasr_websocket")
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base_url}/api/asr") as ws:
        await ws.send_json(page_config("2pass"))
        await ws.send_bytes(bytes(MAX_MESSAGE_BYTES + 1))  # one byte over the message limit
        got = await ws.receive_json(timeout=30)
        assert got["mode"] == "error" and got["is_final"] is True and got["text"] == "", got
        assert got["code"] == 413 and str(MAX_MESSAGE_BYTES) in got["msg"], got
        closing = await ws.receive(timeout=30)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1009, closing
    assert f"asr websocket refused: a message over {MAX_MESSAGE_BYTES} bytes" in caplog.text

