import cv2
import librosa
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scipy.signal

from export.__main__ import main as export_main
from export.default_lipsync import (
    CROP_PX,
    SILENT_LEVEL_MEL,
    astronaut_example,
    build_model,
    loudness_mel_window,
)
from orchestrator.lipsync.mel import (
    FFT_SAMPLES,
    MEL_BINS,
    MEL_FMAX_HZ,
    MEL_FMIN_HZ,
    PREEMPHASIS,
    SAMPLE_RATE_HZ,
    SILENCE_PEAK,
    mel_windows,
    melspectrogram,
    silent_frames,
)

STEADY_SECONDS = 0.5
F0_HZ = 120.0
UNCHANGED_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    """The model with its `open` / `shape` controls exposed next to `face_out`."""
    model = build_model(expose_controls=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def astronaut() -> tuple[np.ndarray, np.ndarray]:
    return astronaut_example()


def steady_window(audio: np.ndarray) -> np.ndarray:
    """The mel window [1,80,16] of a video frame in the middle of a steady sound."""
    frames = audio.size // (SAMPLE_RATE_HZ // 25)
    return mel_windows(melspectrogram(audio), frames)[frames // 2]


def _seconds() -> np.ndarray:
    return np.arange(int(STEADY_SECONDS * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ


def _at_rms(x: np.ndarray, rms: float) -> np.ndarray:
    return (x / np.sqrt(np.mean(x**2)) * rms).astype(np.float32)


def vowel(rms: float) -> np.ndarray:
    """Voiced, low-frequency heavy ('oo'-like): flat harmonics up to 1 kHz, steep roll-off above."""
    t = _seconds()
    harmonics = np.arange(1, int(7600 / F0_HZ))
    gains = np.minimum(1.0, (1000.0 / (harmonics * F0_HZ)) ** 3)
    x = sum(g * np.sin(2 * np.pi * k * F0_HZ * t + k) for k, g in zip(harmonics, gains))
    return _at_rms(x, rms)


def hiss(rms: float) -> np.ndarray:
    """Unvoiced, high-frequency ('s'-like): white noise above 3 kHz."""
    noise = np.random.default_rng(7).standard_normal(_seconds().size)
    spectrum = np.fft.rfft(noise)
    spectrum[np.fft.rfftfreq(noise.size, 1 / SAMPLE_RATE_HZ) < 3000] = 0
    return _at_rms(np.fft.irfft(spectrum, noise.size), rms)


def run(session, windows, face, mouth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    windows = np.asarray(windows, np.float32)
    n = len(windows)
    feeds = {
        "mel": windows,
        "face": np.broadcast_to(face, (n, 3, CROP_PX, CROP_PX)).astype(np.float32),
        "mouth": np.broadcast_to(mouth, (n, 4)).astype(np.float32),
    }
    face_out, open_amount, shape = session.run(["face_out", "open", "shape"], feeds)
    return face_out, open_amount, shape


def mouth_px(mouth: np.ndarray) -> tuple[float, float, float]:
    cx, cy, width, _ = (mouth * CROP_PX).tolist()
    return cx, cy, width


def mouth_region(mouth: np.ndarray) -> tuple[slice, slice]:
    cx, cy, width = mouth_px(mouth)
    rows = slice(int(cy - 0.3 * width), int(cy + 1.0 * width))
    cols = slice(int(cx - 0.75 * width), int(cx + 0.75 * width) + 1)
    return rows, cols


def ramp_face() -> np.ndarray:
    """A probe 'face' whose channels hold each pixel's own x and y: the output shows the warp."""
    centres = (np.arange(CROP_PX, dtype=np.float32) + 0.5) / CROP_PX
    face = np.empty((3, CROP_PX, CROP_PX), np.float32)
    face[0] = centres[None, :]
    face[1] = centres[:, None]
    face[2] = 0.5
    return face


def test_graph_is_valid_with_the_contracted_signature():
    model = build_model()
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == 17

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert {i.name: dims(i) for i in model.graph.input} == {
        "mel": ["batch", 1, 80, 16],
        "face": ["batch", 3, 128, 128],
        "mouth": ["batch", 4],
    }
    assert {o.name: dims(o) for o in model.graph.output} == {"face_out": ["batch", 3, 128, 128]}
    assert "GridSample" in {n.op_type for n in model.graph.node}
    assert not any(i.dims and np.prod(i.dims) > 1024 for i in model.graph.initializer)


@pytest.mark.parametrize("batch", [1, 5])
def test_runs_batches(session, astronaut, batch):
    face, mouth = astronaut
    levels = np.linspace(0.0, 0.2, batch)
    windows = [steady_window(vowel(rms)) for rms in levels]
    face_out, open_amount, _ = run(session, windows, face, mouth)
    assert face_out.shape == (batch, 3, CROP_PX, CROP_PX) and face_out.dtype == np.float32
    assert np.all(np.isfinite(face_out))
    assert face_out.min() >= -1e-3 and face_out.max() <= 1.0 + 1e-3
    # Items do not leak into each other: each equals its own batch-of-one result.
    for k in range(batch):
        single, _, _ = run(session, windows[k : k + 1], face, mouth)
        np.testing.assert_allclose(face_out[k], single[0], atol=1e-5)


def test_silence_leaves_the_crop_unchanged(session, astronaut):
    face, mouth = astronaut
    windows = [
        steady_window(np.zeros(SAMPLE_RATE_HZ // 2, np.float32)),
        steady_window(vowel(0.001)),  # far below speech: room tone
        np.full((1, 80, 16), -3.4, np.float32),  # just under the threshold
    ]
    face_out, open_amount, shape = run(session, windows, face, mouth)
    assert np.all(open_amount < 1e-3) and np.all(open_amount >= 0)
    assert np.all(np.abs(shape) < 1e-3)
    assert np.abs(face_out - face).max() < 1e-3


def test_mouth_changes_grow_with_loudness(session, astronaut):
    face, mouth = astronaut
    levels = [0.003, 0.01, 0.03, 0.1, 0.3]
    face_out, open_amount, _ = run(session, [steady_window(vowel(r)) for r in levels], face, mouth)
    rows, cols = mouth_region(mouth)
    change = np.abs(face_out - face)[:, :, rows, cols].mean(axis=(1, 2, 3))
    assert np.all(np.diff(open_amount) > 0)
    assert np.all(np.diff(change) > 0), change
    assert change[0] < 0.01 and change[-1] > 0.1, change
    assert open_amount[-1] > 0.9  # loud speech (-10 dBFS rms) nearly saturates


def test_far_from_the_mouth_is_unchanged(session, astronaut):
    face, mouth = astronaut
    loud = [steady_window(vowel(0.3)), steady_window(hiss(0.3))]
    face_out, _, _ = run(session, loud, face, mouth)
    diff = np.abs(face_out - face)
    eyes = slice(0, int(0.4 * CROP_PX))
    assert diff[:, :, eyes].max() < UNCHANGED_TOLERANCE
    # The outermost ring must match exactly what it is pasted next to.
    ring = np.ones((CROP_PX, CROP_PX), bool)
    ring[1:-1, 1:-1] = False
    assert diff[:, :, ring].max() < UNCHANGED_TOLERANCE
    assert diff.max() > 0.3  # ...while the mouth did change


def test_warp_fades_out_towards_the_crop_edges(session, astronaut):
    _, mouth = astronaut
    probe = ramp_face()
    loud = [steady_window(vowel(0.3)), steady_window(hiss(0.3))]
    face_out, _, _ = run(session, loud, probe, mouth)
    displacement_px = np.abs(face_out[:, :2] - probe[:2]).max(axis=(0, 1)) * CROP_PX
    border = np.ones((CROP_PX, CROP_PX), bool)
    border[3:-3, 3:-3] = False
    assert displacement_px.max() > 15  # the jaw moved...
    assert displacement_px[border].max() < 0.5  # ...but not where the crop meets the frame


def test_jaw_drops_below_the_lip_line_and_the_upper_lip_stays(session, astronaut):
    _, mouth = astronaut
    probe = ramp_face()
    cx, cy, width = mouth_px(mouth)
    face_out, open_amount, _ = run(session, [steady_window(vowel(0.3))], probe, mouth)
    source_y = face_out[0, 1] * CROP_PX
    pixel_y = probe[1] * CROP_PX
    above = slice(0, int(np.floor(cy - 0.5)))
    np.testing.assert_allclose(source_y[above], pixel_y[above], atol=1e-3)

    expected_drop = open_amount[0] * 0.5 * width
    column = int(cx)
    below = np.arange(int(cy + expected_drop + 3), int(cy + 0.65 * width))
    drop = pixel_y[below, column] - source_y[below, column]
    np.testing.assert_allclose(drop, expected_drop, rtol=0.1)
    # No fold-over anywhere below the opening: source rows keep increasing down each column.
    for x in range(int(cx - 0.5 * width), int(cx + 0.5 * width)):
        assert np.all(np.diff(source_y[below[0] :, x]) > 0), x


def test_open_mouth_shows_teeth_cavity_and_tongue(session, astronaut):
    face, mouth = astronaut
    cx, cy, width = mouth_px(mouth)
    face_out, open_amount, _ = run(session, [steady_window(vowel(0.3))], face, mouth)
    gap_px = open_amount[0] * 0.5 * width
    column = face_out[0, :, :, int(cx)]  # [3, H]
    first = int(np.ceil(cy))

    def rows(lo: float, hi: float) -> np.ndarray:
        return column[:, first + int(lo * gap_px) : first + int(hi * gap_px)]

    teeth, cavity, tongue = rows(0.05, 0.18), rows(0.35, 0.5), rows(0.8, 0.92)
    assert teeth.mean() > 0.6  # off-white
    assert cavity.mean() < 0.25  # dark
    assert (tongue[0] - tongue[1]).mean() > 0.15 and tongue[0].mean() > 0.45  # pink-red
    assert tongue.mean() > cavity.mean() + 0.15


def test_vowel_and_hiss_give_different_mouth_widths(session, astronaut):
    face, mouth = astronaut
    cx, cy, width = mouth_px(mouth)
    # Similar openness, opposite spectral shape.
    windows = [steady_window(vowel(0.02)), steady_window(hiss(0.3)), steady_window(vowel(0.0))]
    face_out, open_amount, shape = run(session, windows, ramp_face(), mouth)
    assert abs(open_amount[0] - open_amount[1]) < 0.15 and min(open_amount[:2]) > 0.2
    assert shape[0] < -0.3 and shape[1] > 0.3

    # Just above the lip line the x channel holds the source column: find where the corner went.
    row = int(np.floor(cy - 1.0))
    pixel_x = np.arange(CROP_PX) + 0.5
    corners = []
    for k in range(2):
        source_x = face_out[k, 0, row] * CROP_PX
        assert np.all(np.diff(source_x) > 0)  # no fold-over
        corners.append(np.interp(cx + 0.5 * width, source_x, pixel_x))
    round_corner, wide_corner = corners
    assert round_corner < cx + 0.5 * width - 0.05 * width
    assert wide_corner > cx + 0.5 * width + 0.05 * width
    # On the real face the two mouths differ too.
    real, _, _ = run(session, windows[:2], face, mouth)
    rows, cols = mouth_region(mouth)
    assert np.abs(real[0] - real[1])[:, rows, cols].mean() > 0.01


def test_cli_writes_the_model_and_a_preview(tmp_path):
    out = tmp_path / "lipsync_default" / "1" / "model.onnx"
    preview = tmp_path / "strip.png"
    export_main(["default-lipsync", "--out", str(out), "--preview", str(preview)])
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["mel", "face", "mouth"]
    assert [o.name for o in model.graph.output] == ["face_out"]
    image = cv2.imread(str(preview))
    assert image.shape == (3 * CROP_PX, 4 * 3 * CROP_PX, 3)


def test_cli_requires_a_subcommand():
    with pytest.raises(SystemExit):
        export_main([])


@pytest.mark.parametrize("mouth_y", [0.45, 0.6, 0.7, 0.8, 0.9])
def test_output_is_finite_wherever_the_mouth_sits(mouth_y):
    rng = np.random.default_rng(3)
    session = ort.InferenceSession(build_model().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    mel = rng.uniform(-4, 2, (4, 1, 80, 16)).astype(np.float32)
    face = rng.random((4, 3, 128, 128)).astype(np.float32)
    mouth = np.tile(np.array([[0.5, mouth_y, 0.4, 0.1]], np.float32), (4, 1))
    out = session.run(None, {"mel": mel, "face": face, "mouth": mouth})[0]
    assert np.isfinite(out).all()


# --- the mouth window, silence --------------------------------------------------------------------
def test_the_mouth_window_changes_nothing():
    """Computing the mouth window only gives what computing every pixel gives, wherever the
    mouths of a batch sit, however loud."""
    rng = np.random.default_rng(11)
    windowed = ort.InferenceSession(build_model().SerializeToString(),
                                    providers=["CPUExecutionProvider"])
    whole = ort.InferenceSession(build_model(whole_crop=True).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    face, mouth = astronaut_example()
    for trial in range(4):
        batch = 6
        mel = rng.uniform(-4, 2, (batch, 1, 80, 16)).astype(np.float32)
        faces = rng.random((batch, 3, CROP_PX, CROP_PX), dtype=np.float32)
        if trial == 0:  # the astronaut, loudness from silence to fully open
            mel = np.stack([loudness_mel_window(x) for x in np.linspace(0, 1, batch)])
            faces = np.repeat(face[None], batch, axis=0)
        mouths = np.tile(mouth, (batch, 1)) + rng.normal(0, 0.04 * trial, (batch, 4))
        mouths[:, 2] = np.abs(mouths[:, 2])
        feeds = {"mel": mel, "face": faces, "mouth": mouths.astype(np.float32)}
        a, b = windowed.run(None, feeds)[0], whole.run(None, feeds)[0]
        assert np.abs(a - b).max() < 1e-5, trial
        assert np.abs(a - faces).max() > 0.1, "the mouths moved"


def level_bound_mel(peak: float) -> float:
    """The highest bin-mean level (mel units) a mel column of audio whose samples stay within
    `peak` can have: the proof in export/default_lipsync.py's docstring, with the real filterbank
    and window."""
    basis = librosa.filters.mel(sr=SAMPLE_RATE_HZ, n_fft=FFT_SAMPLES, n_mels=MEL_BINS,
                                fmin=MEL_FMIN_HZ, fmax=MEL_FMAX_HZ).astype(np.float64)
    window = scipy.signal.get_window("hann", FFT_SAMPLES, fftbins=True)
    emphasised_peak = (1.0 + PREEMPHASIS) * peak
    spectrum_norm = np.sqrt(FFT_SAMPLES * np.sum(window**2)) * emphasised_peak  # Parseval
    mean_amplitude = np.linalg.norm(basis.sum(axis=0)) * spectrum_norm / MEL_BINS
    return -4.0 + 1.6 * np.log10(1.0 + mean_amplitude / 1e-4)  # concave majorant, Jensen


def test_silent_audio_keeps_the_mouth_shut_by_a_bound():
    assert level_bound_mel(SILENCE_PEAK) < SILENT_LEVEL_MEL - 0.1
    assert level_bound_mel(10 ** (-85.0 / 20)) > SILENT_LEVEL_MEL  # the bound is not loose
    # The bound is above what a loud-ish worst case reaches (it bounds, it does not guess low).
    noise = np.random.default_rng(2).choice([-1.0, 1.0], SAMPLE_RATE_HZ).astype(np.float32)
    level = melspectrogram(noise * 1e-3)[:, 8:-8].mean(axis=0).max()
    assert level <= level_bound_mel(1e-3)


def silent_signals(peak: float) -> dict[str, np.ndarray]:
    """Near-worst cases that stay within `peak`: full-band +-peak noise, tones, a step."""
    n = SAMPLE_RATE_HZ
    t = np.arange(n) / SAMPLE_RATE_HZ
    rng = np.random.default_rng(4)
    signals = {"zeros": np.zeros(n), "binary noise": rng.choice([-peak, peak], n),
               "step": np.where(t < 0.5, 0.0, peak)}
    for hz in (100.0, 1000.0, 4000.0, 7900.0):
        signals[f"tone {hz:.0f} Hz"] = peak * np.sin(2 * np.pi * hz * t)
    return {k: v.astype(np.float32) for k, v in signals.items()}


def test_silent_audio_returns_the_crop_bit_for_bit(session, astronaut):
    """What the orchestrator's skip path produces for a silent frame (the crop itself) is what
    the model returns for it."""
    face, mouth = astronaut
    for name, audio in silent_signals(0.999 * SILENCE_PEAK).items():
        frames = audio.size // (SAMPLE_RATE_HZ // 25)
        assert silent_frames(audio, frames).all(), name
        windows = mel_windows(melspectrogram(audio), frames)[::5]
        face_out, open_amount, shape = run(session, windows, face, mouth)
        assert np.all(open_amount == 0) and np.all(shape == 0), name
        np.testing.assert_array_equal(face_out, np.broadcast_to(face, face_out.shape), name)
    loud = silent_signals(1.2 * SILENCE_PEAK)["binary noise"]
    assert not silent_frames(loud, loud.size // (SAMPLE_RATE_HZ // 25)).any()
