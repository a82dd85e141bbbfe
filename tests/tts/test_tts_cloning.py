"""Voice-cloning engines over HTTP (cosyvoice, gpt-sovits, fishtts, openai) against fake servers
that speak each real protocol (tests/support/fake_voice_servers.py); reference voices (POST/GET
/voices); streamed TTS reaching the client before the sentence is synthesised; server failures
as `error` events and 503s."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from dataclasses import replace

import aiohttp
import numpy as np
import pytest
from fake_voice_servers import (
    COSYVOICE_RATE_HZ,
    FISH_RATE_HZ,
    GPT_SOVITS_RATE_HZ,
    OPENAI_RATE_HZ,
    FakeVoice,
    run_fake_voice_server,
    tone_wav,
)
from server_fixtures import refused_offer, running_server, server_settings

from orchestrator.client import AvatarClient
from orchestrator.settings import Settings, parse_settings
from orchestrator.speech.features import SentenceFeatures
from orchestrator.tts import ENGINES, TTSServerError, TTSServerUnavailable, Voice
from orchestrator.tts.http_audio import PCMDecoder
from orchestrator.tts.reference_voices import VoiceStore

REFERENCE_HZ = 330.0
RATES = {"cosyvoice": COSYVOICE_RATE_HZ, "gpt-sovits": GPT_SOVITS_RATE_HZ,
         "fishtts": FISH_RATE_HZ, "openai": OPENAI_RATE_HZ}
SPEECH_RMS = 0.02


def dominant_hz(audio: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / rate_hz)[spectrum.argmax()])


def register(data_dir, name="anna", text="Hello, this is my voice.") -> None:
    pcm = np.frombuffer(tone_wav(2.0, 16000, REFERENCE_HZ)[44:], "<i2").astype(np.float32) / 32768
    VoiceStore(data_dir).add(name, pcm, text)


async def open_engine(name: str, url: str, data_dir, **changes):
    settings = replace(Settings(), tts=name, tts_server=url, data_dir=data_dir, **changes)
    return await ENGINES[name][0](settings, "unused:8001")


async def collect(engine, text: str, voice: Voice) -> tuple[list[np.ndarray], float, float]:
    """(chunks, seconds to the first, seconds to the end)."""
    start = time.perf_counter()
    chunks, first = [], None
    async for chunk in engine.synthesize(text, voice):
        first = first if first is not None else time.perf_counter() - start
        chunks.append(chunk)
    return chunks, first, time.perf_counter() - start


TEXT = "The quick brown fox jumps over the lazy dog, and then it rests for a while."


@pytest.mark.parametrize("name", ["cosyvoice", "gpt-sovits", "fishtts"])
async def test_cloning_engine_sends_the_reference_and_streams_its_voice(name, tmp_path):
    register(tmp_path)
    fake = FakeVoice(real_time_factor=0.5)
    async with run_fake_voice_server(name, fake) as url:
        engine = await open_engine(name, url, tmp_path)
        try:
            await engine.check_available()
            voice = Voice.named("anna")  # the transcript comes from the registration
            await engine.check_voice(voice)
            chunks, first, total = await collect(engine, TEXT, voice)
        finally:
            await engine.close()
    assert engine.sample_rate_hz == RATES[name]
    assert len(chunks) > 3, "the answer is consumed chunk by chunk"
    assert first < total / 2, (first, total)
    audio = np.concatenate(chunks)
    assert audio.size / engine.sample_rate_hz == pytest.approx(len(TEXT) * 0.06, rel=0.05)
    assert dominant_hz(audio, engine.sample_rate_hz) == pytest.approx(REFERENCE_HZ, abs=5)
    request = fake.requests[-1]
    if name == "cosyvoice":
        assert request["route"] == "/inference_zero_shot"
        assert request["tts_text"] == TEXT and request["prompt_text"] == "Hello, this is my voice."
        assert request["prompt_wav_bytes"] > 60000
    elif name == "gpt-sovits":
        assert request["ref_audio_path"].endswith("/voices/anna.wav")
        assert (request["text_lang"], request["prompt_lang"]) == ("en", "en")
        assert request["prompt_text"] == "Hello, this is my voice."
        assert request["streaming_mode"] is True and request["media_type"] == "wav"
    else:
        assert request["content_type"] == "application/msgpack"
        # the 2 s clip stored at 16 kHz, sent at Fish-Speech's 44.1 kHz
        assert request["references"] == [{"text": "Hello, this is my voice.",
                                          "audio_bytes": 176444, "rate_hz": 44100}]
        assert request["streaming"] is True and request["format"] == "wav"


async def test_server_side_voices_and_tts_options(tmp_path):
    fake = FakeVoice()
    async with run_fake_voice_server("openai", fake) as url:
        engine = await open_engine("openai", url, tmp_path, tts_api_key="k3y")
        try:
            chunks, _, _ = await collect(engine, "Hi there, friend.", Voice())  # --tts-voice: alloy
            assert engine.sample_rate_hz == OPENAI_RATE_HZ and len(chunks) >= 1
            voice = Voice.named("alloy", options={"speed": 1.5, "instructions": "calm",
                                                  "response_format": "wav", "ignored": 1})
            chunks, _, _ = await collect(engine, "Hello again.", voice)
            assert np.concatenate(chunks).size == pytest.approx(0.72 * OPENAI_RATE_HZ, rel=0.01)
            with pytest.raises(ValueError, match="tts.speed"):
                await collect(engine, "x", Voice.named("alloy", options={"speed": "fast"}))
            with pytest.raises(TTSServerError, match="HTTP 400.*voice nobody not found"):
                await collect(engine, "x", Voice.named("nobody"))
        finally:
            await engine.close()
    first, second = fake.requests[0], fake.requests[1]
    assert first == {"model": "tts-1", "input": "Hi there, friend.", "voice": "alloy",
                     "response_format": "pcm", "authorization": "Bearer k3y"}
    assert (second["speed"], second["instructions"], second["response_format"]) == (1.5, "calm", "wav")
    assert "ignored" not in second

    fake = FakeVoice()
    async with run_fake_voice_server("cosyvoice", fake) as url:  # a built-in speaker: sft
        engine = await open_engine("cosyvoice", url, tmp_path)
        try:
            await collect(engine, "你好。", Voice.named("中文女"))
            await collect(engine, "你好。", Voice.named("中文女", options={"instruct_text": "slowly"}))
        finally:
            await engine.close()
    assert [r["route"] for r in fake.requests] == ["/inference_sft", "/inference_instruct"]
    assert fake.requests[0]["spk_id"] == "中文女"

    register(tmp_path, "bob", text="")  # no transcript: cross-lingual cloning
    fake = FakeVoice()
    async with run_fake_voice_server("cosyvoice", fake) as url:
        engine = await open_engine("cosyvoice", url, tmp_path)
        try:
            await collect(engine, "Hello.", Voice.named("bob"))
            assert not engine.speaks("Hello.", Voice()), "no reference: eSpeak says it"
        finally:
            await engine.close()
    assert fake.requests[0]["route"] == "/inference_cross_lingual"

    fake = FakeVoice()
    register(tmp_path)
    mounted = tmp_path / "mnt"  # the folder as the GPT-SoVITS machine would see it
    mounted.symlink_to(tmp_path / "voices")
    async with run_fake_voice_server("gpt-sovits", fake) as url:
        engine = await open_engine("gpt-sovits", url, tmp_path, tts_ref_dir=str(mounted))
        try:
            voice = Voice.named("anna", "你好，这是我的声音。", {"speed": 1.2, "top_k": 5})
            await collect(engine, "今天天气很好。", voice)
        finally:
            await engine.close()
    request = fake.requests[0]
    assert request["ref_audio_path"] == f"{mounted}/anna.wav"
    assert (request["text_lang"], request["prompt_lang"], request["speed_factor"],
            request["top_k"]) == ("zh", "zh", 1.2, 5)


@pytest.mark.parametrize("fail", ["status", "html", "cut", "garbage"])
async def test_server_failures_are_tts_server_errors(fail, tmp_path):
    register(tmp_path)
    fake = FakeVoice(fail=fail)
    async with run_fake_voice_server("fishtts", fake) as url:
        engine = await open_engine("fishtts", url, tmp_path)
        try:
            with pytest.raises(TTSServerError):
                await collect(engine, TEXT, Voice.named("anna"))
        finally:
            await engine.close()


async def test_our_paths_never_reach_an_error_event(tmp_path):
    register(tmp_path, "bob")
    fake = FakeVoice()
    async with run_fake_voice_server("gpt-sovits", fake) as url:
        engine = await open_engine("gpt-sovits", url, tmp_path)
        engine.ref_dir = str(tmp_path / "voices" / "gone")  # the server does not have it
        try:
            with pytest.raises(TTSServerError) as failure:
                await collect(engine, "Hello.", Voice.named("bob"))
        finally:
            await engine.close()
    assert str(tmp_path) in fake.requests[0]["ref_audio_path"]
    assert str(tmp_path) not in str(failure.value)


async def test_a_server_that_is_down(tmp_path):
    async with run_fake_voice_server("gpt-sovits", FakeVoice()) as url:
        pass  # the port is free again
    engine = await open_engine("gpt-sovits", url, tmp_path)
    try:
        with pytest.raises(TTSServerUnavailable, match=f"'gpt-sovits' at {url} is unreachable"):
            await engine.check_available()
        with pytest.raises(TTSServerError, match="gpt-sovits"):
            await collect(engine, "Hello.", Voice.named("anna"))
    finally:
        await engine.close()


def test_pcm_decoder_reads_a_header_split_over_chunks():
    header = io.BytesIO()
    with wave.open(header, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(22050)
    samples = (np.arange(-500, 500) * 30).astype("<i2")
    data = header.getvalue() + samples.tobytes()
    decoder = PCMDecoder(44100, wav=True)
    out = [decoder.feed(data[i : i + 7]) for i in range(0, len(data), 7)]
    decoder.finish()
    assert decoder.rate_hz == 22050
    np.testing.assert_array_equal(np.concatenate(out), samples / 32768)


def test_streamed_features_equal_the_whole_sentence():
    rng = np.random.default_rng(1)
    audio = (0.3 * rng.standard_normal(int(2.3 * 24000))).astype(np.float32)
    audio[int(0.8 * 24000) : int(1.5 * 24000)] = 0.0  # a pause: silent frames in the middle
    whole = SentenceFeatures(24000)
    whole.add(audio)
    all_audio, all_windows, all_silent = whole.take(final=True)
    streamed = SentenceFeatures(24000)
    pieces_audio, pieces_windows, pieces_silent = [], [], []
    for start in range(0, audio.size, 2400):
        streamed.add(audio[start : start + 2400])
        if streamed.ready():
            a, w, s = streamed.take(final=False)
            pieces_audio.append(a)
            pieces_windows.append(w)
            pieces_silent.append(s)
    a, w, s = streamed.take(final=True)
    pieces_audio.append(a)
    pieces_windows.append(w)
    pieces_silent.append(s)
    assert sum(1 for p in pieces_audio if p.size) > 3, "frames leave before the sentence ends"
    np.testing.assert_allclose(np.concatenate(pieces_audio), all_audio, atol=1e-4)
    np.testing.assert_allclose(np.concatenate(pieces_windows), all_windows, atol=1e-3)
    np.testing.assert_array_equal(np.concatenate(pieces_silent), all_silent)
    assert 0 < all_silent.sum() < all_silent.size


def test_flags():
    settings = parse_settings(["--tts", "gpt-sovits", "--tts-server", "http://10.0.0.5:9880",
                               "--tts-ref-dir", "/srv/voices", "--tts-sample-rate", "22050"])
    assert (settings.tts, settings.tts_server, settings.tts_ref_dir,
            settings.tts_sample_rate_hz) == ("gpt-sovits", "http://10.0.0.5:9880", "/srv/voices",
                                             22050)
    with pytest.raises(SystemExit):
        parse_settings(["--tts", "cosyvoice", "--tts-server", "file:///etc/passwd"])


async def post_voice(base_url: str, fields: dict, file: bytes | None,
                     filename: str = "ref.wav") -> tuple[int, dict]:
    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, value)
    if file is not None:
        form.add_field("file", file, filename=filename, content_type="audio/wav")
    async with aiohttp.ClientSession() as http, http.post(f"{base_url}/voices", data=form) as resp:
        return resp.status, await resp.json()


async def sse_events(base_url: str, sessionid: int, into: list[dict]) -> None:
    import json

    async with aiohttp.ClientSession() as http, http.get(
            f"{base_url}/sse", params={"sessionid": str(sessionid)}) as resp:
        async for line in resp.content:
            if line.startswith(b"data: "):
                into.append(json.loads(line[6:]))


async def test_cosyvoice_end_to_end_with_a_registered_voice(triton, tmp_path):
    fake = FakeVoice(real_time_factor=1.0)  # as slow as speech: only streaming is early
    async with run_fake_voice_server("cosyvoice", fake) as url:
        settings = server_settings(triton, tts="cosyvoice", tts_server=url, data_dir=tmp_path)
        async with running_server(settings) as (base_url, _services):
            # registration: checked, stored, listed
            status, answer = await post_voice(base_url, {"name": "../x", "text": "t"}, tone_wav())
            assert status == 400 and "field 'name'" in answer["msg"]
            status, answer = await post_voice(base_url, {"name": "anna"}, b"not audio at all")
            assert status == 400 and "field 'file'" in answer["msg"]
            status, answer = await post_voice(base_url, {"name": "anna"}, tone_wav(0.3))
            assert status == 400 and "0.3 s" in answer["msg"]
            status, answer = await post_voice(
                base_url, {"name": "anna", "text": "Hello, this is my voice."},
                tone_wav(2.0, 44100, REFERENCE_HZ))
            assert status == 200, answer
            assert answer["data"] == {"name": "anna", "text": "Hello, this is my voice.",
                                      "seconds": 2.0}
            assert (tmp_path / "voices" / "anna.wav").is_file()
            async with aiohttp.ClientSession() as http, http.get(f"{base_url}/voices") as resp:
                listed = (await resp.json())["data"]
            assert listed == {"voices": [{"name": "anna", "text": "Hello, this is my voice.",
                                          "seconds": 2.0}], "engine": "cosyvoice"}

            client = AvatarClient(base_url, keep_video=False)
            events: list[dict] = []
            try:
                await client.connect(refaudio="anna")
                reader = asyncio.create_task(sse_events(base_url, client.sessionid, events))
                await client.wait_for_video(5)
                sent = time.monotonic()
                status, answer = await client.post("/human", type="echo", text=TEXT)
                assert status == 200, answer
                first = await client.wait_for_speech(sent, SPEECH_RMS)
                # the fake needs ~4.5 s of wall time for this sentence (real-time factor 1);
                # measured 0.40-0.44 s to the first speech audio
                assert first - sent < 1.5, first - sent
                assert fake.requests[-1]["route"] == "/inference_zero_shot"
                assert fake.requests[-1]["prompt_text"] == "Hello, this is my voice."

                # a per-utterance override; a failing server ends the utterance with an error
                fake.fail = "status"
                status, answer = await client.post(
                    "/human", type="echo", text="This one fails.", interrupt=True,
                    tts={"ref_file": "anna", "ref_text": "Other words."})
                assert status == 200, answer
                for _ in range(200):
                    if any(e.get("event") == "error" for e in events):
                        break
                    await asyncio.sleep(0.05)
                errors = [e for e in events if e.get("event") == "error"]
                assert errors and "HTTP 500" in errors[0]["msg"], events
                assert fake.requests[-1]["prompt_text"] == "Other words."
                fake.fail = ""
                status, _ = await client.post("/human", type="echo", text="Back again.")
                assert status == 200
                await client.wait_for_speech(time.monotonic(), SPEECH_RMS)
                reader.cancel()
            finally:
                await client.close()
    # the server is gone now: a new session is refused with a 503 naming it
    settings = server_settings(triton, tts="cosyvoice", tts_server=url, data_dir=tmp_path)
    async with running_server(settings) as (base_url, _services):
        message = await refused_offer(base_url, refaudio="anna")
        assert "503" in message and f"'cosyvoice' at {url}" in message, message


# --- reference clips: their own rate, and a level check (issue 22) ----------------------------
def wav_clip(channels: list[np.ndarray], rate_hz: int) -> bytes:
    """float channels (full scale 1.0) as a 16-bit WAV file."""
    pcm = np.round(np.clip(np.stack(channels, axis=1), -1, 1) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


def speechlike(seconds: float, rate_hz: int, level: float = 0.3) -> np.ndarray:
    """A buzz with a syllable envelope, plus a 10 kHz component (above what 16 kHz keeps)."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0.2, None)
    buzz = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 700, 1100), 1))
    high = 0.5 * np.sin(2 * np.pi * 10000 * t) if rate_hz > 20000 else 0
    return level * envelope * (buzz / 2.1 + high) / 1.5


