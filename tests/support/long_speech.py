"""Long utterances for the ASR tests: many different sentences said by Piper (through Triton),
one after another with short pauses (shorter than the end-of-turn silence), to any length."""

from __future__ import annotations

import re

import numpy as np

from orchestrator.tts import PiperEngine, Voice, synthesize_all

RATE_16K = 16000
PAUSE_S = 0.15  # between sentences: one utterance to the VAD (--vad-min-silence is 0.35 s)
AUDIBLE = 0.01  # full scale 1.0: about -40 dBFS
TRIM_KEPT_S = 0.02
SENTENCES = [
    "The first part of this long question is about the weather in the mountains.",
    "Then I would like to know how the trains run between the two big cities.",
    "After that, please tell me which museums are open on a Sunday morning.",
    "I also wonder whether the bakery near the station sells fresh bread.",
    "My sister asked about the price of a ticket for the evening concert.",
    "We want to rent bicycles for three days and ride along the river.",
    "Could you recommend a quiet hotel with a garden and a view of the lake?",
    "The children would love to see the zoo and feed the goats.",
    "Is there a market where farmers sell cheese, honey and apples?",
    "My uncle is looking for a good restaurant that serves fresh fish.",
    "We also need a doctor who speaks English, just in case.",
    "How late do the buses run at night, and where do they stop?",
    "Can we swim in the lake, or is the water too cold in spring?",
    "Our friends arrive on Tuesday and will stay until the weekend.",
    "Please tell us where to park the car near the old town.",
    "Finally, how long does it take to walk from the port to the castle?",
]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


async def piper_sentences(triton_url: str) -> list[np.ndarray]:
    """Every sentence of SENTENCES said by Piper's joe, at 16 kHz."""
    import scipy.signal

    piper = await PiperEngine.open(triton_url)
    try:
        said = []
        for sentence in SENTENCES:
            audio = await synthesize_all(piper, sentence, Voice.named("joe"))
            g = np.gcd(piper.sample_rate_hz, RATE_16K)
            audio = scipy.signal.resample_poly(audio, RATE_16K // g, piper.sample_rate_hz // g)
            said.append(trimmed(audio.astype(np.float32)))
        return said
    finally:
        await piper.close()


def trimmed(audio: np.ndarray) -> np.ndarray:
    """Without the silence Piper leaves before and after a sentence (TRIM_KEPT_S of it kept):
    the pauses between sentences are PAUSE_S, whatever VITS's sampling left."""
    loud = np.flatnonzero(np.abs(audio) >= AUDIBLE)
    kept = round(TRIM_KEPT_S * RATE_16K)
    return audio[max(loud[0] - kept, 0):loud[-1] + 1 + kept]


def utterance(said: list[np.ndarray], seconds: float) -> tuple[np.ndarray, list[str]]:
    """Exactly `seconds` of audio (16 kHz): whole sentences in order, then silence; and the
    sentences it says."""
    pause = np.zeros(round(PAUSE_S * RATE_16K), np.float32)
    pieces: list[np.ndarray] = []
    texts: list[str] = []
    total = 0
    for audio, text in zip(said, SENTENCES):
        if (total + audio.size) / RATE_16K > seconds:
            break
        pieces += [audio, pause]
        texts.append(text)
        total += audio.size + pause.size
    assert texts, "no sentence fits"
    audio = np.concatenate(pieces)
    return np.pad(audio, (0, round(seconds * RATE_16K) - audio.size)), texts


def recall(transcript: str, sentences: list[str]) -> float:
    """The share of the sentences' words found in the transcript (as a bag of words)."""
    heard = set(words(transcript))
    said = [w for s in sentences for w in words(s)]
    return sum(w in heard for w in said) / len(said)
