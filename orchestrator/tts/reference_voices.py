"""Reference voices for voice-cloning TTS: a clip and its transcript in data/voices/.

`POST /voices` stores NAME.wav (16 kHz mono 16-bit, decoded from whatever was uploaded) and
NAME.txt (its transcript); `refaudio`/`tts.ref_file` NAME then means that clip. Names are a plain
file-name stem (fullmatch of VOICE_NAME): nothing is resolved outside the folder, and a symlink
placed in it is not followed.
"""

from __future__ import annotations

import os
import re
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..media.clock import AUDIO_SAMPLE_RATE_HZ
from ..media.wav_file import wav_bytes

VOICES_DIR_NAME = "voices"
VOICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
MIN_REFERENCE_S = 1.0  # cloning servers want a few seconds; under one is not a voice
MAX_REFERENCE_S = 60.0
MAX_TRANSCRIPT_CHARS = 1000


@dataclass(frozen=True)
class ReferenceVoice:
    name: str
    clip: Path  # NAME.wav, 16 kHz mono int16
    text: str  # its transcript

    @property
    def duration_s(self) -> float:
        with wave.open(str(self.clip), "rb") as wav:
            return wav.getnframes() / wav.getframerate()


def valid_name(name: str) -> bool:
    return bool(VOICE_NAME.fullmatch(name)) and not name.endswith(".")


class VoiceStore:
    """The folder of reference voices (data/voices)."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / VOICES_DIR_NAME

    def get(self, name: str) -> ReferenceVoice | None:
        """The voice NAME, or None (also for names that cannot be one)."""
        if not valid_name(name):
            return None
        clip = self.dir / f"{name}.wav"
        if clip.is_symlink() or not clip.is_file():
            return None
        transcript = self.dir / f"{name}.txt"
        text = ""
        if transcript.is_file() and not transcript.is_symlink():
            text = transcript.read_text(encoding="utf-8", errors="replace")[:MAX_TRANSCRIPT_CHARS]
        return ReferenceVoice(name, clip, text.strip())

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("*.wav")
                      if valid_name(p.stem) and p.is_file() and not p.is_symlink())

    def add(self, name: str, audio: np.ndarray, text: str) -> ReferenceVoice:
        """Store (or replace) NAME: `audio` float32 mono at 16 kHz. Both files are written
        under temporary names and renamed, so a reader never sees half a voice."""
        if not valid_name(name):
            raise ValueError(f"not a voice name: {name!r}")
        self.dir.mkdir(parents=True, exist_ok=True)
        clip_tmp = _temp_file(self.dir, ".wav")
        text_tmp = _temp_file(self.dir, ".txt")
        try:
            clip_tmp.write_bytes(wav_bytes(audio, AUDIO_SAMPLE_RATE_HZ))
            text_tmp.write_text(text, encoding="utf-8")
            os.replace(text_tmp, self.dir / f"{name}.txt")
            os.replace(clip_tmp, self.dir / f"{name}.wav")
        finally:
            clip_tmp.unlink(missing_ok=True)
            text_tmp.unlink(missing_ok=True)
        return ReferenceVoice(name, self.dir / f"{name}.wav", text)


def _temp_file(directory: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=suffix, dir=directory)
    os.close(fd)
    return Path(name)
