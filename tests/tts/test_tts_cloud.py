"""LiveTalking's other engines whose protocol is public (issue 25 item 2): `azuretts` (Azure
Speech REST), `omnitts` (vLLM-Omni's /v1/audio/speech: the rate read from the answer) and `xtts`
(Coqui's xtts-streaming-server) `tencent` (Tencent Cloud's signed streaming API), `doubao` (Volcengine's binary WebSocket) and
`qwentts` (DashScope's Qwen-TTS Realtime events), each against a fake server speaking its protocol
(tests/support/fake_voice_servers.py); and reference clips (item 5): uploads at 8-48 kHz, mono
or stereo, reach every cloning engine's server at the rate it reads, mono, as long as they were
and at their pitch (not sped up or slowed down)."""

from __future__ import annotations

import asyncio
import io
import wave
from dataclasses import replace

import numpy as np
import pytest
from fake_doubao_server import DOUBAO_APP_ID, DOUBAO_TOKEN, FakeDoubao, run_fake_doubao_server
from fake_qwen_realtime_server import QWEN_KEY, FakeQwen, run_fake_qwen_server
from fake_voice_servers import (
    AZURE_KEY,
    TENCENT_APP_ID,
    TENCENT_SECRET_ID,
    TENCENT_SECRET_KEY,
    FakeVoice,
    run_fake_voice_server,
)
from test_tts_cloning import dominant_hz

from orchestrator.media.audio_decoding import decode_clip
from orchestrator.settings import Settings, parse_settings
from orchestrator.tts import ENGINES, TTSServerError, UnknownVoice, Voice
from orchestrator.tts.reference_voices import MAX_REFERENCE_RATE_HZ, MAX_REFERENCE_S, VoiceStore

CHINESE = "今天天气很好，我们去散步吧。"
ENGLISH = "The weather is fine today, let us take a walk."
REFERENCE_TONE_HZ = 440.0
REFERENCE_S = 2.0


async def open_engine(name: str, url: str, data_dir, **changes):
    settings = replace(Settings(), tts=name, tts_server=url, data_dir=data_dir, **changes)
    return await ENGINES[name].open(settings, "unused:8001")