def band_level(audio: np.ndarray, rate_hz: int, low_hz: float, high_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / rate_hz)
    return float(spectrum[(freqs >= low_hz) & (freqs < high_hz)].sum() / spectrum.sum())


async def test_reference_clips_are_checked_for_silence_and_kept_at_their_own_rate(triton,
                                                                                  tmp_path):
    """A silent clip, a near-silent one and a stereo one whose channels cancel when averaged were
    accepted as voices; a 48 kHz clip was stored at 16 kHz (nothing above 8 kHz left)."""
    rate = 48000
    voice = speechlike(2.0, rate)
    clips = {
        "silent.wav": (wav_clip([np.zeros(2 * rate)], rate), "silent"),
        "hiss.wav": (wav_clip([np.random.default_rng(1).normal(0, 10**(-65 / 20), 2 * rate)],
                              rate), "near-silent"),
        "cancel.wav": (wav_clip([voice, -voice], rate), "cancel out"),
        "quiet-stereo.wav": (wav_clip([voice * 0.03, np.zeros(voice.size)], rate), "near-silent"),
    }
    async with run_fake_voice_server("cosyvoice", FakeVoice()) as url, running_server(
            server_settings(triton, tts="cosyvoice", tts_server=url, data_dir=tmp_path),
    ) as (base_url, _services):
        for filename, (data, words) in clips.items():
            status, answer = await post_voice(base_url, {"name": "bad", "text": "t"}, data,
                                              filename)
            assert status == 400, (filename, answer)
            assert f"field 'file' ({filename!r})" in answer["msg"] and words in answer["msg"], \
                answer
        assert not (tmp_path / "voices" / "bad.wav").exists()
        # neighbours that are voices: quiet speech (-31 dBFS), one channel of a stereo pair,
        # a 48 kHz clip (kept at 48 kHz), an 8 kHz one (kept at 8 kHz)
        for name, data in {"quiet": wav_clip([voice * 0.5], rate),
                           "left": wav_clip([voice, np.zeros(voice.size)], rate),
                           "wide": wav_clip([voice], rate),
                           "phone": wav_clip([speechlike(2.0, 8000)], 8000)}.items():
            status, answer = await post_voice(base_url, {"name": name, "text": "t"}, data)
            assert status == 200, (name, answer)
    with wave.open(str(tmp_path / "voices" / "wide.wav"), "rb") as w:
        assert (w.getframerate(), w.getnchannels()) == (48000, 1)
        stored = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768
    assert band_level(stored, 48000, 9000, 11000) > 0.1  # the 10 kHz part is kept
    with wave.open(str(tmp_path / "voices" / "phone.wav"), "rb") as w:
        assert w.getframerate() == 8000

    # each engine gets the clip at the rate its server reads
    for engine_name, expected_hz in (("cosyvoice", 16000), ("fishtts", 44100)):
        for name in ("wide", "phone"):
            fake = FakeVoice()
            async with run_fake_voice_server(engine_name, fake) as url:
                engine = await open_engine(engine_name, url, tmp_path)
                try:
                    chunks, _, _ = await collect(engine, "Hello.", Voice.named(name))
                finally:
                    await engine.close()
            assert chunks, (engine_name, name)
            request = fake.requests[-1]
            sent_hz = (request["prompt_wav_rate_hz"] if engine_name == "cosyvoice"
                       else request["references"][0]["rate_hz"])
            assert sent_hz == expected_hz, (engine_name, name, sent_hz)
