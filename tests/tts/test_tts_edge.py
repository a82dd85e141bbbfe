"""`--tts edgetts` (issue 25 item 1): the edge-tts library against a local WebSocket server that
speaks Microsoft's protocol (tests/support/fake_edge_server.py), its MP3 decoded as it streams;
the endpoint replaced by --tts-server; no network: a warning, error events naming edge-tts, and
eSpeak only with --tts-fallback espeak; LiveTalking's command line end to end over WebRTC."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

import numpy as np
import pytest
from fake_edge_server import EDGE_RATE_HZ, SECONDS_PER_CHAR, TONE_HZ, FakeEdge, run_fake_edge_server
from orchestrator_process import start_orchestrator
from server_fixtures import TEST_MAX_SESSIONS, running_server
from test_tts_cloning import dominant_hz, sse_events

from orchestrator.client import AvatarClient
from orchestrator.media.audio_stream_decoding import AudioStreamDecoder
from orchestrator.settings import parse_settings
from orchestrator.tts import (
    ENGINES,
    UNSUPPORTED_TTS,
    TTSServerError,
    UnknownVoice,
    Voice,
    check_tts_server,
)
from orchestrator.tts.edge import EdgeTTSEngine

TEXT = "今天天气很好，我们一起去公园散步吧。"
SPEECH_RMS = 0.02
LIVETALKING_CHOICES = {"tts": [*ENGINES, *UNSUPPORTED_TTS]}


async def collect(engine, text: str, voice: Voice) -> tuple[list[np.ndarray], float, float]:
    """(chunks, seconds to the first, seconds to the end)."""
    start = time.perf_counter()
    chunks, first = [], None
    async for chunk in engine.synthesize(text, voice):
        first = first if first is not None else time.perf_counter() - start
        chunks.append(chunk)
    return chunks, first, time.perf_counter() - start


async def free_ws_url() -> str:
    """A ws:// URL on loopback where nothing listens (the server just left)."""
    async with run_fake_edge_server(FakeEdge()) as url:
        pass
    return url


async def test_edge_streams_its_mp3_as_it_arrives_from_the_replaced_endpoint():
    fake = FakeEdge(real_time_factor=0.5)
    async with run_fake_edge_server(fake, "/tts/edge") as url:
        engine = EdgeTTSEngine("zh-CN-YunxiaNeural", url + "?tenant=7")
        try:
            await engine.check_available()
            assert engine.health_warning is None
            await engine.check_voice(Voice())
            chunks, first, total = await collect(engine, TEXT, Voice())
            voice = Voice.named("en-US-AriaNeural", options={"rate": "+10%", "volume": "-20%",
                                                             "pitch": "+5Hz", "speed": 2})
            english, _, _ = await collect(engine, "Hello there, my friend.", voice)
            with pytest.raises(ValueError, match="tts.rate must be like"):
                await collect(engine, "x", Voice.named("en-US-AriaNeural",
                                                       options={"rate": "fast"}))
            with pytest.raises(TTSServerError, match="edge-tts.*no audio"):
                await collect(engine, "x", Voice.named("xx-YY-NobodyNeural"))
            with pytest.raises(UnknownVoice):  # eSpeak's name: another engine's
                await engine.check_voice(Voice.named("cmn"))
            assert not engine.speaks(TEXT, Voice.named("cmn"))
        finally:
            await engine.close()
    assert engine.sample_rate_hz == EDGE_RATE_HZ
    assert len(chunks) > 3, "decoded piece by piece"
    assert first < total / 2, (first, total)
    audio = np.concatenate(chunks)
    # MP3 adds its encoder delay and padding (a few frames of 1152 samples)
    assert audio.size / EDGE_RATE_HZ == pytest.approx(len(TEXT) * SECONDS_PER_CHAR, abs=0.15)
    assert dominant_hz(audio, EDGE_RATE_HZ) == pytest.approx(TONE_HZ, abs=5)
    assert np.concatenate(english).size > 0
    request, second = fake.requests[0], fake.requests[1]
    assert request["path"] == "/tts/edge" and request["query"]["tenant"] == "7"
    assert request["query"]["TrustedClientToken"] and request["query"]["Sec-MS-GEC"]
    assert (request["voice"], request["text"], request["format"]) == (
        "zh-CN-YunxiaNeural", TEXT, "audio-24khz-48kbitrate-mono-mp3")
    assert (second["voice"], second["rate"], second["volume"], second["pitch"]) == (
        "en-US-AriaNeural", "+10%", "-20%", "+5Hz")


