"""Ultralight's conventions in numpy (orchestrator/lipsync/ultralight.py): each frame's audio
window against LiveTalking's HuBERT frame indexing, streaming, silence, the crop and its mask,
and the family's signature. No model: see test_ultralight_export.py for Triton."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from export import ultralight_configs as configs
from orchestrator.avatar.compositor import paste_face
from orchestrator.lipsync.models import family_of
from orchestrator.lipsync.ultralight import (
    AUDIO_WINDOW_SAMPLES,
    CROP_PX,
    ULTRALIGHT_AUDIO,
    UltralightSync,
    paste_centre,
    prepare,
)
from orchestrator.lipsync.wav2lip import Wav2LipSync
from orchestrator.media.clock import AUDIO_SAMPLE_RATE_HZ, AUDIO_SAMPLES_PER_TICK
from orchestrator.speech.features import SentenceFeatures

HUBERT_HOP = 320


def test_the_orchestrator_and_the_exporter_agree():
    assert AUDIO_WINDOW_SAMPLES == configs.AUDIO_WINDOW_SAMPLES == 10320
    assert CROP_PX == configs.CROP_PX == 168


def test_window_holds_livetalkings_hubert_frames_with_context():
    """LiveTalking gives video frame f the HuBERT frames 2f-8 .. 2f+7 of its stream (frame j
    reads samples 320 j .. 320 j + 400); the window must hold exactly their audio plus 8 frames
    of context each side, zeros before the start."""
    audio = np.arange(1, 40_001, dtype=np.float32)  # every sample tells its own index + 1
    frames = 20
    windows = ULTRALIGHT_AUDIO.windows(audio, frames)
    assert windows.shape == (frames, AUDIO_WINDOW_SAMPLES) and windows.dtype == np.float32
    for f in (0, 3, 12, 19):
        first_feature_frame = 2 * f - 8  # LiveTalking's centre 2f, window [4, 4] video frames
        start = (first_feature_frame - 8) * HUBERT_HOP  # 8 context frames before it
        stop = (first_feature_frame + 16 + 8 - 1) * HUBERT_HOP + 400
        expected = np.array([audio[i] if 0 <= i < audio.size else 0.0
                             for i in range(start, stop)], np.float32)
        np.testing.assert_array_equal(windows[f], expected)
    np.testing.assert_array_equal(ULTRALIGHT_AUDIO.windows(audio, frames, 7), windows[7:])


def test_covered_frames_never_read_past_the_audio():
    for samples in (0, 5199, 5200, 5839, 5840, 16000, 33333):
        covered = ULTRALIGHT_AUDIO.covered_frames(samples)
        audio = np.ones(samples, np.float32)
        if covered:  # the last covered frame's window ends inside the audio...
            assert ULTRALIGHT_AUDIO.windows(audio, covered)[-1, -1] == 1.0
        longer = np.ones(samples + AUDIO_WINDOW_SAMPLES, np.float32)
        longer[samples:] = 0.0  # ... and the next one's does not
        assert ULTRALIGHT_AUDIO.windows(longer, covered + 1)[-1, -1] == 0.0


def test_streamed_windows_equal_the_whole_sentence():
    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal(AUDIO_SAMPLE_RATE_HZ * 2)).astype(np.float32)
    whole = SentenceFeatures(AUDIO_SAMPLE_RATE_HZ, ULTRALIGHT_AUDIO)
    whole.add(audio)
    _, expected, _ = whole.take(final=True)
    streamed = SentenceFeatures(AUDIO_SAMPLE_RATE_HZ, ULTRALIGHT_AUDIO)
    got = []
    for chunk in np.array_split(audio, 9):
        streamed.add(chunk)
        got.append(streamed.take(final=False)[1])
    got.append(streamed.take(final=True)[1])
    joined = np.concatenate(got)
    assert joined.shape == expected.shape == (len(audio) // AUDIO_SAMPLES_PER_TICK,
                                              AUDIO_WINDOW_SAMPLES)
    np.testing.assert_array_equal(joined, expected)


def test_silent_frames_are_those_whose_whole_window_is_quiet():
    audio = np.zeros(AUDIO_SAMPLE_RATE_HZ, np.float32)
    audio[8000] = 0.5  # one click at 0.5 s: frames whose window reaches it are not silent
    silent = ULTRALIGHT_AUDIO.silent(audio, 25)
    windows = ULTRALIGHT_AUDIO.windows(audio, 25)
    np.testing.assert_array_equal(silent, np.abs(windows).max(axis=1) < 1e-4)
    assert silent.any() and not silent.all()
    assert ULTRALIGHT_AUDIO.silent(audio, 25, 10).tolist() == silent[10:].tolist()


def test_prepare_is_livetalkings_reference_then_masked_crop():
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (2, CROP_PX, CROP_PX, 3), dtype=np.uint8)
    face = prepare(crops)
    assert face.shape == (2, 6, 160, 160) and face.dtype == np.float32
    for k in range(2):
        bgr = cv2.cvtColor(crops[k], cv2.COLOR_RGB2BGR)
        real = bgr[4:164, 4:164].copy()
        masked = cv2.rectangle(real.copy(), (5, 5, 150, 145), (0, 0, 0), -1)  # LiveTalking's
        theirs = np.concatenate([real.transpose(2, 0, 1), masked.transpose(2, 0, 1)]) / 255.0
        np.testing.assert_allclose(face[k], theirs, atol=1e-6)
    with pytest.raises(ValueError, match="168"):
        prepare(crops[:, :160, :160])


def test_paste_centre_keeps_the_border():
    crops = np.full((1, CROP_PX, CROP_PX, 3), 7, np.uint8)
    out = np.zeros((1, 3, 160, 160), np.float32)
    out[:, 0] = 1.0  # blue in BGR
    pasted = paste_centre(crops, out)
    assert (pasted[0, :4] == 7).all() and (pasted[0, :, -4:] == 7).all()
    assert pasted[0, 4:164, 4:164].tolist() == [[[0, 0, 255]] * 160] * 160  # RGB blue
    with pytest.raises(ValueError, match="face_out"):
        paste_centre(crops, out[:, :, :100])


def test_the_mouth_is_pasted_from_below_the_nose():
    """The crop starts at the nose bridge: the upper lip (~0.35 of the crop) is pasted too,
    which the other models' lower-face blend (from 0.45) would leave out."""
    frame = np.zeros((200, 200, 3), np.uint8)
    crop = np.full((CROP_PX, CROP_PX, 3), 255, np.uint8)
    box = np.array([0, 0, CROP_PX, CROP_PX])
    upper_lip = (int(0.35 * CROP_PX), CROP_PX // 2)
    assert paste_face(frame, box, crop)[upper_lip][0] < 20
    assert paste_face(frame, box, crop, UltralightSync.paste_top_fraction)[upper_lip][0] > 235
    assert paste_face(frame, box, crop, UltralightSync.paste_top_fraction)[5, CROP_PX // 2][0] \
        < 20, "the eyes stay the avatar's"


def test_family_is_found_from_the_ensembles_inputs():
    inputs = {"audio": [-1, AUDIO_WINDOW_SAMPLES], "face": [-1, 6, 160, 160]}
    assert family_of("ultralight", inputs) is UltralightSync
    assert UltralightSync.crop_size_of(inputs) == CROP_PX
    assert family_of("wav2lip96", {"mel": [-1, 1, 80, 16], "face": [-1, 6, 96, 96]}) \
        is Wav2LipSync
    assert not UltralightSync.accepts({"audio": [-1, 16000], "face": [-1, 6, 160, 160]})
    assert not UltralightSync.accepts({"audio": [-1, AUDIO_WINDOW_SAMPLES],
                                       "face": [-1, 6, 96, 96]})
