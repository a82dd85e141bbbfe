"""Reference voices for voice-cloning TTS: a clip and its transcript in data/voices/.

`POST /voices` stores NAME.wav (mono 16-bit at the upload's own rate, at most
MAX_REFERENCE_RATE_HZ: a cloning server hears everything the clip has) and NAME.txt (its
transcript); `refaudio`/`tts.ref_file` NAME then means that clip, sent to each engine at the rate
its server reads (`ReferenceVoice.wav_at`). A silent or near-silent clip is no voice
(`level_problem`: also a stereo clip whose channels cancel when mixed to mono). Names are a
plain file-name stem (fullmatch of VOICE_NAME): nothing is resolved outside the folder, and a
symlink placed in it is not followed.
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ..media.clock import AUDIO_SAMPLE_RATE_HZ
from ..media.wav_file import INT16_FULL_SCALE, wav_bytes

VOICES_DIR_NAME = "voices"
VOICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
MIN_REFERENCE_S = 1.0  # cloning servers want a few seconds; under one is not a voice
MAX_REFERENCE_S = 60.0
MAX_TRANSCRIPT_CHARS = 1000
MAX_REFERENCE_RATE_HZ = 48000  # clips above it are stored at it (no cloning model reads more)
# A voice must be louder than this where it is loudest: the LEVEL_PERCENTILE-th percentile of
# the clip's LEVEL_WINDOW_S windows' RMS, in dB relative to full scale (speech recorded quietly
# is around -30 dBFS; a silent room's noise -60 dBFS and below).
MIN_REFERENCE_LEVEL_DBFS = -45.0
LEVEL_WINDOW_S = 0.05
LEVEL_PERCENTILE = 90
# A downmix this much quieter than its loudest channel: the channels cancel (opposite phase).
CANCELLED_CHANNELS_DB = 20.0


def dbfs(rms: float) -> float:
    """An RMS level (full scale 1.0) in dB relative to full scale (-inf for silence)."""
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def level_problem(audio: np.ndarray, rate_hz: int, channel_rms: tuple[float, ...] = ()) -> str:
    """Why `audio` (float32 mono, full scale 1.0, after the downmix) cannot be a reference
    voice, or "" when it can: silent or near-silent where it is loudest (below
    MIN_REFERENCE_LEVEL_DBFS), saying so when its source channels (`channel_rms`, each
    channel's RMS before the downmix) were loud and cancelled each other."""
    window = max(int(LEVEL_WINDOW_S * rate_hz), 1)
    frames = audio[: audio.size // window * window].reshape(-1, window)
    if not len(frames):
        frames = audio.reshape(1, -1)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    level = dbfs(float(np.percentile(rms, LEVEL_PERCENTILE)))
    if level >= MIN_REFERENCE_LEVEL_DBFS:
        return ""
    said = "silent" if level == -math.inf else f"near-silent ({level:.0f} dBFS where it is " \
        "loudest)"
    problem = (f"is {said}: a reference voice needs speech louder than "
               f"{MIN_REFERENCE_LEVEL_DBFS:.0f} dBFS")
    loudest = max(channel_rms, default=0.0)
    mixed = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if len(channel_rms) > 1 and dbfs(loudest) - dbfs(mixed) > CANCELLED_CHANNELS_DB:
        problem += (f"; its {len(channel_rms)} channels ({dbfs(loudest):.0f} dBFS) cancel out "
                    "when mixed to mono (one is the other inverted): upload one channel")
    return problem


@dataclass(frozen=True)
class ReferenceVoice:
    name: str
    clip: Path  # NAME.wav, mono int16 at its own rate (at most MAX_REFERENCE_RATE_HZ)
    text: str  # its transcript

    @property
    def duration_s(self) -> float:
        with wave.open(str(self.clip), "rb") as wav:
            return wav.getnframes() / wav.getframerate()

    def wav_at(self, rate_hz: int | None) -> bytes:
        """The clip as WAV bytes at `rate_hz` (resampled when it differs; None: as stored).
        Blocking (a file read): call it in an executor. Raises OSError or wave.Error for a
        file that is gone or not a WAV."""
        data = self.clip.read_bytes()
        if rate_hz is None:
            return data
        with wave.open(io.BytesIO(data), "rb") as wav:
            stored_hz = wav.getframerate()
            if stored_hz == rate_hz:
                return data
            channels, width = wav.getnchannels(), wav.getsampwidth()
            frames = wav.readframes(wav.getnframes())
        if width != 2:
            raise wave.Error(f"{self.clip.name}: 16-bit PCM expected")
        pcm = np.frombuffer(frames, "<i2").reshape(-1, channels).mean(axis=1)
        divisor = math.gcd(rate_hz, stored_hz)
        audio = resample_poly(pcm / INT16_FULL_SCALE, rate_hz // divisor, stored_hz // divisor)
        return wav_bytes(audio, rate_hz)


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

    def add(self, name: str, audio: np.ndarray, text: str,
            rate_hz: int = AUDIO_SAMPLE_RATE_HZ) -> ReferenceVoice:
        """Store (or replace) NAME: `audio` float32 mono at `rate_hz` (stored at that rate).
        Both files are written under temporary names and renamed, so a reader never sees half
        a voice. Raises ValueError for a name that cannot be a voice."""
        if not valid_name(name):
            raise ValueError(f"not a voice name: {name!r}")
        self.dir.mkdir(parents=True, exist_ok=True)
        clip_tmp = _temp_file(self.dir, ".wav")
        text_tmp = _temp_file(self.dir, ".txt")
        try:
            clip_tmp.write_bytes(wav_bytes(audio, rate_hz))
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