async def test_an_interruption_closes_the_socket_and_markup_is_spoken_as_text():
    fake = FakeEdge(real_time_factor=1.0)  # as slow as speech: the answer is still coming
    async with run_fake_edge_server(fake) as url:
        engine = EdgeTTSEngine("", url)
        try:
            stream = engine.synthesize("Fish & chips <b>now</b>, " * 4, Voice())
            first = await anext(stream)
            await stream.aclose()  # what the pipeline does on /interrupt_talk
            for _ in range(100):
                if fake.closed_early:
                    break
                await asyncio.sleep(0.05)
            assert first.size and fake.closed_early == 1
        finally:
            await engine.close()
    assert fake.requests[0]["text"] == ("Fish & chips <b>now</b>, " * 4).strip()  # not markup


async def test_without_network_a_warning_and_errors_naming_edge_tts():
    url = await free_ws_url()
    engine = EdgeTTSEngine("", url)
    try:
        await engine.check_available()  # never raises: sessions are not refused for it
        assert "edge-tts" in engine.health_warning and "cannot reach" in engine.health_warning
        with pytest.raises(TTSServerError, match="'edge-tts' at 127.0.0.1:[0-9]+ failed"):
            await collect(engine, TEXT, Voice())
    finally:
        await engine.close()


def test_stream_decoder_skips_an_id3_tag_and_keeps_split_frames():
    from fake_edge_server import mp3_bytes, speech_tone

    data = mp3_bytes(speech_tone("twelve chars"))
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x05" + b"\x00" * 5  # an ID3v2 tag of 5 bytes
    decoder = AudioStreamDecoder("mp3")
    pieces = [decoder.feed(piece) for piece in (tag[:4], tag[4:] + data[:7], data[7:333],
                                                data[333:])]
    pieces.append(decoder.finish())
    audio = np.concatenate(pieces)
    assert decoder.rate_hz == EDGE_RATE_HZ and decoder.dropped_frames == 0
    assert audio.size / EDGE_RATE_HZ == pytest.approx(12 * SECONDS_PER_CHAR, abs=0.1)
    assert dominant_hz(audio, EDGE_RATE_HZ) == pytest.approx(TONE_HZ, abs=5)


def test_flags_in_livetalking_spellings():
    argv = ["--tts", "edgetts", "--REF_FILE", "zh-CN-YunxiaNeural", "--TTS_SERVER",
            "ws://127.0.0.1:9/edge?x=1"]
    settings = parse_settings(argv, choices=LIVETALKING_CHOICES)
    check_tts_server(settings)
    assert (settings.tts, settings.ref_file, settings.tts_server) == (
        "edgetts", "zh-CN-YunxiaNeural", "ws://127.0.0.1:9/edge?x=1")
    for argv, words in [(["--tts", "edgetts", "--tts-server", "http://127.0.0.1:9"], "ws://"),
                        (["--tts", "cosyvoice", "--tts-server", "ws://127.0.0.1:9"], "http://"),
                        (["--tts", "doubao"], "DOUBAO_APPID"), (["--tts", "indextts2"], "Gradio"),
                        (["--tts", "qwentts"], "DASHSCOPE_API_KEY"),
                        (["--tts", "azuretts"], "--azure-region")]:
        with pytest.raises(SystemExit, match=words):
            check_tts_server(parse_settings(argv, choices=LIVETALKING_CHOICES))


def livetalking_settings(triton, tmp_path, *argv: str):
    """LiveTalking's command line as our parser reads it, on the test's Triton and loopback."""
    settings = parse_settings(list(argv), choices=LIVETALKING_CHOICES)
    check_tts_server(settings)
    return replace(settings, triton_url=triton.url, ice_hosts=("127.0.0.1",),
                   max_sessions=TEST_MAX_SESSIONS, data_dir=tmp_path)


async def wait_for_event(events: list[dict], kind: str, timeout_s: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [e for e in events if e.get("event") == kind]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} event in {events}")


def heard(client: AvatarClient, since: float) -> np.ndarray:
    """The speech the client received after `since` (48 kHz mono, frames above SPEECH_RMS)."""
    r = client.received
    frames = [a for t, rms, a in zip(r.audio_times, r.audio_rms, r.audio)
              if t >= since and rms > SPEECH_RMS]
    return np.concatenate(frames) if frames else np.zeros(0, np.float32)


