"""Wav2Lip's input/output conventions (orchestrator/lipsync/wav2lip.py)."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.lipsync.wav2lip import blend, prepare, soft_mask, to_rgb_crops

SIZE = 96


def _crops(seed: int, batch: int = 2, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def test_prepare_masks_the_target_and_keeps_the_reference():
    target, reference = _crops(0), _crops(1)
    face = prepare(target, reference)
    assert face.dtype == np.float32 and face.shape == (2, 6, SIZE, SIZE)
    half = SIZE // 2
    # channel 0 is blue: BGR, as Wav2Lip was trained on OpenCV frames
    np.testing.assert_allclose(face[:, 0, :half], target[:, :half, :, 2] / 255.0, atol=1e-7)
    np.testing.assert_allclose(face[:, 2, :half], target[:, :half, :, 0] / 255.0, atol=1e-7)
    assert np.all(face[:, 0:3, half:] == 0.0)
    np.testing.assert_allclose(face[:, 3:6], reference[..., ::-1].transpose(0, 3, 1, 2) / 255.0,
                               atol=1e-7)
    assert face.min() >= 0.0 and face.max() <= 1.0


def test_prepare_checks_its_inputs():
    with pytest.raises(ValueError, match="crops_rgb must be uint8"):
        prepare(_crops(0).astype(np.float32), _crops(1))
    with pytest.raises(ValueError, match="reference_rgb must be uint8"):
        prepare(_crops(0), _crops(1)[:, :, :-1])
    with pytest.raises(ValueError, match="differ"):
        prepare(_crops(0), _crops(1, batch=3))


def test_output_round_trip():
    crops = _crops(2)
    bgr = crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    assert np.array_equal(to_rgb_crops(bgr), crops)
    clipped = to_rgb_crops(np.full((1, 3, 4, 4), 1.5, np.float32) * np.array([1, -1, 0.5],
                                                                             np.float32)[:, None, None])
    assert clipped.dtype == np.uint8 and clipped.shape == (1, 4, 4, 3)
    assert list(clipped[0, 0, 0]) == [191, 0, 255]  # R = 0.75, G clipped at 0, B clipped at 1
    with pytest.raises(ValueError, match="face_out"):
        to_rgb_crops(np.zeros((1, 4, 4, 3), np.float32))


@pytest.mark.parametrize("size", [96, 256, 37])
def test_soft_mask_covers_the_mouth_and_fades_out(size):
    mask = soft_mask(size)
    assert mask.dtype == np.float32 and mask.shape == (size, size)
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    # zero on the whole border: the pasted crop meets the frame without a seam
    assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
    assert not mask[: int(0.4 * size)].any()  # eyes and nose untouched
    mouth = mask[int(0.6 * size) : int(0.85 * size), int(0.3 * size) : int(0.7 * size)]
    assert np.all(mouth == 1.0)
    assert np.allclose(mask, mask[:, ::-1])  # symmetric
    steepest = 20.0 / size  # feathered over several pixels: no hard edge
    assert np.max(np.abs(np.diff(mask, axis=0))) < steepest
    assert np.max(np.abs(np.diff(mask, axis=1))) < steepest
    with pytest.raises(ValueError):
        mask[0, 0] = 1.0  # cached and shared: read-only


def test_blend_keeps_the_border():
    original, generated = _crops(3, 1), _crops(4, 1)
    out = blend(original, generated)
    assert out.dtype == np.uint8
    assert np.array_equal(out[:, 0], original[:, 0]) and np.array_equal(out[:, :, -1],
                                                                          original[:, :, -1])
    centre = (slice(None), slice(int(0.7 * SIZE), int(0.8 * SIZE)), slice(40, 56))
    assert np.array_equal(out[centre], generated[centre])
