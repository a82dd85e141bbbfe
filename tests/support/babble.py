"""Background talk made from Piper speech, for the noise tests and bench/voice_turn.py --babble.

Six talkers, each Piper's `joe` at its own pitch and tempo (the speech resampled by its own factor,
as a tape played faster or slower) saying the sentences in its own order with its own pauses,
mixed and scaled to a level in dBFS (RMS relative to full scale 1.0, over the whole mix). Pure
numpy/scipy: the speech comes in, the mix goes out; nothing here talks to a server.
"""

from __future__ import annotations

import numpy as np

# What the talkers say (Piper's joe speaks them; each talker in its own order).
BABBLE_SENTENCES = (
    "The weather is lovely this morning, and the park is full of people.",
    "Your order has already been shipped, it should arrive on Tuesday.",
    "We are open every day except public holidays and the first of May.",
    "The museum closes early on Sunday evenings, so come before five.",
    "She bought fresh bread, cheese and apples at the market yesterday.",
    "The train to the airport leaves from platform four every hour.",
)
BABBLE_TALKERS = 6
# each talker's speed (and pitch) relative to joe: three lower, three higher voices
TALKER_SPEEDS = (0.84, 0.9, 0.96, 1.04, 1.1, 1.18)
BABBLE_PAUSE_S = (0.1, 0.6)  # each talker's pause between sentences: uniform in this range
BABBLE_DBFS = -35.0  # the background level
QUESTION_SNR_DB = 15.0  # a question spoken over the babble
LEVEL_WINDOW_S = 0.01  # windows of this length with any energy count as speech (speech_rms)


def dbfs(audio: np.ndarray) -> float:
    """RMS level of `audio` (float, full scale 1.0) in dB; -inf for digital silence."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def at_dbfs(audio: np.ndarray, level_dbfs: float) -> np.ndarray:
    """`audio` scaled so that its RMS is `level_dbfs`."""
    return (audio * 10 ** ((level_dbfs - dbfs(audio)) / 20)).astype(np.float32)


def speech_rms_dbfs(audio: np.ndarray, rate_hz: int) -> float:
    """Level of the speech in `audio` without its silent stretches (windows at least 40 dB below
    the loudest one left out), so that leading and trailing silence do not change an SNR."""
    win = max(1, int(LEVEL_WINDOW_S * rate_hz))
    n = audio.size // win
    power = np.mean(np.square(audio[:n * win].reshape(n, win), dtype=np.float64), axis=1)
    voiced = power[power > power.max() * 1e-4]
    return 10 * np.log10(voiced.mean()) if voiced.size else float("-inf")


def _resampled(audio: np.ndarray, speed: float) -> np.ndarray:
    import scipy.signal

    up = 100
    down = round(up * speed)
    return scipy.signal.resample_poly(audio, up, down).astype(np.float32)


def babble(sentences: list[np.ndarray], seconds: float, rate_hz: int,
           level_dbfs: float = BABBLE_DBFS, talkers: int = BABBLE_TALKERS,
           seed: int = 0) -> np.ndarray:
    """`seconds` of `talkers` voices talking at once: float32 [seconds * rate_hz] at `rate_hz`,
    RMS `level_dbfs`. `sentences`: speech at `rate_hz` (mono float32), at least one; talker k
    speaks them in its own order at TALKER_SPEEDS[k % 6], starting part-way into a sentence so
    that every talker is already talking at the first sample. Raises ValueError without
    sentences."""
    if not sentences:
        raise ValueError("babble needs at least one sentence")
    rng = np.random.default_rng(seed)
    total = int(seconds * rate_hz)
    mix = np.zeros(total, np.float64)
    for k in range(talkers):
        speed = TALKER_SPEEDS[k % len(TALKER_SPEEDS)]
        order = rng.permutation(len(sentences))
        pieces, length, i = [], 0, 0
        while length < total + rate_hz * 10:
            said = _resampled(sentences[order[i % len(order)]], speed)
            pause = np.zeros(int(rng.uniform(*BABBLE_PAUSE_S) * rate_hz), np.float32)
            pieces += [said, pause]
            length += said.size + pause.size
            i += 1
        talker = np.concatenate(pieces)
        start = int(rng.integers(0, max(1, talker.size - total)))
        start = min(start, rate_hz * 5)  # part-way into the first sentences
        talker = talker[start:start + total]
        mix += talker / max(np.sqrt(np.mean(np.square(talker, dtype=np.float64))), 1e-9)
    return at_dbfs(mix.astype(np.float32), level_dbfs)


def over(noise: np.ndarray, speech: np.ndarray, rate_hz: int, snr_db: float,
         at_s: float) -> np.ndarray:
    """`noise` with `speech` added `at_s` seconds in, the speech scaled so that its level
    (speech_rms_dbfs) is `snr_db` above the noise's RMS; both mono float32 at `rate_hz`. Raises
    ValueError when the speech does not fit in the noise."""
    start = int(at_s * rate_hz)
    if start + speech.size > noise.size:
        raise ValueError("the speech does not fit in the noise")
    gain = 10 ** ((dbfs(noise) + snr_db - speech_rms_dbfs(speech, rate_hz)) / 20)
    out = noise.astype(np.float32, copy=True)
    out[start:start + speech.size] += speech * gain
    return out