async def speak_then_lose_the_endpoint(base_url: str, fake: FakeEdge,
                                      edge: contextlib.AsyncExitStack) -> None:
    """A WebRTC session hears the fake's 220 Hz voice for TEXT; once the endpoint is gone (the
    `edge` stack closed), the next utterance ends with an error event naming edge-tts and the
    session is not refused."""
    client = AvatarClient(base_url, keep_video=False)
    events: list[dict] = []
    reader = None
    try:
        await client.connect()
        reader = asyncio.create_task(sse_events(base_url, client.sessionid, events))
        await client.wait_for_video(5, timeout=30)
        sent = time.monotonic()
        status, answer = await client.post("/human", type="echo", text=TEXT)
        assert status == 200, answer
        await client.wait_for_speech(sent, SPEECH_RMS, timeout=15)
        await wait_for_event(events, "end", 20)
        audio = heard(client, sent)
        assert audio.size > 0.5 * 48000, audio.size / 48000
        assert dominant_hz(audio, 48000) == pytest.approx(TONE_HZ, abs=15)
        assert (fake.requests[-1]["voice"], fake.requests[-1]["text"]) == (
            "zh-CN-YunxiaNeural", TEXT)
        assert not [e for e in events if e.get("event") == "error"], events

        await edge.aclose()  # the endpoint goes away (no network)
        status, answer = await client.post("/human", type="echo", text="你好。")
        assert status == 200, answer
        error = await wait_for_event(events, "error", 15)
        assert "edge-tts" in error["msg"], error
    finally:
        if reader is not None:
            reader.cancel()
        await client.close()


async def test_livetalking_command_line_speaks_through_the_edge_server(triton, tmp_path):
    """`python -m orchestrator --tts edgetts --REF_FILE zh-CN-YunxiaNeural --TTS_SERVER ws://...`
    (LiveTalking's spellings) as its own process: it starts, logs its voice, and speaks; then the
    endpoint goes away (measured: 13 s on 2 busy cores, the process's start included)."""
    fake = FakeEdge(real_time_factor=0.5)
    async with contextlib.AsyncExitStack() as edge:
        url = await edge.enter_async_context(run_fake_edge_server(fake))
        server = await start_orchestrator(
            tmp_path / "server.log", "--transport", "webrtc", "--tts", "edgetts", "--REF_FILE",
            "zh-CN-YunxiaNeural", "--TTS_SERVER", url, "--max_session", "2",
            # ours: the test session's Triton, no microphone models, a busy machine's setup time
            "--triton-url", triton.url, "--no-voice-input", "--setup-timeout", "60")
        try:
            assert "tts: edgetts (edge-tts, voice zh-CN-YunxiaNeural)" in server.log_tail(20000)
            await speak_then_lose_the_endpoint(server.base_url, fake, edge)
        finally:
            server.process.terminate()
            try:
                await server.wait_exit()
            finally:
                server.kill()


async def test_espeak_speaks_only_when_asked_for_as_the_fallback(triton, tmp_path):
    """Without the endpoint: `--tts-fallback espeak` has eSpeak say the sentence (speech arrives,
    no error event); the default (none) is covered above (an error event naming edge-tts)."""
    url = await free_ws_url()
    settings = livetalking_settings(triton, tmp_path, "--tts", "edgetts", "--TTS_SERVER", url,
                                    "--tts-fallback", "espeak")
    async with running_server(settings) as (base_url, services):
        assert any("edge-tts" in w for w in services.tts.warnings()), services.tts.warnings()
        client = AvatarClient(base_url, keep_video=False)
        events: list[dict] = []
        reader = None
        try:
            await client.connect()
            reader = asyncio.create_task(sse_events(base_url, client.sessionid, events))
            await client.wait_for_video(5)
            sent = time.monotonic()
            status, answer = await client.post("/human", type="echo", text="你好，世界。")
            assert status == 200, answer
            await client.wait_for_speech(sent, SPEECH_RMS, timeout=15)
            await wait_for_event(events, "end", 20)
            assert not [e for e in events if e.get("event") == "error"], events
        finally:
            if reader is not None:
                reader.cancel()
            await client.close()
