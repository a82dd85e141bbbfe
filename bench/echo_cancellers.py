"""Echo cancellers on our uplink's audio: which one removes the avatar's voice from a microphone
that hears it, on 16 kHz speech in 20 ms frames.

    python bench/echo_cancellers.py [--delay-ms 150] [--gain-db -10]

The avatar's speech is Piper (`joe`, through an embedded Triton serving only Piper), ~35 s of
FAQ answers. The loopback is what a session meets: the played 16 kHz audio through Opus (the
downlink, 48 kbps), attenuated (`--gain-db`), delayed (`--delay-ms`), through Opus again (the
uplink), then 16 kHz again, plus a -70 dBFS noise floor. 20 s in, the user says a question at the
played level over the echo (double talk).

Per canceller (each fed 20 ms frames: near = the microphone, far = what was played at the same
time, no delay given):
- ERLE (echo return loss enhancement, dB): echo-only energy in / out, over the first 2 s (how fast
  it converges) and after 3 s (converged);
- the user's speech over the echo: its level kept (out vs the clean user speech, dB) and the
  correlation of the output with the clean user speech where the user speaks (best within
  +-20 ms: Opus delays it; the microphone before any canceller, for reference);
- CPU seconds per second of audio.

Candidates: `pywebrtc-audio` (WebRTC AEC3; the project's dependency), libspeexdsp's canceller
(Debian `libspeexdsp1`, through ctypes; 200 ms and 500 ms filters), `pyaec` (a Rust port of
speex's). Those not installed are skipped. Writes bench/results/echo_cancellers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import ctypes
import ctypes.util
import json
import sys
import time
from pathlib import Path

import av
import numpy as np
import scipy.signal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from orchestrator.media.audio_track import encode_piece, opus_encoder  # noqa: E402
from orchestrator.triton.server import EmbeddedTriton  # noqa: E402
from orchestrator.tts import PiperEngine, Voice, synthesize_all  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
FAQ = REPO / "orchestrator/chat/shipped_knowledge/default/faq.csv"
RATE = 16000
FRAME = 320  # 20 ms
USER_AT_S = 20.0
NOISE_DBFS = -70.0


def opus_round_trip(audio: np.ndarray) -> np.ndarray:
    """16 kHz float32 through Opus (encoded as the session's audio track does) and back."""
    encoder = opus_encoder()
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.layout = RATE, "mono"
    out, rate = [], RATE
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    for k in range(0, pcm.size - FRAME + 1, FRAME):
        data = encode_piece(encoder, pcm[k:k + FRAME], k)
        for frame in decoder.decode(av.Packet(data)) if data else []:
            rate = frame.sample_rate
            samples = frame.to_ndarray()
            samples = (samples.astype(np.float32) / 32768.0 if samples.dtype == np.int16
                       else samples.astype(np.float32))
            out.append(samples.reshape(len(frame.layout.channels), -1).mean(axis=0)
                       if frame.format.is_planar else
                       samples.reshape(-1, len(frame.layout.channels)).mean(axis=1))
    decoded = np.concatenate(out) if out else np.zeros(0, np.float32)
    if rate != RATE:
        g = np.gcd(rate, RATE)
        decoded = scipy.signal.resample_poly(decoded, RATE // g, rate // g).astype(np.float32)
    return np.pad(decoded, (0, max(0, audio.size - decoded.size)))[:audio.size]


class Speex:
    """libspeexdsp's echo canceller through ctypes (speex_echo.h)."""

    def __init__(self, tail_ms: int) -> None:
        path = ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1"
        self.lib = lib = ctypes.CDLL(path)
        lib.speex_echo_state_init.restype = ctypes.c_void_p
        lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(ctypes.c_int16)] * 3
        lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self.state = lib.speex_echo_state_init(FRAME, RATE * tail_ms // 1000)
        rate = ctypes.c_int(RATE)
        lib.speex_echo_ctl(self.state, 24, ctypes.byref(rate))  # SPEEX_ECHO_SET_SAMPLING_RATE

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        n = (near * 32767).astype(np.int16)
        f = (far * 32767).astype(np.int16)
        out = np.zeros(FRAME, np.int16)
        p = ctypes.POINTER(ctypes.c_int16)
        self.lib.speex_echo_cancellation(self.state, n.ctypes.data_as(p), f.ctypes.data_as(p),
                                         out.ctypes.data_as(p))
        return out.astype(np.float32) / 32767


class Aec3:
    def __init__(self) -> None:
        from pywebrtc_audio import EchoCanceller

        self.aec = EchoCanceller(sample_rate=RATE)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        return self.aec.process(near, far)


class PyAec:
    def __init__(self) -> None:
        from pyaec import Aec

        self.aec = Aec(FRAME, RATE // 2, RATE, False)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        out = self.aec.cancel_echo((near * 32767).astype(np.int16).tolist(),
                                   (far * 32767).astype(np.int16).tolist())
        return np.asarray(out, np.float32) / 32767


CANDIDATES = {
    "webrtc-aec3 (pywebrtc-audio)": Aec3,
    "speexdsp 200 ms filter": lambda: Speex(200),
    "speexdsp 500 ms filter": lambda: Speex(500),
    "pyaec (aec-rs)": PyAec,
}


async def speech(texts: list[str]) -> list[np.ndarray]:
    triton = EmbeddedTriton(REPO / "model_repository", ["tts_piper", "piper_joe"])
    await triton.start()
    try:
        piper = await PiperEngine.open(triton.url)
        try:
            out = []
            for text in texts:
                audio = await synthesize_all(piper, text, Voice.named("joe"))
                g = np.gcd(piper.sample_rate_hz, RATE)
                out.append(scipy.signal.resample_poly(audio, RATE // g, piper.sample_rate_hz // g)
                           .astype(np.float32))
            return out
        finally:
            await piper.close()
    finally:
        await triton.stop()


def db(a: float, b: float) -> float:
    return round(float(10 * np.log10(max(a, 1e-20) / max(b, 1e-20))), 1)


def measure(make, far: np.ndarray, near: np.ndarray, echo: np.ndarray, user: np.ndarray,
            user_at: int) -> dict:
    canceller = make()
    out = np.zeros_like(near)
    started = time.process_time()
    for k in range(0, near.size - FRAME + 1, FRAME):
        out[k:k + FRAME] = canceller.process(near[k:k + FRAME], far[k:k + FRAME])
    cpu = time.process_time() - started
    first = slice(0, 2 * RATE)
    converged = slice(3 * RATE, user_at - RATE // 2)
    talk = slice(user_at, user_at + user.size)
    clean = np.zeros_like(near)
    clean[talk] = user
    spoken = out[talk]
    # Opus delays the microphone a few ms: the best correlation within +-20 ms
    lags = scipy.signal.correlate(spoken, user, mode="full", method="fft")
    mid, span = user.size - 1, RATE // 50
    corr = float(np.max(lags[mid - span:mid + span + 1])
                 / (np.linalg.norm(spoken) * np.linalg.norm(user) + 1e-12))
    return {"erle_first_2s_db": db(np.mean(near[first] ** 2), np.mean(out[first] ** 2)),
            "erle_converged_db": db(np.mean(near[converged] ** 2), np.mean(out[converged] ** 2)),
            "echo_in_dbfs": db(np.mean(echo[converged] ** 2), 1.0),
            "user_level_kept_db": db(np.mean(spoken ** 2), np.mean(user ** 2)),
            "user_correlation": round(corr, 3),
            "cpu_s_per_audio_s": round(cpu / (near.size / RATE), 4)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=150.0)
    parser.add_argument("--gain-db", type=float, default=-10.0)
    parser.add_argument("--answers", type=int, default=8, help="FAQ answers spoken (~4 s each)")
    args = parser.parse_args()
    with FAQ.open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["answer"].isascii()]
    answers = [r["answer"] for r in rows[:args.answers]]
    question = rows[0]["question"]
    *said, user = await speech([*answers, question])
    gap = np.zeros(RATE // 2, np.float32)
    far = np.concatenate([np.concatenate([a, gap]) for a in said])
    user_at = int(USER_AT_S * RATE)
    assert far.size > user_at + user.size, "not enough speech: more --answers"
    delay = int(args.delay_ms / 1000 * RATE)
    echo = opus_round_trip(far) * 10 ** (args.gain_db / 20)
    echo = np.concatenate([np.zeros(delay, np.float32), echo])[:far.size]
    mic = echo.copy()
    mic[user_at:user_at + user.size] += user
    mic += (10 ** (NOISE_DBFS / 20) * np.random.default_rng(0).standard_normal(mic.size)
            ).astype(np.float32)
    near = opus_round_trip(mic)
    talk = slice(user_at, user_at + user.size)
    lags = scipy.signal.correlate(near[talk], user, mode="full", method="fft")
    mid, span = user.size - 1, RATE // 50
    results = {"no canceller": {"user_correlation": round(float(
        np.max(lags[mid - span:mid + span + 1])
        / (np.linalg.norm(near[talk]) * np.linalg.norm(user))), 3)}}
    for name, make in CANDIDATES.items():
        try:
            results[name] = measure(make, far, near, echo, user, user_at)
        except (ImportError, OSError) as exc:
            results[name] = {"skipped": str(exc)}
        print(name, results[name], flush=True)
    report = {"loopback": {"gain_db": args.gain_db, "delay_ms": args.delay_ms,
                           "opus_both_ways": True, "noise_dbfs": NOISE_DBFS,
                           "speech_s": round(far.size / RATE, 1), "user_at_s": USER_AT_S},
              "cancellers": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "echo_cancellers.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
