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


def test_skipped_ticks_are_filled_with_the_last_frame_and_silence(tmp_path):
    """Issue 22: ticks the player skipped (a busy machine) were holes in the MP4's timestamps,
    and its audio ran ahead of the video after them when played back to back."""
    recorder = Recorder(tmp_path / "gaps.mp4", 128, 96)
    t = np.arange(640) / 16000
    ticks = [*range(0, 25), *range(40, 65), *range(66, 90)]  # 15 skipped, then 1
    for tick in ticks:
        image = np.full((96, 128, 3), 3 * (tick % 80), np.uint8)
        pcm = (np.sin(2 * np.pi * 440 * (t + tick * 0.04)) * 12000).astype(np.int16)
        recorder.add(tick, image, pcm)
    path = recorder.finish()
    with av.open(str(path)) as container:
        frames = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")[0, 0, 0])
                  for f in container.decode(video=0)]
        container.seek(0)
        audio = [f.to_ndarray().ravel() for f in container.decode(audio=0)]
    assert np.allclose(np.diff([pts for pts, _ in frames]), 0.04, atol=0.002)
    assert len(frames) == 90  # as long as the ticks 0-89 lasted
    # the skipped ticks show the frame before them; their audio is silence
    assert abs(int(frames[30][1]) - 3 * 24) <= 2 and abs(int(frames[45][1]) - 3 * 45) <= 2
    samples = np.concatenate(audio)
    assert abs(samples.size / 48000 - 90 * 0.04) <= 0.04
    def rms(start_s: float, end_s: float) -> float:
        return float(np.sqrt(np.mean(samples[int(start_s * 48000):int(end_s * 48000)] ** 2)))

    assert rms(1.1, 1.5) < 0.01 < 0.2 < rms(0.1, 0.9)  # ticks 25-39 filled with silence
    assert rms(1.7, 2.5) > 0.2  # and the tone after them in its place
    assert recorder.filled_ticks == 16
