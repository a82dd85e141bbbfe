
import librosa
import numpy as np
import pytest
from scipy import signal

from orchestrator.lipsync.mel import (
    MEL_FRAMES_PER_SECOND,
    MEL_WINDOW_FRAMES,
    SAMPLE_RATE_HZ,
    SILENCE_MEL_VALUE,
    SILENCE_PEAK,
    SILENCE_PEAK_DBFS,
    VIDEO_FPS,
    mel_windows,
    melspectrogram,
    silent_frames,
    window_samples,
)

DB_PER_MEL_UNIT = 12.5  # 100 dB span mapped onto 8 units


def tone(freq_hz: float, seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def wav2lip_reference(audio: np.ndarray) -> np.ndarray:
    """Wav2Lip's audio.melspectrogram, written out independently (lfilter pre-emphasis)."""
    emphasised = signal.lfilter([1, -0.97], [1], audio.astype(np.float64))
    spectrum = np.abs(librosa.stft(y=emphasised, n_fft=800, hop_length=200, win_length=800))
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    level_db = 20 * np.log10(np.maximum(1e-5, basis @ spectrum)) - 20
    return np.clip(8 * ((level_db + 100) / 100) - 4, -4, 4)


def test_constants():
    assert MEL_FRAMES_PER_SECOND == 80 and MEL_WINDOW_FRAMES == 16
    assert SAMPLE_RATE_HZ == 16000 and VIDEO_FPS == 25 and SILENCE_MEL_VALUE == -4.0


def test_shape_and_dtype():
    mel = melspectrogram(tone(440, 1.0, 0.1))
    assert mel.shape == (80, 1 + SAMPLE_RATE_HZ // 200)
    assert mel.dtype == np.float32
    assert mel.min() >= -4.0 and mel.max() <= 4.0


def test_matches_wav2lip_reference():
    rng = np.random.default_rng(1)
    audio = np.concatenate([0.05 * rng.standard_normal(8000), tone(300, 0.5, 0.3)]).astype(
        np.float32
    )
    np.testing.assert_allclose(melspectrogram(audio), wav2lip_reference(audio), atol=1e-4)


def test_silence_is_minus_four():
    mel = melspectrogram(np.zeros(16000, np.float32))
    assert np.all(mel == SILENCE_MEL_VALUE)


def test_one_kilohertz_tone_raises_the_right_bins():
    mel = melspectrogram(tone(1000, 1.0, 0.3))
    centres = librosa.mel_frequencies(n_mels=82, fmin=55, fmax=7600)[1:-1]
    k1000 = int(np.argmin(np.abs(centres - 1000)))
    profile = mel[:, 10:-10].mean(axis=1)  # steady part
    assert abs(int(np.argmax(profile)) - k1000) <= 1
    far = (centres < 500) | (centres > 2000)
    assert profile[k1000] > profile[far].max() + 2.0  # > 25 dB above bins far from 1 kHz


def test_doubling_amplitude_adds_six_decibels():
    quiet = melspectrogram(tone(1000, 0.5, 0.05))
    loud = melspectrogram(tone(1000, 0.5, 0.1))
    steady = (slice(None), slice(5, -5))
    unclipped = (quiet[steady] > -3.5) & (loud[steady] < 3.5)
    delta = (loud[steady] - quiet[steady])[unclipped]
    np.testing.assert_allclose(delta, 20 * np.log10(2) / DB_PER_MEL_UNIT, atol=1e-3)


def test_rejects_non_mono_audio():
    with pytest.raises(ValueError, match="audio"):
        melspectrogram(np.zeros((2, 1000), np.float32))


def test_windows_follow_wav2lip_indexing_and_pad_with_silence():
    columns = 40
    mel = np.tile(np.arange(columns, dtype=np.float32), (80, 1))  # each column holds its index
    frames = 14  # the last windows run past the end
    windows = mel_windows(mel, frames)
    assert windows.shape == (frames, 1, 80, MEL_WINDOW_FRAMES)
    assert windows.dtype == np.float32
    for i in range(frames):
        start = int(80 * i / 25)
        expected = np.arange(start, start + MEL_WINDOW_FRAMES, dtype=np.float32)
        expected[expected >= columns] = SILENCE_MEL_VALUE
        np.testing.assert_array_equal(windows[i, 0], np.tile(expected, (80, 1)))
    assert np.all(windows[-1, 0, :, -1] == SILENCE_MEL_VALUE)


def test_windows_of_an_utterance_cover_its_frames():
    audio = tone(200, 2.0, 0.2)
    frames = audio.size // (SAMPLE_RATE_HZ // VIDEO_FPS)
    windows = mel_windows(melspectrogram(audio), frames)
    assert windows.shape == (50, 1, 80, 16)
    assert mel_windows(melspectrogram(audio), 0).shape == (0, 1, 80, 16)


SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // VIDEO_FPS


def test_window_samples_are_what_the_window_reads():
    """A click just outside a frame's window_samples leaves its mel window silent; well inside,
    it does not."""
    frames = 20
    for frame in (0, 3, 7, 12):
        start, stop = window_samples(frame)
        assert stop - start == (MEL_WINDOW_FRAMES - 1) * 200 + 800 + 1
        for at, changes in ((start - 1, False), (stop, False), (start + 100, True),
                            (stop - 100, True)):
            if at < 0:
                continue
            audio = np.zeros(frames * SAMPLES_PER_FRAME, np.float32)
            audio[at] = 0.5
            window = mel_windows(melspectrogram(audio), frames)[frame]
            assert bool(np.any(window > SILENCE_MEL_VALUE)) == changes, (frame, at)


def test_silent_frames_by_the_peak_of_their_window():
    assert SILENCE_PEAK == pytest.approx(10 ** (SILENCE_PEAK_DBFS / 20))
    frames = 30
    audio = np.random.default_rng(3).choice([-1.0, 1.0], frames * SAMPLES_PER_FRAME)
    audio = (0.99 * SILENCE_PEAK * audio).astype(np.float32)  # +-1 LSB of 16-bit dither
    assert silent_frames(audio, frames).all()
    click = 14 * SAMPLES_PER_FRAME + 123
    audio[click] = 1.2 * SILENCE_PEAK
    silent = silent_frames(audio, frames)
    for frame in range(frames):
        start, stop = window_samples(frame)
        assert silent[frame] == (not start <= click < stop), frame
    assert 0 < silent.sum() < frames
    # Frames from `first` on; past the end of the audio is silence.
    np.testing.assert_array_equal(silent_frames(audio, frames, first=10), silent[10:])
    assert silent_frames(audio[:SAMPLES_PER_FRAME], 3).all()
    assert silent_frames(audio, 0).shape == (0,)
