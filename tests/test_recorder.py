import av
import numpy as np

from orchestrator.recorder import Recorder


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
