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


def test_paste_is_the_masked_sum_within_one_level():
    """paste_face blends with OpenCV (speed: it runs on the event loop every talking tick);
    the result is mask * crop + (1 - mask) * frame, rounded, also past the frame's edge."""
    import cv2

    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    crop = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    for box in ([40, 20, 110, 100], [120, 70, 190, 150], [-20, -10, 50, 60]):
        x0, y0, x1, y1 = box
        out = paste_face(frame, np.array(box), crop)
        resized = cv2.resize(crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        mask = lower_face_mask(y1 - y0, x1 - x0)
        padded = np.zeros((y1 - y0, x1 - x0, 3), np.float32)  # the frame under the box
        fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x1, 160), min(y1, 120)
        padded[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] = frame[fy0:fy1, fx0:fx1]
        expected = mask * resized + (1 - mask) * padded
        visible = expected[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
        diff = np.abs(out[fy0:fy1, fx0:fx1].astype(np.float32) - visible)
        assert diff.max() <= 1.0, (box, diff.max())
        outside = np.ones(frame.shape[:2], bool)
        outside[fy0:fy1, fx0:fx1] = False
        assert np.array_equal(out[outside], frame[outside])
