"""Text -> Piper phoneme ids: eSpeak NG IPA phonemes (ctypes) and the voice's phoneme_id_map.

What Piper's own phonemizer (piper-phonemize) does, rebuilt on `espeak_TextToPhonemes`, which
drops punctuation: the text is cut into clauses here, each clause is phonemised, and its
punctuation (`,` `.` `?` `!` `:` `;`) is put back after its phonemes, as Piper's training data
had it. A sentence (ended by `.` `?` `!`) becomes one id sequence: BOS `^`, then every phoneme's
ids each followed by the pad `_`, then EOS `$` (with a pad after BOS too, as Piper writes it).
"""

from __future__ import annotations

import ctypes
import re
import threading
import unicodedata
from dataclasses import dataclass

import espeakng_loader
import numpy as np

BOS, EOS, PAD = "^", "$", "_"
SENTENCE_ENDS = ".?!"
# Clause punctuation: kept after the clause's phonemes. A period only ends a clause before a
# space or the end ("3.5" stays a number); "…" reads as a period, CJK marks as theirs.
_CLAUSE = re.compile(r"([.?!]+|[,:;]|…|[。？！，：；、])(?=\s|$|[\"'”’)\]])")
_FOLD = {"…": ".", "。": ".", "？": "?", "！": "!", "，": ",", "：": ":", "；": ";", "、": ","}
# "Mr. Smith": a period after these is no clause end (eSpeak reads them as words)
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc",
                            "e.g", "i.e", "no", "approx", "inc", "ltd", "co"})
_LANGUAGE_FLAG = re.compile(r"\([a-z]{2,3}(-[a-z0-9]+)?\)")  # "(en)" "(fr)" language switches

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02
_EE_OK = 0


class UnknownVoice(ValueError):
    def __init__(self, voice: str) -> None:
        super().__init__(f"unknown voice '{voice}'")


@dataclass(frozen=True)
class Clause:
    text: str
    punctuation: str  # "" when the text ends without any


def clauses(text: str) -> list[Clause]:
    """Cut text at clause punctuation, keeping each mark (folded to Piper's ASCII set)."""
    out, start = [], 0
    for match in _CLAUSE.finditer(text):
        mark = match.group(1)
        before = text[start:match.start()].split()
        if mark == "." and before and before[-1].lower() in _ABBREVIATIONS:
            continue
        out.append(Clause(text[start:match.start()].strip(), _FOLD.get(mark, mark[-1])))
        start = match.end()
    rest = text[start:].strip()
    if rest:
        out.append(Clause(rest, ""))
    return [c for c in out if any(ch.isalnum() for ch in c.text)]


class ESpeakPhonemizer:
    """eSpeak NG's IPA phonemes through ctypes; one voice at a time, so calls are serialised."""

    def __init__(self) -> None:
        lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                              ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                     espeakng_loader.get_data_path().encode(),
                                     _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate})")
        self._lib = lib
        self._lock = threading.Lock()
        self._voice: str | None = None

    def _set_voice(self, voice: str) -> None:
        if voice != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise UnknownVoice(voice)
            self._voice = voice

    def ipa(self, text: str, voice: str) -> str:
        """IPA of one clause (eSpeak may cut it further; the parts are joined by spaces)."""
        data = ctypes.create_string_buffer(text.encode() + b"\0")
        pointer = ctypes.c_void_p(ctypes.addressof(data))
        parts = []
        with self._lock:
            self._set_voice(voice)
            while pointer.value:
                phonemes = self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8,
                                                           _PHONEMES_IPA)
                if phonemes:
                    parts.append(phonemes.decode(errors="replace").strip())
        return _LANGUAGE_FLAG.sub("", " ".join(p for p in parts if p))

    def sentences(self, text: str, voice: str) -> list[str]:
        """Piper's phoneme strings, one per sentence, punctuation put back."""
        out, current = [], ""
        for clause in clauses(text):
            current += self.ipa(clause.text, voice) + clause.punctuation
            if clause.punctuation and clause.punctuation in SENTENCE_ENDS:
                out.append(current)
                current = ""
            else:
                current += " "
        if current.strip():
            out.append(current.strip())
        return out


class PhonemeIds:
    """A voice's phoneme_id_map (from its .onnx.json)."""

    def __init__(self, id_map: dict[str, list[int]]) -> None:
        missing = [s for s in (BOS, EOS, PAD) if s not in id_map]
        if missing:
            raise ValueError(f"phoneme_id_map lacks {missing}")
        self.id_map = id_map

    def ids(self, phonemes: str) -> np.ndarray:
        """BOS, pad, each phoneme (decomposed to code points) then pad, EOS; unknown ones are
        skipped as Piper skips them."""
        ids = [*self.id_map[BOS], *self.id_map[PAD]]
        for ch in unicodedata.normalize("NFD", phonemes):
            if ch in self.id_map:
                ids += [*self.id_map[ch], *self.id_map[PAD]]
        ids += self.id_map[EOS]
        return np.array(ids, np.int64)
