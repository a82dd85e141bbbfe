import time

import av
import numpy as np
import pytest

from orchestrator.media.recorder import EmptyRecording, Recorder


def test_mp4_has_h264_and_aac_of_the_recorded_length(tmp_path):
    recorder = Recorder(tmp_path / "r.mp4", 128, 96)
    t = np.arange(640) / 16000
    for tick in range(50, 100):  # 2 s, starting mid-stream
        image = np.full((96, 128, 3), tick, np.uint8)
        pcm = (np.sin(2 * np.pi * 440 * (t + tick * 0.04)) * 12000).astype(np.int16)
        recorder.add(tick, image, pcm)
    path = recorder.finish()
    with av.open(str(path)) as container:
        kinds = {s.type: s.codec_context.name for s in container.streams}
        assert kinds == {"video": "h264", "audio": "aac"}
        assert abs(container.duration / 1e6 - 2.0) < 0.2
        audio = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])
    assert np.sqrt(np.mean(audio[5000:-5000] ** 2)) > 0.2  # the tone is there


def test_recording_failure_is_reported_not_hung(tmp_path):
    target = tmp_path / "dir-not-file"
    target.mkdir()
    recorder = Recorder(target, 64, 64)
    recorder.add(0, np.zeros((64, 64, 3), np.uint8), np.zeros(640, np.int16))
    try:
        recorder.finish()
    except RuntimeError as exc:
        assert "recording failed" in str(exc)
    else:
        raise AssertionError("writing over a directory must fail")


def test_the_file_gets_its_name_only_when_finalised(tmp_path):
    target = tmp_path / "rec.mp4"
    recorder = Recorder(target, 64, 64)
    for tick in range(10):
        recorder.add(tick, np.zeros((64, 64, 3), np.uint8), np.zeros(640, np.int16))
    for _ in range(200):  # the encoder thread has opened its file
        if any(tmp_path.iterdir()):
            break
        time.sleep(0.05)
    assert any(tmp_path.iterdir()) and not target.exists(), \
        "an unfinished recording is not under its real name"
    assert recorder.finish() == target
    assert [p.name for p in tmp_path.iterdir()] == ["rec.mp4"], "no temporary file left"
    with av.open(str(target)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10


def test_a_recording_ended_before_its_first_frame_is_refused_and_leaves_no_file(tmp_path):
    """start_record then end_record within one tick (the fuzz found it as a 500): no MP4 can be
    written, the caller is told so, and no partial file stays behind."""
    recorder = Recorder(tmp_path / "empty.mp4", 64, 64)
    with pytest.raises(EmptyRecording):
        recorder.finish()
    assert list(tmp_path.iterdir()) == []
