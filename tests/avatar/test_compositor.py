import numpy as np

from orchestrator.avatar.compositor import lower_face_mask, paste_face


def test_mask_covers_the_lower_face_and_feathers():
    mask = lower_face_mask(128)[:, :, 0]
    assert mask[100, 64] > 0.99  # chin
    assert mask[20, 64] == 0.0  # forehead untouched
    assert 0.0 < mask[57, 64] < 1.0  # soft top edge


def test_paste_changes_only_the_masked_region():
    frame = np.full((200, 200, 3), 100, np.uint8)
    crop = np.full((64, 64, 3), 200, np.uint8)
    out = paste_face(frame, np.array([50, 50, 150, 150]), crop)
    assert out[140, 100, 0] > 190  # lower face replaced
    assert out[60, 100, 0] == 100  # upper face kept
    assert out[10, 10, 0] == 100  # outside the box
    assert frame[140, 100, 0] == 100  # the avatar's frame is never written


def test_box_past_the_frame_edge():
    frame = np.zeros((100, 100, 3), np.uint8)
    crop = np.full((32, 32, 3), 255, np.uint8)
    out = paste_face(frame, np.array([60, 60, 140, 140]), crop)
    assert out.shape == frame.shape and out[99, 80, 0] > 200
    assert np.array_equal(paste_face(frame, np.array([200, 200, 240, 240]), crop), frame)
