"""eSpeak NG through ctypes: text -> 16 kHz float PCM with word and phoneme timings.

eSpeak keeps global state (one voice, one callback, one synthesis at a time), so one engine per
process and every synthesis under its lock. Timings come from eSpeak's own events: each event
carries its position in the generated audio (ms), so they line up with the samples exactly.
"""

from __future__ import annotations

import ctypes
import threading
import unicodedata
from dataclasses import dataclass

import espeakng_loader
import numpy as np
from scipy.signal import resample_poly

OUTPUT_RATE_HZ = 16000
AUTO_VOICE = ""
DEFAULT_VOICE = "en-us"
CJK_VOICE = "cmn"
MAX_VOICE_NAME_CHARS = 64
PAUSE_PHONEME_PREFIX = "_"  # "_" short pause, "_:" clause pause
INTRA_WORD_PUNCTUATION = frozenset("'’-‐")
NON_PAUSE_PHONEMES = frozenset({"_|", "_^_"})  # syllable break, language switch: no silence

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000  # return errors instead of calling exit() inside the stub
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EE_OK = 0
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7


class UnknownVoice(ValueError):
    def __init__(self, voice: str) -> None:
        super().__init__(f"unknown voice '{voice}'")
        self.voice = voice


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # characters from the start of the text, 1-based
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of this synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class _RawEvent:
    type: int
    text_position: int
    audio_ms: int
    phoneme: str


@dataclass(frozen=True)
class Speech:
    audio: np.ndarray  # float32 mono at OUTPUT_RATE_HZ
    phonemes: list[str]  # eSpeak mnemonics; pauses start with "_"
    phoneme_times: np.ndarray  # float32 [P, 2] start, end in seconds
    words: list[str]
    word_times: np.ndarray  # float32 [W, 2] start, end in seconds


def pick_voice(text: str, voice: str) -> str:
    """The voice to use: `voice`, or for AUTO_VOICE `cmn` when the text has CJK ideographs."""
    if voice != AUTO_VOICE:
        return voice
    return CJK_VOICE if any(_is_cjk(ch) for ch in text) else DEFAULT_VOICE


def _is_cjk(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\U00020000" <= ch <= "\U0002ffff"


class ESpeakEngine:
    def __init__(self) -> None:
        lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        self.native_rate_hz = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(),
            _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT,
        )
        if self.native_rate_hz <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.native_rate_hz})")
        self._lib = lib
        self._lock = threading.Lock()
        self._samples: list[np.ndarray] = []
        self._events: list[_RawEvent] = []
        self._callback = _SynthCallback(self._on_synth)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _on_synth(self, wav, count, events) -> int:
        if count > 0:
            self._samples.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            phoneme = e.id.string.decode(errors="replace") if e.type == _EVENT_PHONEME else ""
            self._events.append(_RawEvent(e.type, e.text_position, e.audio_position, phoneme))
            i += 1
        return 0  # continue

    def _set_voice(self, voice: str) -> None:
        if voice == self._voice:
            return
        if (not voice or len(voice) > MAX_VOICE_NAME_CHARS or "\0" in voice
                or self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK):
            raise UnknownVoice(voice)
        self._voice = voice

    def synthesize(self, text: str, voice: str) -> Speech:
        """Raises UnknownVoice for a voice eSpeak does not have."""
        voice = pick_voice(text, voice)
        with self._lock:
            self._set_voice(voice)
            self._samples, self._events = [], []
            data = text.encode() + b"\0"
            status = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                            None, None)
            if status != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed ({status})")
            native = np.concatenate(self._samples) if self._samples else np.zeros(0, np.int16)
            events = self._events
        audio = self._resample(native)
        duration_s = audio.size / OUTPUT_RATE_HZ
        phoneme_events = [e for e in events if e.type == _EVENT_PHONEME]
        phoneme_starts = [e.audio_ms / 1000 for e in phoneme_events]
        phoneme_times = _intervals(phoneme_starts, duration_s)
        pauses = [t for e, t in zip(phoneme_events, phoneme_starts) if _is_pause(e.phoneme)]
        words, word_times = _words(text, events, pauses, duration_s)
        return Speech(
            audio=audio,
            phonemes=[e.phoneme for e in phoneme_events],
            phoneme_times=phoneme_times,
            words=words,
            word_times=word_times,
        )

    def _resample(self, native: np.ndarray) -> np.ndarray:
        audio = native.astype(np.float32) / 32768.0
        if audio.size == 0:
            return audio
        g = np.gcd(OUTPUT_RATE_HZ, self.native_rate_hz)
        return resample_poly(audio, OUTPUT_RATE_HZ // g, self.native_rate_hz // g).astype(np.float32)


def _is_pause(phoneme: str) -> bool:
    return phoneme.startswith(PAUSE_PHONEME_PREFIX) and phoneme not in NON_PAUSE_PHONEMES


def _intervals(starts: list[float], end_s: float) -> np.ndarray:
    """[start, next start) for each event; the last one runs to the end of the audio."""
    if not starts:
        return np.zeros((0, 2), np.float32)
    ends = starts[1:] + [max(end_s, starts[-1])]
    return np.array(list(zip(starts, ends)), np.float32).reshape(-1, 2)


def _words(text: str, events: list[_RawEvent], pauses_s: list[float],
           duration_s: float) -> tuple[list[str], np.ndarray]:
    """Word texts and [start, end) times: a word ends where the next word (or a pause) starts.

    A word's text runs from its position to the next word's, cut at punctuation: eSpeak's
    `length` is unreliable for Chinese (1 for the two-character dictionary word 你好), and its
    clause-end positions are off by one at the end of the text.
    """
    word_events = [e for e in events if e.type == _EVENT_WORD]
    words, times = [], []
    for k, e in enumerate(word_events):
        stop = next((w.text_position for w in word_events[k + 1 :]
                     if w.text_position > e.text_position), len(text) + 1)
        words.append(_word_text(text[e.text_position - 1 : stop - 1]))
        start_s = e.audio_ms / 1000
        end_s = word_events[k + 1].audio_ms / 1000 if k + 1 < len(word_events) else duration_s
        end_s = min([end_s] + [p for p in pauses_s if start_s < p < end_s])
        times.append((start_s, max(start_s, end_s)))
    return words, np.array(times, np.float32).reshape(-1, 2)


def _word_text(span: str) -> str:
    """The word at the start of `span`: up to whitespace or punctuation (apostrophes and hyphens
    inside a word stay)."""
    chars = list(span.strip())
    while chars and _is_punctuation(chars[0]):
        chars.pop(0)
    word = []
    for ch in chars:
        if ch.isspace() or (_is_punctuation(ch) and ch not in INTRA_WORD_PUNCTUATION):
            break
        word.append(ch)
    while word and _is_punctuation(word[-1]):
        word.pop()
    return "".join(word) or span.strip()


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")
