"""Text-to-speech engines: time to first audio, real-time factor, intelligibility, and
end-to-end POST /human -> first speech audio with Piper as the default voice.

Starts `python -m orchestrator` (embedded Triton, default `--tts piper`) on 127.0.0.1, then
- per engine (eSpeak `en-us`, Piper `joe`, both through that Triton): each of 12 sentences
  synthesised after a warm-up; time to first audio (first chunk out of `synthesize`) and
  real-time factor (synthesis time / audio duration), median and p95;
- intelligibility: Whisper tiny.en transcribes 20 sentences from each voice, word error rate
  (bench/intelligibility.py);
- end to end: a real aiortc client, N echo utterances (bench/e2e_latency.py's `speak_all`).
- per engine behind a server (cosyvoice, gpt-sovits, fishtts, openai, omnitts, xtts, and the
  cloud ones: azuretts, tencent, edgetts, doubao, qwentts), each against its fake server
  (tests/support/fake_*.py: the real protocol, a reference clip registered in a
  temporary data/voices/, FAKE_FIRST_CHUNK_S before the first chunk, then audio made at
  FAKE_REAL_TIME_FACTOR): time to first audio and to the whole sentence, real-time factor. The
  fake's pace dominates; what the numbers show is our client's overhead and that a streamed
  answer is used from its first chunk (first audio ~ FAKE_FIRST_CHUNK_S, not the whole sentence).
Writes bench/results/tts.json (`--cloning-only`: only the cloning engines, to
bench/results/tts_cloning.json); with --recordings DIR also the same sentence by each engine as
MP3 (docs/tts_espeak.mp3, docs/tts_piper.mp3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from e2e_latency import IDLE_SECONDS, UTTERANCES, speak_all, summary_ms
from intelligibility import SENTENCES, Transcriber, word_error_rate
from server_process import start_server

from orchestrator.client import AvatarClient
from orchestrator.settings import Settings
from orchestrator.speech.features import to_pipeline_rate
from orchestrator.tts import ENGINES as TTS_ENGINES
from orchestrator.tts import ESpeakEngine, PiperEngine, TTSEngine, Voice
from orchestrator.tts.reference_voices import VoiceStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from fake_doubao_server import (  # noqa: E402
    DOUBAO_APP_ID,
    DOUBAO_TOKEN,
    FakeDoubao,
    run_fake_doubao_server,
)
from fake_edge_server import FakeEdge, run_fake_edge_server  # noqa: E402
from fake_qwen_realtime_server import QWEN_KEY, FakeQwen, run_fake_qwen_server  # noqa: E402
from fake_voice_servers import (  # noqa: E402
    AZURE_KEY,
    TENCENT_APP_ID,
    TENCENT_SECRET_ID,
    TENCENT_SECRET_KEY,
    FakeVoice,
    run_fake_voice_server,
    tone_wav,
)

RESULTS = Path(__file__).parent / "results"
RECORDED_SENTENCE = "Hello, I am your digital human. How can I help you today?"
ENGINES = {"espeak": Voice.named("en-us"), "piper": Voice.named("joe")}
# The engines behind a server (cloning and cloud, LiveTalking's names): the voice each is asked
# for ("bench": the registered clip) and the settings its fake needs.
CLONING_ENGINES = {
    "cosyvoice": ("bench", {}), "gpt-sovits": ("bench", {}), "fishtts": ("bench", {}),
    "openai": ("alloy", {}), "omnitts": ("bench", {}), "xtts": ("bench", {}),
    "azuretts": ("en-US-AriaNeural", {"tts_api_key": AZURE_KEY}),
    "tencent": ("101001", {"tencent_app_id": str(TENCENT_APP_ID),
                           "tencent_secret_id": TENCENT_SECRET_ID,
                           "tencent_secret_key": TENCENT_SECRET_KEY}),
    "edgetts": ("en-US-AriaNeural", {}),
    "doubao": ("BV001_streaming", {"doubao_app_id": DOUBAO_APP_ID, "doubao_token": DOUBAO_TOKEN}),
    "qwentts": ("Cherry", {"dashscope_api_key": QWEN_KEY}),
}
FAKE_FIRST_CHUNK_S = 0.15
FAKE_REAL_TIME_FACTOR = 0.3


async def time_engine(engine: TTSEngine, voice: Voice, rounds: int) -> dict:
    async for _ in engine.synthesize("Warming up.", voice):
        pass
    first_ms, rtf, whole_ms = [], [], []
    for _ in range(rounds):
        for sentence in UTTERANCES:
            start = time.perf_counter()
            first = None
            samples = 0
            async for chunk in engine.synthesize(sentence, voice):
                first = first if first is not None else time.perf_counter() - start
                samples += chunk.size
            total = time.perf_counter() - start
            first_ms.append(1000 * first)
            rtf.append(total / (samples / engine.sample_rate_hz))
            whole_ms.append(1000 * total)
    return {"sample_rate_hz": engine.sample_rate_hz,
            "time_to_first_audio_ms": {"p50": float(np.percentile(first_ms, 50)),
                                       "p95": float(np.percentile(first_ms, 95))},
            "time_to_whole_sentence_ms": {"p50": float(np.percentile(whole_ms, 50)),
                                          "p95": float(np.percentile(whole_ms, 95))},
            "real_time_factor": {"p50": float(np.percentile(rtf, 50)),
                                 "p95": float(np.percentile(rtf, 95))},
            "sentences": len(first_ms)}


async def intelligibility(engine: TTSEngine, voice: Voice, transcriber: Transcriber) -> dict:
    pairs = []
    for sentence in SENTENCES:
        chunks = [c async for c in engine.synthesize(sentence, voice)]
        audio = to_pipeline_rate(np.concatenate(chunks), engine.sample_rate_hz)
        pairs.append((sentence, await asyncio.to_thread(transcriber, audio)))
    return {"wer": word_error_rate(pairs), "sentences": len(pairs),
            "transcripts": [{"text": t, "heard": h} for t, h in pairs]}


def write_mp3(audio: np.ndarray, rate_hz: int, path: Path) -> None:
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate_hz, layout="mono")
        stream.bit_rate = 32000
        frame = av.AudioFrame.from_ndarray(
            (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None, :], format="s16",
            layout="mono")
        frame.sample_rate = rate_hz
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


async def run(n: int, rounds: int, recordings: Path | None) -> dict:
    server = await start_server()  # default engine: piper
    engines: dict[str, TTSEngine] = {"espeak": ESpeakEngine(server.triton_url),
                                     "piper": await PiperEngine.open(server.triton_url)}
    result: dict = {"benchmark": "tts",
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "engines": {}}
    try:
        for name, engine in engines.items():
            result["engines"][name] = {"voice": ENGINES[name].name,
                                       **await time_engine(engine, ENGINES[name], rounds)}
        transcriber = Transcriber()
        for name, engine in engines.items():
            result["engines"][name]["intelligibility"] = await intelligibility(
                engine, ENGINES[name], transcriber)
        if recordings is not None:
            recordings.mkdir(parents=True, exist_ok=True)
            for name, engine in engines.items():
                chunks = [c async for c in engine.synthesize(RECORDED_SENTENCE, ENGINES[name])]
                write_mp3(np.concatenate(chunks), engine.sample_rate_hz,
                          recordings / f"tts_{name}.mp3")
        client = AvatarClient(server.base_url)
        try:
            await client.connect()
            await client.wait_for_video(25)
            await asyncio.sleep(IDLE_SECONDS)
            echo, _ = await speak_all(client, "echo", UTTERANCES, n)
        finally:
            await client.close()
        result["e2e_echo_first_audio_ms"] = {**summary_ms(echo), "utterances": n,
                                             "default_engine": "piper"}
        result["goal"] = {"e2e_p50_ms": 250, "piper_wer_max": 0.15}
        result["cloning"] = await time_cloning_engines(rounds)
    finally:
        for engine in engines.values():
            await engine.close()
        server.stop()
    return result


async def time_cloning_engines(rounds: int) -> dict:
    """Each cloning engine against its fake server, with a registered reference voice."""
    results = {}
    with tempfile.TemporaryDirectory() as data_dir:
        clip = np.frombuffer(tone_wav(3.0)[44:], "<i2").astype(np.float32) / 32768
        VoiceStore(Path(data_dir)).add("bench", clip, "This is the reference voice.")
        for name, (voice_name, extra) in CLONING_ENGINES.items():
            async with fake_server(name) as url:
                settings = Settings(tts=name, tts_server=url, data_dir=Path(data_dir), **extra)
                engine = await TTS_ENGINES[name].open(settings, "")
                voice = Voice.named(voice_name)
                try:
                    results[name] = {"voice": voice.name, "server": "fake", **await time_engine(
                        engine, voice, rounds)}
                finally:
                    await engine.close()
    return {"fake_first_chunk_s": FAKE_FIRST_CHUNK_S,
            "fake_real_time_factor": FAKE_REAL_TIME_FACTOR, "engines": results}


def fake_server(name: str):
    """The fake server of engine `name` (a context manager yielding its URL); WebSocket fakes
    (edgetts, doubao, qwentts) have no first-chunk delay of their own."""
    if name == "edgetts":
        return run_fake_edge_server(FakeEdge(real_time_factor=FAKE_REAL_TIME_FACTOR))
    if name == "doubao":
        return run_fake_doubao_server(FakeDoubao(real_time_factor=FAKE_REAL_TIME_FACTOR))
    if name == "qwentts":
        return run_fake_qwen_server(FakeQwen(real_time_factor=FAKE_REAL_TIME_FACTOR))
    return run_fake_voice_server(name, FakeVoice(first_chunk_delay_s=FAKE_FIRST_CHUNK_S,
                                                 real_time_factor=FAKE_REAL_TIME_FACTOR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=20, help="end-to-end echo utterances")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the 12 sentences")
    parser.add_argument("--recordings", type=Path, help="write tts_espeak.mp3 / tts_piper.mp3")
    parser.add_argument("--cloning-only", action="store_true",
                        help="only the engines behind a server (cloning, cloud) against their "
                        "fake servers")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.cloning_only:
        cloning = asyncio.run(time_cloning_engines(args.rounds))
        (RESULTS / "tts_cloning.json").write_text(json.dumps(cloning, indent=2))
        for name, engine in cloning["engines"].items():
            print(f"{name:<11} first audio p50 {engine['time_to_first_audio_ms']['p50']:6.1f} ms"
                  f"  whole sentence p50 {engine['time_to_whole_sentence_ms']['p50']:6.1f} ms"
                  f"  RTF p50 {engine['real_time_factor']['p50']:.3f}")
        return
    result = asyncio.run(run(args.utterances, args.rounds, args.recordings))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tts.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    summary = {k: v for k, v in result.items() if k != "engines"}
    for name, engine in result["engines"].items():
        print(name, engine["time_to_first_audio_ms"], engine["real_time_factor"],
              "WER", round(engine["intelligibility"]["wer"], 3))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
