"""Wav2Lip-compatible mel spectrogram and the per-video-frame mel windows fed to lip-sync models.

The hparams are Wav2Lip's (docs/INTERFACES.md): a model trained on Wav2Lip's features must see the
same numbers here, so every constant below mirrors its `hparams.py` / `audio.py`. Silence
(`silent_frames`: frames a lip-sync model whose closed mouth is its input need not see) is ours.
`WAV2LIP_MEL` is these features as a lip-sync model declares them (lipsync/base.AudioFeatures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import librosa
import numpy as np

from ..media.clock import AUDIO_SAMPLE_RATE_HZ, VIDEO_FPS

SAMPLE_RATE_HZ = AUDIO_SAMPLE_RATE_HZ  # Wav2Lip's mel is defined on 16 kHz audio: the pipeline's
MEL_FRAMES_PER_SECOND = 80  # SAMPLE_RATE_HZ / HOP_SAMPLES
MEL_WINDOW_FRAMES = 16  # 200 ms of audio per video frame
MEL_BINS = 80
SILENCE_MEL_VALUE = -4.0  # the normalised value of digital silence (and of clipped quiet audio)
# A frame is silent when no sample its mel window is computed from (window_samples) reaches this
# peak (full scale = 1.0). 16-bit audio with +-1 LSB of dither (-90.3 dBFS) is silent; any room
# tone is not. The default lip-sync model keeps the mouth shut for every such window, by a bound
# (export/default_lipsync.py, tests/lipsync/test_default_lipsync.py) that holds up to -85.1 dBFS.
SILENCE_PEAK_DBFS = -88.0
SILENCE_PEAK = 10.0 ** (SILENCE_PEAK_DBFS / 20.0)

PREEMPHASIS = 0.97
FFT_SAMPLES = 800  # 50 ms
HOP_SAMPLES = 200  # 12.5 ms
WINDOW_SAMPLES = 800
MEL_FMIN_HZ = 55.0
MEL_FMAX_HZ = 7600.0
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_MEL = 4.0  # symmetric normalisation: [MIN_LEVEL_DB, 0] dB -> [-4, 4]

_MIN_AMPLITUDE = 10.0 ** (MIN_LEVEL_DB / 20.0)


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    """The [80, 401] filterbank, built once: it costs more than the STFT of a short utterance."""
    basis = librosa.filters.mel(
        sr=SAMPLE_RATE_HZ, n_fft=FFT_SAMPLES, n_mels=MEL_BINS, fmin=MEL_FMIN_HZ, fmax=MEL_FMAX_HZ
    )
    return basis.astype(np.float32)


def melspectrogram(audio: np.ndarray) -> np.ndarray:
    """Mono float audio at 16 kHz -> normalised mel spectrogram, float32 [80, T].

    T = 1 + len(audio) // HOP_SAMPLES (the STFT is centred, as librosa.stft defaults).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono 1-D samples, got shape {audio.shape}")
    # Pre-emphasis y[n] = x[n] - 0.97 x[n-1] (Wav2Lip's lfilter([1, -k], [1], x)).
    emphasised = np.empty_like(audio)
    emphasised[:1] = audio[:1]
    emphasised[1:] = audio[1:] - PREEMPHASIS * audio[:-1]
    spectrum = np.abs(
        librosa.stft(
            emphasised, n_fft=FFT_SAMPLES, hop_length=HOP_SAMPLES, win_length=WINDOW_SAMPLES
        )
    )
    mel_amplitude = _mel_basis() @ spectrum
    level_db = 20.0 * np.log10(np.maximum(_MIN_AMPLITUDE, mel_amplitude)) - REF_LEVEL_DB
    normalised = (2.0 * MAX_ABS_MEL) * ((level_db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_MEL
    return np.clip(normalised, -MAX_ABS_MEL, MAX_ABS_MEL).astype(np.float32)


def mel_windows(mel: np.ndarray, frame_count: int) -> np.ndarray:
    """One [1, 80, 16] mel window per video frame -> float32 [frame_count, 1, 80, 16].

    Window i starts at mel frame int(80 * i / 25) (Wav2Lip's inference convention); columns past
    the end of the spectrogram read as silence.
    """
    if mel.ndim != 2 or mel.shape[0] != MEL_BINS:
        raise ValueError(f"mel must be [{MEL_BINS}, T], got shape {mel.shape}")
    if frame_count < 0:
        raise ValueError(f"frame_count must be >= 0, got {frame_count}")
    # Integer form of int(80 * i / 25): exact, no float rounding at multiples of 5.
    starts = np.arange(frame_count) * MEL_FRAMES_PER_SECOND // VIDEO_FPS
    needed = int(starts[-1]) + MEL_WINDOW_FRAMES if frame_count else 0
    padded = np.full((MEL_BINS, max(needed, mel.shape[1])), SILENCE_MEL_VALUE, np.float32)
    padded[:, : mel.shape[1]] = mel
    columns = starts[:, None] + np.arange(MEL_WINDOW_FRAMES)[None, :]  # [frames, 16]
    windows = padded[:, columns]  # [80, frames, 16]
    return np.ascontiguousarray(windows.transpose(1, 0, 2)[:, None])


def window_samples(frame: int) -> tuple[int, int]:
    """[start, stop) of the 16 kHz samples that video frame `frame`'s mel window is computed from.

    The window is mel columns s..s+15 (s = 80 frame / 25); column j is the STFT of the
    FFT_SAMPLES centred on sample j * HOP_SAMPLES (librosa's centred STFT: zeros outside the
    audio), and pre-emphasis reads one sample before. The range may reach outside the audio.
    """
    first_column = frame * MEL_FRAMES_PER_SECOND // VIDEO_FPS
    last_column = first_column + MEL_WINDOW_FRAMES - 1
    return (first_column * HOP_SAMPLES - FFT_SAMPLES // 2 - 1,
            last_column * HOP_SAMPLES + FFT_SAMPLES // 2)


def silent_frames(audio: np.ndarray, frame_count: int, first: int = 0,
                  window: Callable[[int], tuple[int, int]] | None = None) -> np.ndarray:
    """bool [frame_count - first]: whether the samples each of frames first..frame_count-1 is
    made from (`window(frame)`: [start, stop) of 16 kHz samples, default this module's
    window_samples; another family passes its own) all stay below SILENCE_PEAK in magnitude.

    `audio`: the mono 16 kHz samples `mel_windows(melspectrogram(audio), frame_count)` reads;
    samples outside it count as zeros, as they do there.
    """
    window = window or window_samples
    magnitude = np.abs(np.asarray(audio, np.float32))
    silent = np.zeros(max(frame_count - first, 0), bool)
    for k, frame in enumerate(range(first, frame_count)):
        start, stop = window(frame)
        span = magnitude[max(start, 0) : max(stop, 0)]
        silent[k] = span.size == 0 or float(span.max()) < SILENCE_PEAK
    return silent


def covered_frames(samples: int) -> int:
    """Frames whose mel window lies inside the first `samples` samples (16 kHz): frame i reads
    mel columns s..s+15 (s = 80 i / 25), column j the samples j*hop +- fft/2."""
    frames = 0
    while True:
        last_column = frames * MEL_FRAMES_PER_SECOND // VIDEO_FPS + MEL_WINDOW_FRAMES - 1
        if last_column * HOP_SAMPLES + FFT_SAMPLES // 2 > samples:
            return frames
        frames += 1


@dataclass(frozen=True)
class MelWindows:
    """Wav2Lip's mel as a model's audio features: one float32 [1, 80, 16] window per video
    frame (lipsync/base.AudioFeatures)."""

    window_shape: tuple[int, ...] = (1, MEL_BINS, MEL_WINDOW_FRAMES)

    def covered_frames(self, samples: int) -> int:
        return covered_frames(samples)

    def windows(self, audio: np.ndarray, frame_count: int, first: int = 0) -> np.ndarray:
        return mel_windows(melspectrogram(audio), frame_count)[first:]

    def silent(self, audio: np.ndarray, frame_count: int, first: int = 0) -> np.ndarray:
        return silent_frames(audio, frame_count, first)


WAV2LIP_MEL = MelWindows()