async def collect(engine, text: str, voice: Voice) -> np.ndarray:
    chunks = [c async for c in engine.synthesize(text, voice)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def clip_wav(rate_hz: int, channels: int, seconds: float = REFERENCE_S) -> bytes:
    """A tone at REFERENCE_TONE_HZ as an uploaded WAV file (stereo: the right channel quieter)."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    tone = 0.5 * np.sin(2 * np.pi * REFERENCE_TONE_HZ * t)
    planes = [tone, 0.5 * tone][:channels]
    pcm = np.round(np.stack(planes, axis=1) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


def register_upload(data_dir, name: str, data: bytes, text: str = "Hello, this is my voice.") -> None:
    """What POST /voices does with an upload (http/voice_api.py): decode at its own rate, store."""
    clip = decode_clip(data, "file", MAX_REFERENCE_RATE_HZ, MAX_REFERENCE_S)
    VoiceStore(data_dir).add(name, clip.audio, text, clip.rate_hz)


# --- azuretts ----------------------------------------------------------------------------------
async def test_azure_speaks_ssml_with_its_key_and_reads_the_rate_from_the_riff_header(tmp_path):
    fake = FakeVoice(real_time_factor=0.5)
    async with run_fake_voice_server("azuretts", fake) as url:
        engine = await open_engine("azuretts", url, tmp_path, tts_api_key=AZURE_KEY)
        try:
            await engine.check_available()
            await engine.check_voice(Voice())
            chunks = [c async for c in engine.synthesize(CHINESE, Voice())]
            assert len(chunks) > 3, "streamed chunk by chunk"
            assert engine.sample_rate_hz == 24000
            voice = Voice.named("en-US-AriaNeural", options={
                "rate": "+10%", "pitch": "-2st", "style": "cheerful", "speed": 3})
            audio = await collect(engine, "Fish & chips <now>.", voice)
            assert audio.size / 24000 == pytest.approx(len("Fish & chips <now>.") * 0.06, rel=0.05)
            with pytest.raises(UnknownVoice):
                await engine.check_voice(Voice.named("anna"))  # not a Microsoft voice
            with pytest.raises(TTSServerError, match="HTTP 400.*not found"):
                await collect(engine, "x", Voice.named("en-US-NobodyNeural"))
        finally:
            await engine.close()
        engine = await open_engine("azuretts", url, tmp_path, tts_api_key="wrong")
        try:
            with pytest.raises(TTSServerError, match="HTTP 401"):
                await collect(engine, "x", Voice())
        finally:
            await engine.close()
    first, second = fake.requests[0], fake.requests[1]
    assert (first["voice"], first["lang"], first["text"], first["format"]) == (
        "zh-CN-XiaoxiaoMultilingualNeural", "zh-CN", CHINESE, "riff-24khz-16bit-mono-pcm")
    assert (second["voice"], second["lang"], second["text"]) == (
        "en-US-AriaNeural", "en-US", "Fish & chips <now>.")
    assert second["prosody"] == {"rate": "+10%", "pitch": "-2st"}
    assert second["style"] == "cheerful"


def test_azure_settings_as_livetalking_reads_them(monkeypatch):
    monkeypatch.setenv("AZURE_SPEECH_KEY", "k")
    monkeypatch.setenv("AZURE_TTS_REGION", "eastasia")
    settings = parse_settings(["--tts", "azuretts", "--REF_FILE", "zh-CN-YunxiNeural"],
                              choices={"tts": list(ENGINES)})
    assert (settings.azure_region, settings.azure_speech_key) == ("eastasia", "k")
    from orchestrator.tts import check_tts_server
    from orchestrator.tts.azure import azure_base_url

    check_tts_server(settings)
    assert azure_base_url(settings.azure_region) == "https://eastasia.tts.speech.microsoft.com"
    monkeypatch.delenv("AZURE_SPEECH_KEY")
    with pytest.raises(SystemExit, match="AZURE_SPEECH_KEY"):
        check_tts_server(parse_settings(["--tts", "azuretts"], choices={"tts": list(ENGINES)}))


# --- tencent -----------------------------------------------------------------------------------
async def test_tencent_signs_its_request_and_streams_pcm(tmp_path):
    fake = FakeVoice(real_time_factor=0.5)
    credentials = {"tencent_app_id": str(TENCENT_APP_ID), "tencent_secret_id": TENCENT_SECRET_ID,
                   "tencent_secret_key": TENCENT_SECRET_KEY}
    async with run_fake_voice_server("tencent", fake) as url:
        engine = await open_engine("tencent", url, tmp_path, **credentials)
        try:
            await engine.check_voice(Voice())
            chunks = [c async for c in engine.synthesize(CHINESE, Voice())]
            assert len(chunks) > 3 and engine.sample_rate_hz == 16000
            audio = np.concatenate(chunks)
            assert audio.size / 16000 == pytest.approx(len(CHINESE) * 0.06, rel=0.02)
            await collect(engine, "Hello.", Voice.named("101002", options={"speed": 1,
                                                                          "volume": -2}))
            with pytest.raises(UnknownVoice):
                await engine.check_voice(Voice.named("zh-CN-YunxiaNeural"))
            with pytest.raises(TTSServerError, match="VoiceType not found"):
                await collect(engine, "x", Voice.named("999"))
        finally:
            await engine.close()
        engine = await open_engine("tencent", url, tmp_path,
                                   **{**credentials, "tencent_secret_key": "wrong"})
        try:
            with pytest.raises(TTSServerError, match="SignatureFailure"):
                await collect(engine, "x", Voice())
        finally:
            await engine.close()
    first, second = fake.requests[0], fake.requests[1]
    assert (first["VoiceType"], first["Text"], first["Codec"], first["SampleRate"]) == (
        101001, CHINESE, "pcm", 16000)
    assert (second["VoiceType"], second["Speed"], second["Volume"]) == (101002, 1, -2)


# --- doubao ------------------------------------------------------------------------------------
async def test_doubao_speaks_its_binary_protocol(tmp_path):
    fake = FakeDoubao(real_time_factor=0.5)
    async with run_fake_doubao_server(fake) as url:
        engine = await open_engine("doubao", url, tmp_path, doubao_app_id=DOUBAO_APP_ID,
                                   doubao_token=DOUBAO_TOKEN, ref_file="BV001_streaming")
        try:
            await engine.check_voice(Voice())
            chunks = [c async for c in engine.synthesize(CHINESE, Voice())]
            assert len(chunks) > 3 and engine.sample_rate_hz == 16000
            assert np.concatenate(chunks).size / 16000 == pytest.approx(len(CHINESE) * 0.06,
                                                                        rel=0.02)
            await collect(engine, "Hi.", Voice.named("zh_female_cancan_mars_bigtts",
                                                     options={"speed": 1.2}))
            with pytest.raises(UnknownVoice):
                await engine.check_voice(Voice.named("cmn"))  # eSpeak's
            with pytest.raises(TTSServerError, match="error 3001: .*not granted"):
                await collect(engine, "x", Voice.named("BV999_streaming"))
        finally:
            await engine.close()
        engine = await open_engine("doubao", url, tmp_path, doubao_app_id=DOUBAO_APP_ID,
                                   doubao_token="wrong", ref_file="BV001_streaming")
        try:
            with pytest.raises(TTSServerError, match="HTTP 401"):
                await collect(engine, "x", Voice())
        finally:
            await engine.close()
    first, second = fake.requests[0], fake.requests[1]
    assert (first["audio"]["voice_type"], first["request"]["text"], first["audio"]["rate"]) == (
        "BV001_streaming", CHINESE, 16000)
    assert (first["app"]["appid"], first["app"]["cluster"]) == (DOUBAO_APP_ID, "volcano_tts")
    assert second["audio"]["speed_ratio"] == 1.2


# --- qwentts -----------------------------------------------------------------------------------
async def test_qwen_realtime_speaks_its_events(tmp_path):
    fake = FakeQwen(real_time_factor=0.5)
    async with run_fake_qwen_server(fake) as url:
        engine = await open_engine("qwentts", url, tmp_path, dashscope_api_key=QWEN_KEY)
        try:
            await engine.check_voice(Voice())
            chunks = [c async for c in engine.synthesize(CHINESE, Voice())]
            assert len(chunks) > 3 and engine.sample_rate_hz == 24000
            assert np.concatenate(chunks).size / 24000 == pytest.approx(len(CHINESE) * 0.06,
                                                                        rel=0.02)
            await collect(engine, "Hi.", Voice.named("Ethan", options={"language_type":
                                                                       "English"}))
            with pytest.raises(UnknownVoice):
                await engine.check_voice(Voice.named("cmn"))
            with pytest.raises(TTSServerError, match="error: Voice 'Nobody' is not supported"):
                await collect(engine, "x", Voice.named("Nobody"))
        finally:
            await engine.close()
        engine = await open_engine("qwentts", url, tmp_path, dashscope_api_key="wrong")
        try:
            with pytest.raises(TTSServerError, match="HTTP 401"):
                await collect(engine, "x", Voice())
        finally:
            await engine.close()
    assert [s["voice"] for s in fake.sessions] == ["Cherry", "Ethan", "Nobody"]
    assert fake.sessions[0] == {"voice": "Cherry", "response_format": "pcm", "sample_rate": 24000,
                                "mode": "commit"}
    assert fake.sessions[1]["language_type"] == "English"
    assert fake.texts == [CHINESE, "Hi."] and fake.finished == 2


# --- omnitts -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model_rate_hz", [44100, 16000])
async def test_omni_reads_the_rate_from_the_answer_and_clones_a_registered_clip(model_rate_hz,
                                                                              tmp_path):
    register_upload(tmp_path, "anna", clip_wav(48000, 2))
    fake = FakeVoice(omni_rate_hz=model_rate_hz)
    async with run_fake_voice_server("omnitts", fake) as url:
        engine = await open_engine("omnitts", url + "/v1", tmp_path)
        try:
            speaker = await collect(engine, ENGLISH, Voice())
            assert engine.sample_rate_hz == model_rate_hz  # not its 24 kHz default
            assert speaker.size / model_rate_hz == pytest.approx(len(ENGLISH) * 0.06, rel=0.02)
            voice = Voice.named("vivian", options={"language": "English", "instructions": "calm",
                                                   "task_type": "CustomVoice"})
            await collect(engine, "Hi.", voice)
            cloned = await collect(engine, CHINESE, Voice.named("anna"))
            assert dominant_hz(cloned, model_rate_hz) == pytest.approx(REFERENCE_TONE_HZ, abs=5)
            with pytest.raises(TTSServerError, match="HTTP 400.*Invalid speaker"):
                await collect(engine, "x", Voice.named("nobody"))
        finally:
            await engine.close()
    plain, styled, clone = fake.requests[:3]
    assert plain == {"input": ENGLISH, "response_format": "wav", "voice": "vivian"}
    assert (styled["language"], styled["instructions"], styled["task_type"]) == (
        "English", "calm", "CustomVoice")
    assert clone["task_type"] == "Base" and clone["ref_text"] == "Hello, this is my voice."
    assert clone["ref_audio"].startswith("data:audio/wav;base64,") and "voice" not in clone


# --- xtts --------------------------------------------------------------------------------------
async def test_xtts_clones_a_registered_clip_once_and_streams_each_sentence(tmp_path):
    register_upload(tmp_path, "anna", clip_wav(16000, 1))
    fake = FakeVoice(real_time_factor=0.5)
    async with run_fake_voice_server("xtts", fake) as url:
        engine = await open_engine("xtts", url, tmp_path, ref_file="anna")
        try:
            await engine.check_available()
            await engine.check_voice(Voice())
            chunks = [c async for c in engine.synthesize(ENGLISH, Voice())]
            assert len(chunks) > 3 and engine.sample_rate_hz == 24000
            audio = np.concatenate(chunks)
            assert dominant_hz(audio, 24000) == pytest.approx(REFERENCE_TONE_HZ, abs=5)
            await collect(engine, CHINESE, Voice.named("anna"))
            await collect(engine, "こんにちは。", Voice.named("anna", options={
                "language": "ja", "stream_chunk_size": 10}))
            with pytest.raises(UnknownVoice):
                await engine.check_voice(Voice.named("nobody"))  # the server has no voices
            assert not engine.speaks(ENGLISH, Voice.named("nobody"))
            await asyncio.sleep(0.01)  # a new mtime: the clip re-registered is cloned again
            register_upload(tmp_path, "anna", clip_wav(16000, 1))
            await collect(engine, ENGLISH, Voice.named("anna"))
        finally:
            await engine.close()
    routes = [r["route"] for r in fake.requests]
    assert routes == ["/clone_speaker", "/tts_stream", "/tts_stream", "/tts_stream",
                      "/clone_speaker", "/tts_stream"], routes
    streams = [r for r in fake.requests if r["route"] == "/tts_stream"]
    assert [r["language"] for r in streams] == ["en", "zh", "ja", "en"]
    assert streams[0]["add_wav_header"] is True and streams[0]["stream_chunk_size"] == "20"
    assert streams[2]["stream_chunk_size"] == "10"


# --- reference clips: 8-48 kHz, mono or stereo, the same voice at every engine (item 5) --------
UPLOADS = [(8000, 1), (16000, 2), (22050, 1), (44100, 2), (48000, 1)]
# The rate each cloning engine's server is sent a clip at (None: as stored, the upload's rate;
# GPT-SoVITS reads the file itself and resamples whatever it finds).
SENT_AT = {"cosyvoice": 16000, "fishtts": 44100, "xtts": 22050, "omnitts": 24000,
           "gpt-sovits": None}


@pytest.mark.parametrize("engine_name", list(SENT_AT))
async def test_every_upload_reaches_the_server_as_the_same_voice(engine_name, tmp_path):
    for rate_hz, channels in UPLOADS:
        register_upload(tmp_path, f"v{rate_hz}x{channels}", clip_wav(rate_hz, channels))
    fake = FakeVoice(first_chunk_delay_s=0.0, real_time_factor=0.0)
    async with run_fake_voice_server(engine_name, fake) as url:
        engine = await open_engine(engine_name, url, tmp_path)
        try:
            for rate_hz, channels in UPLOADS:
                audio = await collect(engine, "Hello there.", Voice.named(f"v{rate_hz}x{channels}"))
                assert audio.size, (engine_name, rate_hz, channels)
        finally:
            await engine.close()
    assert len(fake.references) == len(UPLOADS), fake.references
    for (rate_hz, channels), seen in zip(UPLOADS, fake.references):
        case = (engine_name, rate_hz, channels, seen)
        assert seen["rate_hz"] == (SENT_AT[engine_name] or rate_hz), case
        assert seen["channels"] == 1, case
        assert seen["seconds"] == pytest.approx(REFERENCE_S, abs=0.005), case
        assert seen["tone_hz"] == pytest.approx(REFERENCE_TONE_HZ, abs=2), case
